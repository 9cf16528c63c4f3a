"""Pure-torch losses of contrastive separative coding (CSC; Wang, Lam, Su, Yu, "Contrastive Separative Coding
for Self-supervised Representation Learning", ICASSP 2021, arXiv 2103.00816). No fairseq import: the ``csc``
criterion (:mod:`fairseq_plugins.criterions.csc`) wraps these functions.

- :func:`si_snr` / :func:`neg_si_snr`: scale-invariant SNR (dB) of a separated estimate against the clean
  target over the valid samples of each row (both zero-meaned; Le Roux et al., "SDR - half-baked or well
  done?", 2019), the separation loss ``L_sep``.
- :func:`log_bessel_iv`, :func:`vmf_log_normaliser`: ``log I_v(kappa)`` with its exact gradient
  ``I_{v+1}/I_v + v/kappa`` (scipy's exponentially scaled ``ive`` in float64; a small-argument series where
  ``ive`` underflows) and the log normaliser ``log C_d(kappa)`` of the von Mises-Fisher density
  ``C_d(kappa) exp(kappa mu^T z)`` on the unit sphere in ``d`` dimensions.
- :func:`vmf_nll`: the negative-free probabilistic contrastive objective ``L_csc``: minus the vMF
  log-likelihood of every (L2-normalised) frame representation ``z_t`` of an item around the direction ``mu``
  of its global speaker vector, averaged over the item's valid frames. Maximising it maximises a lower bound on
  the mutual information between representations and speaker vector; the normaliser ``log C_d(kappa)`` (which
  couples to a learned concentration) takes the place of negatives, so item ``i``'s loss and gradient depend on
  item ``i`` alone.
"""
import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F


def si_snr(est: torch.Tensor, ref: torch.Tensor, mask: Optional[torch.Tensor] = None,
           eps: float = 1e-8) -> torch.Tensor:
    """Scale-invariant SNR in dB per row: ``B x L, B x L (, B x L bool True = valid) -> B``.

    ``s = <e, r> r / ||r||^2`` (after removing each row's mean over its valid samples), ``SI-SNR =
    10 log10(||s||^2 / ||e - s||^2)``."""
    if est.shape != ref.shape or est.dim() != 2:
        raise ValueError(f"est and ref must both be B x L, got {tuple(est.shape)} and {tuple(ref.shape)}")
    est, ref = est.float(), ref.float()
    keep = torch.ones_like(est) if mask is None else mask.to(est)
    n = keep.sum(1, keepdim=True).clamp(min=1.0)
    est = (est - (est * keep).sum(1, keepdim=True) / n) * keep
    ref = (ref - (ref * keep).sum(1, keepdim=True) / n) * keep
    scale = (est * ref).sum(1, keepdim=True) / (ref.pow(2).sum(1, keepdim=True) + eps)
    s = scale * ref
    noise = est - s
    return 10 * torch.log10((s.pow(2).sum(1) + eps) / (noise.pow(2).sum(1) + eps))


def neg_si_snr(est: torch.Tensor, ref: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``L_sep``: minus the mean SI-SNR (dB) over rows (see :func:`si_snr`); scalar."""
    return -si_snr(est, ref, mask).mean()


def _log_iv_np(v: float, kappa: np.ndarray) -> np.ndarray:
    from scipy.special import gammaln, ive

    k = np.asarray(kappa, dtype=np.float64)
    scaled = ive(v, k)
    out = np.log(np.where(scaled > 0, scaled, 1.0)) + k
    small = ~(scaled > 0)  # underflow: kappa << v, where I_v(k) ~ (k/2)^v / Gamma(v+1) (1 + k^2 / (4 (v+1)))
    if small.any():
        ks = k[small]
        out[small] = v * np.log(ks / 2) - gammaln(v + 1) + np.log1p(ks ** 2 / (4 * (v + 1)))
    return out


def _iv_ratio_np(v: float, kappa: np.ndarray) -> np.ndarray:
    """``I_{v+1}(k) / I_v(k)`` (the vMF mean resultant length A_d for v = d/2 - 1)."""
    from scipy.special import ive

    k = np.asarray(kappa, dtype=np.float64)
    num, den = ive(v + 1, k), ive(v, k)
    ok = den > 0
    return np.where(ok, num / np.where(ok, den, 1.0), k / (2 * (v + 1)))


class _LogBesselIv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, kappa: torch.Tensor, v: float):
        ctx.v = float(v)
        ctx.save_for_backward(kappa)
        k = kappa.detach().double().cpu().numpy()
        return torch.from_numpy(_log_iv_np(ctx.v, k)).to(kappa)

    @staticmethod
    def backward(ctx, grad):
        (kappa,) = ctx.saved_tensors
        k = kappa.detach().double().cpu().numpy()
        d = torch.from_numpy(_iv_ratio_np(ctx.v, k) + ctx.v / k).to(kappa)
        return grad * d, None


def log_bessel_iv(v: float, kappa: torch.Tensor) -> torch.Tensor:
    """``log I_v(kappa)`` elementwise for ``kappa > 0`` (any shape), differentiable in ``kappa``."""
    if not torch.all(kappa > 0):
        raise ValueError("log_bessel_iv: kappa must be positive")
    return _LogBesselIv.apply(kappa, v)


def vmf_log_normaliser(kappa: torch.Tensor, dim: int) -> torch.Tensor:
    """``log C_d(kappa) = (d/2 - 1) log kappa - (d/2) log(2 pi) - log I_{d/2-1}(kappa)``; its derivative is
    ``-A_d(kappa) = -I_{d/2}/I_{d/2-1}``."""
    if dim < 2:
        raise ValueError(f"vMF needs dim >= 2, got {dim}")
    v = dim / 2.0 - 1.0
    return v * torch.log(kappa) - (dim / 2.0) * math.log(2 * math.pi) - log_bessel_iv(v, kappa)


def vmf_nll(z: torch.Tensor, mu: torch.Tensor, kappa: torch.Tensor, weight: Optional[torch.Tensor] = None,
            reduction: str = "mean") -> torch.Tensor:
    """Negative vMF log-likelihood of representations around their item's speaker direction.

    Args:
        z: N x T x D representations (frames of N items), L2-normalised here.
        mu: N x D mean directions (e.g. a projection of the global speaker vector), L2-normalised here.
        kappa: scalar concentration > 0 (learned or fixed).
        weight: N x T non-negative frame weights (1 = valid frame, 0 = padding), or None.
        reduction: ``"mean"`` over items, or ``"none"`` for the N per-item losses.
    Returns:
        ``-(1/sum_t w_t) sum_t w_t (log C_D(kappa) + kappa mu^T z_t)`` per item (or their mean). No term
        involves another item: there are no negatives.
    """
    if z.dim() != 3 or mu.shape != (z.size(0), z.size(2)):
        raise ValueError(f"z must be N x T x D and mu N x D, got {tuple(z.shape)} and {tuple(mu.shape)}")
    z = F.normalize(z.float(), dim=-1)
    mu = F.normalize(mu.float(), dim=-1)
    kappa = kappa.float()
    cos = torch.einsum("ntd,nd->nt", z, mu)
    w = torch.ones_like(cos) if weight is None else weight.to(cos)
    mean_cos = (cos * w).sum(1) / w.sum(1).clamp(min=1e-8)
    per_item = -(vmf_log_normaliser(kappa.reshape(1), z.size(-1)) + kappa * mean_cos)
    if reduction == "none":
        return per_item
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    return per_item.mean()
