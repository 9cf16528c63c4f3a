"""SLICER's losses as pure torch functions (no fairseq import).

SLICER (Seth, Ghosh, Umesh, Manocha; ICASSP 2023, arXiv 2211.01519) sums

- a symmetric MoCo InfoNCE between student queries and teacher keys of the other view, negatives from a queue
  of past teacher keys (temperature 0.07): ``l(q1, k2) + l(q2, k1)`` (:func:`symmetric_info_nce`);
- the cluster-level contrast of Contrastive Clustering (Li et al., AAAI 2021, arXiv 2009.09687) on the
  columns of the two views' ``B x K`` softmax assignment matrices: NT-Xent over the ``2K`` cluster columns with
  cosine similarity (temperature 1.0), plus the CC authors' entropy regulariser ``log K - H(p)`` of the
  cluster marginals ``p`` of each view (:func:`cluster_contrast`).
"""
import math
from typing import Tuple

import torch
import torch.nn.functional as F


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """MoCo InfoNCE, mean over the batch.

    Args:
        q: ``B x D`` unit-norm queries (gradient flows).
        k: ``B x D`` unit-norm positive keys (treated as constants).
        queue: ``N x D`` unit-norm negatives.
    """
    k = k.detach()
    pos = (q * k).sum(dim=1, keepdim=True)  # B x 1
    neg = q @ queue.detach().t()  # B x N
    logits = torch.cat([pos, neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.size(0), dtype=torch.long, device=q.device))


def symmetric_info_nce(q1: torch.Tensor, q2: torch.Tensor, k1: torch.Tensor, k2: torch.Tensor,
                       queue: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """``info_nce(q1, k2) + info_nce(q2, k1)``: each student query against the teacher key of the other view."""
    return info_nce(q1, k2, queue, temperature) + info_nce(q2, k1, queue, temperature)


def cluster_entropy(c: torch.Tensor) -> torch.Tensor:
    """``log K - H(p)`` with ``p`` the column sums of ``c`` (``B x K``, rows sum to 1) divided by their total."""
    p = c.sum(0)
    p = p / p.sum()
    return math.log(c.size(1)) + (p * torch.log(p.clamp_min(1e-12))).sum()


def cluster_contrast(c1: torch.Tensor, c2: torch.Tensor, temperature: float = 1.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Contrastive Clustering's cluster-level loss on two ``B x K`` assignment matrices (rows: softmax).

    Returns ``(nt_xent, entropy)``: the NT-Xent over the ``2K`` columns (column ``j`` of view 1 is the positive
    of column ``j`` of view 2; the other ``2K - 2`` columns are negatives; cosine similarity / temperature; mean
    over the 2K anchors), and the entropy regulariser ``cluster_entropy(c1) + cluster_entropy(c2)``.
    """
    k = c1.size(1)
    cols = F.normalize(torch.cat([c1.t(), c2.t()], dim=0), dim=1)  # 2K x B
    sim = cols @ cols.t() / temperature
    sim = sim.masked_fill(torch.eye(2 * k, dtype=torch.bool, device=sim.device), float("-inf"))
    target = torch.cat([torch.arange(k, 2 * k), torch.arange(0, k)]).to(sim.device)
    nt_xent = F.cross_entropy(sim, target)
    return nt_xent, cluster_entropy(c1) + cluster_entropy(c2)
