"""What do a SLICER model's clusters and utterance embeddings group by: speaker or word?

    python -m evidence.slicer_clusters --checkpoints slicer=RUN/ckpt/checkpoint_last.pt no_cluster=... \
        --keyword-dir OUT/data/keywords_repeats4_seed1 [--random-init] [--out table.md]

On the keyword probe set (the same words said by several voices) it reports, per checkpoint:

- ``head -> speaker`` / ``head -> word``: normalised mutual information (NMI, %) between the student's cluster
  head (argmax of its K-way softmax) and the speaker / the word of each utterance, and how many clusters are used;
- ``k-means -> speaker`` / ``k-means -> word``: the NMI of a K-means partition (K = the head's K, 5 seeds averaged)
  of the pooled utterance embeddings (the ``pooled`` 2048-d output the probes read) with speaker / word.

The question it answers (issue 11): removing the cluster loss helped the keyword probe. If the cluster head groups
the utterances by voice (head -> speaker >> head -> word), the cluster loss pulls the shared embedding towards
speaker structure and away from word identity; the k-means rows show whether the embedding itself follows.
``--random-init`` adds the first checkpoint's architecture with fresh weights (the floor).
"""
import argparse
import logging
import os
import sys
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

logger = logging.getLogger("evidence.slicer_clusters")


def read_split(keyword_dir: str, split: str) -> Tuple[List[str], List[str], List[str]]:
    """-> (wav paths, speakers, words) of one split of a ``manifests.keywords`` directory."""
    from fairseq_plugins.data.manifest_io import read_lines, read_manifest

    tsv = os.path.join(keyword_dir, f"{split}.tsv")
    root, rows = read_manifest(tsv)
    speakers = read_lines(os.path.join(keyword_dir, f"{split}.spk"), expected=len(rows))
    words = read_lines(os.path.join(keyword_dir, f"{split}.kw"), expected=len(rows))
    return [os.path.join(root, r[0]) for r in rows], speakers, words


@torch.no_grad()
def encode(model, wavs: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
    """-> (pooled embeddings N x D, cluster-head probabilities N x K) of a SLICER model, one utterance at a time
    (no padding)."""
    from fairseq_plugins.data.audio import read_audio

    pooled, probs = [], []
    for path in wavs:
        source = torch.from_numpy(read_audio(path, 16000))[None]
        _, x = model.logmel(source, update_norm=False)
        h = model.student.backbone(x)
        pooled.append(h[0].numpy())
        probs.append(torch.softmax(model.student.cluster_head(h), dim=1)[0].numpy())
    return np.stack(pooled), np.stack(probs)


def nmi(a: Sequence, b: Sequence) -> float:
    from sklearn.metrics import normalized_mutual_info_score

    return 100.0 * float(normalized_mutual_info_score(a, b))


def analyse(pooled: np.ndarray, probs: np.ndarray, speakers: List[str], words: List[str]) -> Dict[str, float]:
    from sklearn.cluster import KMeans

    head = probs.argmax(1)
    k = probs.shape[1]
    z = (pooled - pooled.mean(0)) / (pooled.std(0) + 1e-8)
    km = [KMeans(n_clusters=k, n_init=1, random_state=s).fit_predict(z) for s in range(5)]
    return {"clusters_used": float(len(set(head.tolist()))), "K": float(k),
            "head_speaker": nmi(head, speakers), "head_word": nmi(head, words),
            "kmeans_speaker": float(np.mean([nmi(p, speakers) for p in km])),
            "kmeans_word": float(np.mean([nmi(p, words) for p in km]))}


def load(path: str, name: str, user_dir: str):
    """-> the evaluate CLI's upstream of a SLICER training checkpoint (``.model`` is the ``SlicerModel``)."""
    from fairseq_plugins.evaluate.upstream import import_user_dir, load_fairseq_upstream

    import_user_dir(user_dir)
    up = load_fairseq_upstream(path, name)
    if type(up.model).__name__ != "SlicerModel":
        raise ValueError(f"{path}: a {type(up.model).__name__} checkpoint; expected a SLICER (model 'slicer') one")
    return up


def table(rows: Dict[str, Dict[str, float]], n: int, speakers: int, words: int) -> str:
    lines = [f"NMI (%) on {n} keyword utterances ({speakers} speakers x {words} words); K-means: mean of 5 seeds.",
             "", "| model | clusters used / K | head -> speaker | head -> word | k-means -> speaker | "
             "k-means -> word |", "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['clusters_used']:.0f} / {r['K']:.0f} | {r['head_speaker']:.1f} | "
                     f"{r['head_word']:.1f} | {r['kmeans_speaker']:.1f} | {r['kmeans_word']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m evidence.slicer_clusters", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoints", nargs="+", required=True, metavar="NAME=PATH", help="SLICER checkpoints")
    p.add_argument("--keyword-dir", required=True, help="a python -m manifests.keywords directory")
    p.add_argument("--splits", nargs="+", default=["train", "valid", "test"])
    p.add_argument("--random-init", action="store_true", help="add the first checkpoint's architecture, untrained")
    p.add_argument("--user-dir", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                      "fairseq_plugins"))
    p.add_argument("--out", help="also write the table here")
    args = p.parse_args(argv)
    from fairseq_plugins.compat import cli_logging

    cli_logging()
    torch.manual_seed(0)
    wavs, speakers, words = [], [], []
    for split in args.splits:
        w, s, k = read_split(args.keyword_dir, split)
        wavs += w
        speakers += s
        words += k
    rows: Dict[str, Dict[str, float]] = {}
    for spec in args.checkpoints:
        name, sep, path = spec.partition("=")
        if not sep:
            p.error(f"--checkpoints {spec!r}: expected NAME=PATH")
        try:
            up = load(path, name, args.user_dir)
        except (OSError, ValueError, RuntimeError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        rows[name] = analyse(*encode(up.model, wavs), speakers, words)
        logger.info("%s: %s", name, rows[name])
        if args.random_init and "random" not in rows:  # the probes' random floor: the model's own constructor
            from fairseq_plugins.evaluate.upstream import random_like

            rows["random"] = analyse(*encode(random_like(up).model, wavs), speakers, words)
    text = table(rows, len(wavs), len(set(speakers)), len(set(words)))
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
