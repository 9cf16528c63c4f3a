"""Scores of the evaluation probes: phone error rate, equal error rate, accuracy, and greedy CTC decoding.

Pure functions on Python/numpy values (no fairseq import). Conventions:

- PER is corpus level, as SUPERB and fairseq report it: the sum of the Levenshtein edits (substitutions,
  insertions, deletions) over all utterances divided by the sum of the reference lengths; it can exceed 1.
- EER is read off the interpolated ROC: the detection-error trade-off curve (false-accept rate, false-reject
  rate) is traced over every distinct score threshold and the EER is where the linear interpolation between
  the two neighbouring operating points crosses FAR = FRR (exact on hand-computed examples, ties included).
"""
from typing import Hashable, List, Sequence

import numpy as np


def per(hypotheses: Sequence[Sequence[Hashable]], references: Sequence[Sequence[Hashable]]) -> float:
    """Phone (token) error rate: ``sum(edit_distance(h, r)) / sum(len(r))`` over utterance pairs.

    Sequences are lists of tokens (strings or ints), one per utterance, in the same order. Raises
    ``ValueError`` on different numbers of utterances or an all-empty reference set.
    """
    import editdistance

    if len(hypotheses) != len(references):
        raise ValueError(f"per: {len(hypotheses)} hypotheses but {len(references)} references")
    total_ref = sum(len(r) for r in references)
    if total_ref == 0:
        raise ValueError("per: the references are all empty")
    edits = sum(editdistance.eval(list(h), list(r)) for h, r in zip(hypotheses, references))
    return float(edits) / float(total_ref)


def det_curve(scores: Sequence[float], labels: Sequence[int]):
    """Operating points ``(far, frr)`` of the rule "accept when score >= threshold", one per distinct
    threshold from above the highest score (far 0, frr 1) down to the lowest score (far 1, frr 0).

    ``labels``: 1 = target (same speaker), 0 = non-target. Returns two float arrays of equal length.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError(f"scores and labels must be 1-D of equal length, got {s.shape} and {y.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    if not set(np.unique(y).tolist()) <= {0, 1}:
        raise ValueError("labels must be 0 (non-target) or 1 (target)")
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"need target and non-target trials, got {n_pos} target and {n_neg} non-target")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    # index of the last trial of every run of equal scores: thresholds between distinct scores only
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = np.cumsum(y)[last]
    fp = np.cumsum(1 - y)[last]
    far = np.r_[0.0, fp / n_neg]
    frr = np.r_[1.0, 1.0 - tp / n_pos]
    return far, frr


def eer(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Equal error rate in [0, 1] from trial scores (higher = more likely target) and 0/1 labels."""
    far, frr = det_curve(scores, labels)
    d = frr - far  # starts at 1, ends at -1, non-increasing
    k = int(np.argmax(d <= 0))
    if d[k] == 0:
        return float(far[k])
    a = d[k - 1] / (d[k - 1] - d[k])
    return float(far[k - 1] + a * (far[k] - far[k - 1]))


def accuracy(predictions: Sequence[int], targets: Sequence[int]) -> float:
    """Fraction of equal entries."""
    p, t = np.asarray(predictions), np.asarray(targets)
    if p.shape != t.shape:
        raise ValueError(f"accuracy: {p.shape} predictions but {t.shape} targets")
    if p.size == 0:
        raise ValueError("accuracy: no predictions")
    return float((p == t).mean())


def ctc_greedy_decode(best_path: Sequence[int], blank: int = 0) -> List[int]:
    """Collapse repeats, then drop blanks: ``[0, 3, 3, 0, 3, 5, 5] -> [3, 3, 5]``."""
    out: List[int] = []
    prev = None
    for tok in best_path:
        tok = int(tok)
        if tok != prev and tok != blank:
            out.append(tok)
        prev = tok
    return out
