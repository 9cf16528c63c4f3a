"""Pure-torch losses of the positive-sample contrast + masked reconstruction method (Zhang, Liu, Niu, Chen,
Qu; Journal on Communications 2022, 43(7):163-171), which applies SimSiam ("Exploring Simple Siamese
Representation Learning", Chen & He, CVPR 2021, arXiv 2011.10566) to speech together with masked
reconstruction. No fairseq import: the criteria in ``fairseq_plugins/criterions/`` wrap these functions.

- :func:`simsiam_loss`: ``1/2 D(p1, sg(z2)) + 1/2 D(p2, sg(z1))`` with ``D(p, z) = -cos(p, z)``, generalised
  to V views as the mean over ordered pairs ``i != j``.
- :func:`collapse_std`: SimSiam's collapse monitor, the std over the batch of the L2-normalised projections,
  averaged over dimensions (0 = collapsed; about ``1/sqrt(dim)`` when healthy).
- :func:`masked_l1`: L1 reconstruction error over masked positions only.
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``D(p, z) = -cos(p, sg(z))`` along the last dim (``... x D, ... x D -> ...``); ``z`` gets no
    gradient."""
    return -F.cosine_similarity(p, z.detach(), dim=-1)


def pairwise_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``cos(p_i[n], sg(z_j[n]))`` for all view pairs: ``V x N x D, V x N x D -> V x V x N``."""
    return torch.einsum("ind,jnd->ijn", F.normalize(p, dim=-1), F.normalize(z.detach(), dim=-1))


def simsiam_loss(p: torch.Tensor, z: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Symmetric negative-cosine SimSiam loss with stop-gradient on the targets.

    Args:
        p: V x N x D predictor outputs (V >= 2 views of N items: utterances or frames).
        z: V x N x D projector outputs; used as targets under stop-gradient.
        weight: optional N non-negative weights (e.g. 1 for real frames, 0 for padding).
    Returns:
        scalar ``mean_{i != j} mean_n D(p_i[n], sg(z_j[n]))`` (weighted mean over n), in [-1, 1].
    """
    if p.dim() != 3 or p.shape != z.shape:
        raise ValueError(f"p and z must both be V x N x D, got {tuple(p.shape)} and {tuple(z.shape)}")
    V = p.size(0)
    if V < 2:
        raise ValueError("SimSiam needs at least two views")
    cos = pairwise_cosine(p.float(), z.float())  # V x V x N
    off = ~torch.eye(V, dtype=torch.bool, device=p.device)
    per_item = -cos[off].mean(0)  # N: mean over the V(V-1) ordered pairs
    if weight is None:
        return per_item.mean()
    weight = weight.to(per_item)
    return (per_item * weight).sum() / weight.sum().clamp(min=1e-8)


def collapse_std(z: torch.Tensor) -> torch.Tensor:
    """Std over items of the L2-normalised ``z``, averaged over dimensions (and over views).

    ``N x D`` or ``V x N x D`` (each view separately) -> scalar; detached. Collapse gives 0, a healthy
    representation about :func:`healthy_std` ``= 1/sqrt(D)``.
    """
    z = F.normalize(z.detach().float(), dim=-1)
    if z.dim() == 2:
        z = z.unsqueeze(0)
    if z.size(1) < 2:
        return z.new_zeros(())
    return z.std(dim=1).mean()


def healthy_std(dim: int) -> float:
    """The collapse monitor's value for uniformly spread unit vectors in ``dim`` dimensions."""
    return 1.0 / math.sqrt(dim)


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, int]:
    """Mean absolute error over the masked positions only.

    Args:
        pred: B x T x F predictions.
        target: B x T x F targets (no gradient is taken through them).
        mask: B x T bool, True where the frame counts (masked and not padding).
    Returns:
        ``(loss, count)``: mean over masked frames and features (0 with a graph when nothing is masked), and
        the number of masked frames.
    """
    if pred.shape != target.shape or mask.shape != pred.shape[:2]:
        raise ValueError(f"shapes differ: pred {tuple(pred.shape)}, target {tuple(target.shape)}, "
                         f"mask {tuple(mask.shape)}")
    count = int(mask.sum())
    if count == 0:
        return pred.sum() * 0.0, 0
    return (pred[mask].float() - target[mask].detach().float()).abs().mean(), count
