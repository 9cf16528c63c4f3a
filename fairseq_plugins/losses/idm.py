"""Contrastive-IDM temporal regulariser of "Learning by Aligning Videos in Time" (Haresh et al., CVPR 2021),
as used per view by LASER (Meghanani & Hain, Interspeech 2024): frames close in time should stay close in the
embedding space, frames further apart than ``sigma`` should be at least ``margin`` apart, both weighted by
the squared time difference. For one sequence z_1..z_N:
    D_ij = ||z_i - z_j||_2,  y_ij = 1[|i - j| > sigma],  W_ij = (i - j)^2 + 1,
    I(Z) = 1/N^2 sum_ij [ y_ij W_ij max(0, margin - D_ij) + (1 - y_ij) D_ij / W_ij ].
Batched over padded sequences with per-item lengths (N = the item's own length).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

__all__ = ["ContrastiveIDM", "contrastive_idm", "pairwise_distances"]


def pairwise_distances(z: Tensor) -> Tensor:
    """Euclidean distances D_ij = ||z_i - z_j||_2 for z: B x N x D -> B x N x N, via one batched matmul.

    The diagonal is exactly 0, and the gradient is 0 (not NaN) wherever a distance is 0.
    """
    n = z.size(1)
    z2 = (z * z).sum(-1)
    sq = torch.baddbmm(z2.unsqueeze(2) + z2.unsqueeze(1), z, z.transpose(1, 2), alpha=-2.0)
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    pos = (sq > 0) & ~eye
    return torch.where(pos, torch.sqrt(torch.where(pos, sq, torch.ones_like(sq))), torch.zeros_like(sq))


def contrastive_idm(
    z: Tensor,
    lengths: Optional[Union[Tensor, Sequence[int]]] = None,
    sigma: float = 0.0,
    margin: float = 1.1,
) -> Tensor:
    """Contrastive-IDM I(Z) per item.

    Args:
        z: B x N x D frame embeddings (padded).
        lengths: [B] valid lengths (default N); frames past them are ignored and N in 1/N^2 is the item's own.
        sigma: pairs with |i - j| > sigma are pushed at least ``margin`` apart; the rest are pulled together.
        margin: lambda of the hinge (LASER: 1.1 for HuBERT, 1.0 for WavLM).

    Returns:
        [B] in z's dtype.
    """
    if z.dim() != 3:
        raise ValueError(f"contrastive_idm: z must be B x N x D, got {list(z.shape)}")
    bsz, n = z.size(0), z.size(1)
    if lengths is None:
        lens = torch.full((bsz,), n, dtype=torch.long, device=z.device)
    else:
        lens = torch.as_tensor(lengths, device=z.device).long()
        if lens.shape != (bsz,):
            raise ValueError(f"contrastive_idm: lengths must have shape [{bsz}], got {list(lens.shape)}")
    bad = ((lens < 1) | (lens > n)).nonzero().flatten().tolist()
    if bad:
        b = bad[0]
        raise ValueError(f"contrastive_idm: item {b} has length {int(lens[b])}, expected 1..{n}")

    dist = pairwise_distances(z)
    idx = torch.arange(n, device=z.device)
    gap = (idx.view(n, 1) - idx.view(1, n)).to(z.dtype)
    weight = gap * gap + 1.0
    far = gap.abs() > sigma
    per_pair = torch.where(far, weight * torch.clamp(margin - dist, min=0.0), dist / weight)
    valid = idx.view(1, n) < lens.view(bsz, 1)  # B x N
    mask = valid.unsqueeze(2) & valid.unsqueeze(1)
    total = (per_pair * mask).sum((1, 2))
    return total / (lens.to(z.dtype) ** 2)


class ContrastiveIDM(nn.Module):
    """Module form of `contrastive_idm`: forward(z: B x N x D, lengths=None) -> [B]."""

    def __init__(self, sigma: float = 0.0, margin: float = 1.1):
        super().__init__()
        self.sigma = sigma
        self.margin = margin

    def forward(self, z: Tensor, lengths: Optional[Union[Tensor, Sequence[int]]] = None) -> Tensor:
        return contrastive_idm(z, lengths, self.sigma, self.margin)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, margin={self.margin}"
