"""evidence.slicer_clusters: NMI of a cluster partition with speaker and word labels."""
import numpy as np

from evidence.slicer_clusters import analyse


def test_a_head_that_groups_by_speaker_scores_speaker_not_word():
    speakers = [f"s{i // 8}" for i in range(64)]  # 8 speakers x 8 words
    words = [f"w{i % 8}" for i in range(64)]
    probs = np.full((64, 8), 0.01)
    probs[np.arange(64), np.arange(64) // 8] = 1.0  # the head's argmax is the speaker
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, 16)) * 10
    pooled = centres[np.arange(64) % 8] + rng.normal(size=(64, 16))  # the embedding clusters by word
    r = analyse(pooled, probs, speakers, words)
    assert r["clusters_used"] == 8 and r["K"] == 8
    assert r["head_speaker"] > 99 and r["head_word"] < 1
    assert r["kmeans_word"] > 90 and r["kmeans_speaker"] < 20
