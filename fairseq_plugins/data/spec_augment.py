"""Spectrogram augmentations of BYOL-A and SLICER: log-mixup-exp with a FIFO memory bank, k-mix, random
resize crop, and the k-means step that k-mix needs.

- **log-mixup-exp** (BYOL-A, Niizumi et al., IJCNN 2021, arXiv 2103.06695): ``y = log((1 - l) exp(x) + l
  exp(m))`` with ``l ~ U(0, alpha)`` and ``m`` a spectrogram from a FIFO bank of past inputs.
- **k-mix** (SLICER, Seth et al., ICASSP 2023, arXiv 2211.01519): the same mix, but the partner comes from
  another acoustic cluster: before training, k-means (k = 4 in the paper) is fitted on the time-averaged
  log-mels of a sample of the training data (:func:`fit_kmix_centroids`; ``metric="cosine"`` is the authors'
  spherical k-means on L2-normalised vectors, ``"euclidean"`` plain k-means); every input and bank item gets the
  cluster of its nearest centroid, and :func:`pick_partners` picks a bank item from the farthest other cluster
  (the authors' rule) or from a random other cluster. When the bank holds no item of another cluster, the
  partner is a random bank item (plain mixup), so the step never fails.
- **random resize crop** (BYOL-A): a crop of a virtually enlarged canvas, resized back to the input size.

Everything is plain torch on ``B x F x T`` tensors (F = mel bins), so it runs batched on the model's device.
Randomness comes from an explicit ``torch.Generator`` when one is given. Registers nothing.
"""
import logging
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

PARTNER_RULES = ("farthest", "random_other")
KMIX_METRICS = ("cosine", "euclidean")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def fit_kmix_centroids(features: np.ndarray, k: int, seed: int = 0, metric: str = "cosine",
                       iterations: int = 50) -> np.ndarray:
    """k-means on ``N x F`` time-averaged log-mels -> ``k x F`` float32 centroids.

    ``euclidean``: scikit-learn k-means (k-means++, 10 restarts). ``cosine``: spherical k-means as in the
    authors' code (faiss ``spherical=True``): the vectors are L2-normalised, the k-means++ fit above on them
    starts Lloyd iterations that assign by cosine and re-normalise every centroid; the centroids are unit
    vectors (a cluster that empties keeps its previous centroid)."""
    from sklearn.cluster import KMeans

    if metric not in KMIX_METRICS:
        raise ValueError(f"unknown k-mix metric {metric!r}; expected one of {', '.join(KMIX_METRICS)}")
    if features.shape[0] < k:
        raise ValueError(f"k-mix needs at least k={k} samples to fit its clusters, got {features.shape[0]}")
    x = features.astype(np.float64)
    if metric == "euclidean":
        return KMeans(n_clusters=k, n_init=10, random_state=seed).fit(x).cluster_centers_.astype(np.float32)
    x = _unit(x)
    centroids = _unit(KMeans(n_clusters=k, n_init=10, random_state=seed).fit(x).cluster_centers_)
    for _ in range(iterations):
        labels = (x @ centroids.T).argmax(axis=1)
        new = centroids.copy()
        for c in range(k):
            if np.any(labels == c):
                new[c] = x[labels == c].sum(axis=0)
        new = _unit(new)
        if np.allclose(new, centroids, atol=1e-10):
            break
        centroids = new
    return centroids.astype(np.float32)


def assign_clusters(mean_logmel: torch.Tensor, centroids: torch.Tensor, metric: str = "euclidean") -> torch.Tensor:
    """``B x F`` time-averaged log-mels, ``K x F`` centroids -> ``B`` nearest-centroid indices (``cosine``:
    largest cosine similarity, for unit centroids the same as the nearest normalised vector)."""
    x, c = mean_logmel.float(), centroids.float()
    if metric == "cosine":
        return (F.normalize(x, dim=1) @ F.normalize(c, dim=1).T).argmax(dim=1)
    return torch.cdist(x, c).argmin(dim=1)


def pick_partners(labels: torch.Tensor, bank_labels: torch.Tensor, centroids: torch.Tensor, rule: str = "farthest",
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """For each input cluster label, the index of a bank item of another cluster (see the module docstring).

    Args:
        labels: ``B`` cluster indices of the inputs.
        bank_labels: ``N`` cluster indices of the bank items (N >= 1).
        centroids: ``K x F`` (only used by ``farthest``: clusters are ranked by centroid distance).
        rule: ``farthest`` (authors) or ``random_other``.
    Returns:
        ``B`` long indices into the bank.
    """
    if rule not in PARTNER_RULES:
        raise ValueError(f"unknown k-mix partner rule {rule!r}; expected one of {', '.join(PARTNER_RULES)}")
    device = bank_labels.device
    n = bank_labels.numel()
    dist_cc = torch.cdist(centroids.float(), centroids.float())  # K x K
    out = torch.empty(labels.numel(), dtype=torch.long)
    for i, lab in enumerate(labels.tolist()):
        other = bank_labels != lab
        if not bool(other.any()):
            cand = torch.arange(n, device=device)
        elif rule == "farthest":
            present = torch.unique(bank_labels[other])
            far = present[dist_cc[lab, present].argmax()]
            cand = torch.nonzero(bank_labels == far).flatten()
        else:
            cand = torch.nonzero(other).flatten()
        j = torch.randint(cand.numel(), (1,), generator=generator).item()
        out[i] = cand[j]
    return out.to(device)


def log_mixup_exp(x: torch.Tensor, partner: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``log((1 - lam) exp(x) + lam exp(partner))`` per item; ``lam`` is ``B``. Computed stably (logaddexp)."""
    lam = lam.view(-1, *([1] * (x.dim() - 1))).to(x)
    return torch.logaddexp(x + torch.log1p(-lam), partner + torch.log(lam.clamp_min(1e-12)))


class MixBank:
    """FIFO memory bank of past (normalised) spectrograms and their k-mix clusters, for log-mixup-exp / k-mix.

    Plain tensors (not a module); the model ``slicer`` saves them as extra state.
    """

    def __init__(self, size: int = 2048):
        self.size = size
        self.items: Optional[torch.Tensor] = None  # N x F x T
        self.labels: Optional[torch.Tensor] = None  # N

    def __len__(self) -> int:
        return 0 if self.items is None else self.items.size(0)

    @torch.no_grad()
    def push(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None) -> None:
        x = x.detach()
        if labels is None:
            labels = torch.zeros(x.size(0), dtype=torch.long, device=x.device)
        if self.items is not None and self.items.shape[1:] != x.shape[1:]:
            self.items, self.labels = None, None  # a new crop size: start again
        if self.items is None:
            self.items, self.labels = x[-self.size:].clone(), labels[-self.size:].clone()
        else:
            self.items = torch.cat([self.items, x])[-self.size:]
            self.labels = torch.cat([self.labels, labels])[-self.size:]

    @torch.no_grad()
    def mix(self, x: torch.Tensor, alpha: float, labels: Optional[torch.Tensor] = None,
            centroids: Optional[torch.Tensor] = None, rule: str = "farthest",
            generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Mix every item of ``x`` (``B x F x T``) with a bank partner (k-mix when ``labels`` are given)."""
        if len(self) == 0 or alpha <= 0:
            return x
        if labels is not None and centroids is not None:
            idx = pick_partners(labels, self.labels, centroids, rule, generator)
        else:
            idx = torch.randint(len(self), (x.size(0),), generator=generator).to(x.device)
        lam = torch.rand(x.size(0), generator=generator).to(x.device) * alpha
        return log_mixup_exp(x, self.items[idx], lam)


def random_resize_crop(x: torch.Tensor, virtual_crop_scale: Tuple[float, float] = (1.0, 1.5),
                       freq_scale: Tuple[float, float] = (0.6, 1.5), time_scale: Tuple[float, float] = (0.6, 1.5),
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """BYOL-A's random resize crop of each ``F x T`` item of ``x`` (``B x F x T``), resized back (bicubic).

    The item is placed at the centre of a zero canvas ``virtual_crop_scale`` times larger; a crop of
    ``freq_scale x time_scale`` times the item size (clipped to the canvas) at a random position is resized
    to ``F x T``.
    """
    b, f, t = x.shape
    vf, vt = int(f * virtual_crop_scale[0]), int(t * virtual_crop_scale[1])
    canvas = x.new_zeros(b, vf, vt)
    f0, t0 = (vf - f) // 2, (vt - t) // 2
    canvas[:, f0:f0 + f, t0:t0 + t] = x
    out = []
    for i in range(b):
        r = torch.rand(4, generator=generator).tolist()
        cf = min(vf, max(1, int(f * (freq_scale[0] + r[0] * (freq_scale[1] - freq_scale[0])))))
        ct = min(vt, max(1, int(t * (time_scale[0] + r[1] * (time_scale[1] - time_scale[0])))))
        i0, j0 = int(r[2] * (vf - cf + 1)), int(r[3] * (vt - ct + 1))
        crop = canvas[i, i0:i0 + cf, j0:j0 + ct][None, None]
        out.append(F.interpolate(crop, size=(f, t), mode="bicubic", align_corners=True)[0, 0])
    return torch.stack(out)
