"""The LASER pair dataset: paper views (speed then pitch, random order), seeded, too-short items skipped with a
logged reason, padded collation."""
import logging
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from fairseq_plugins.data.laser_pairs import LaserPairDataset, collate_padded
from fairseq_plugins.tasks.laser_finetune import LaserFinetuneConfig, LaserFinetuneTask
from manifests.manifest_io import write_manifest

FACTORS = [0.9, 1.0, 1.1]


def _dataset(manifest_dir, **kw):
    args = dict(speed_factors=FACTORS, pitch_semitones=[-2.0, 2.0], min_sample_size=8000, max_sample_size=64000)
    args.update(kw)
    return LaserPairDataset(os.path.join(manifest_dir, "train.tsv"), 16000, **args)


def test_views_follow_the_paper_recipe(mini_corpus):
    ds = _dataset(os.path.join(mini_corpus, "manifest"))
    seen_swaps, seen_factors = set(), set()
    for i in range(len(ds)):
        item = ds[i]
        a, b = item["views"]
        original, perturbed = (b, a) if item["swapped"] else (a, b)
        n = min(int(ds.sizes[i]), 64000)
        assert original.numel() == n
        ratio = n / perturbed.numel()
        factor = min(FACTORS, key=lambda f: abs(f - ratio))
        assert abs(ratio - factor) < 2e-3, (i, ratio)
        seen_factors.add(factor)
        seen_swaps.add(item["swapped"])
        if factor == 1.0:  # pitch shift alone: same length, different samples
            assert not torch.allclose(original, perturbed, atol=1e-3)
    assert seen_swaps == {True, False} and seen_factors == set(FACTORS)


def test_views_are_seeded_by_seed_epoch_index(mini_corpus):
    man = os.path.join(mini_corpus, "manifest")
    a, b = _dataset(man), _dataset(man)
    for i in range(3):
        x, y = a[i], b[i]
        assert x["swapped"] == y["swapped"] and all(torch.equal(u, v) for u, v in zip(x["views"], y["views"]))
    b.set_epoch(2)
    assert any(not torch.equal(a[i]["views"][0], b[i]["views"][0]) or a[i]["swapped"] != b[i]["swapped"]
               for i in range(len(a)))


def test_too_short_utterances_are_skipped_with_a_reason(tmp_path, caplog):
    rows = []
    for i, n in enumerate([4000, 8500, 20000]):
        sf.write(str(tmp_path / f"u{i}.wav"), np.random.default_rng(i).standard_normal(n).astype(np.float32) * 0.1,
                 16000)
        rows.append((f"u{i}.wav", n))
    write_manifest(str(tmp_path / "train.tsv"), str(tmp_path), rows)
    with caplog.at_level(logging.INFO):
        ds = _dataset(str(tmp_path))
    assert len(ds) == 1  # 8500 / 1.1 < 8000 and 4000 are too short
    assert "skipped 2 utterances shorter than 8800 samples (min_sample_size 8000 after a speed-up of 1.1)" \
        in caplog.text


def test_no_usable_utterance_is_an_error(tmp_path):
    sf.write(str(tmp_path / "a.wav"), np.zeros(1000, dtype=np.float32), 16000)
    write_manifest(str(tmp_path / "train.tsv"), str(tmp_path), [("a.wav", 1000)])
    with pytest.raises(ValueError, match="no utterance is long enough"):
        _dataset(str(tmp_path))


def test_collation_pads_each_view_separately():
    src, pad = collate_padded([torch.ones(3), torch.ones(5)])
    assert src.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert pad.tolist() == [[False, False, False, True, True], [False] * 5]


def test_task_refuses_a_min_size_below_the_receptive_field():
    with pytest.raises(ValueError, match=r"task.min_sample_size=100: must be at least the encoder's receptive field"):
        LaserFinetuneTask.setup_task(LaserFinetuneConfig(data="/x", min_sample_size=100))
