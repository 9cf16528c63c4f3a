"""Seeded span masking: fairseq's ``compute_mask_indices`` with masks keyed by (seed, update, rank, micro-batch).

fairseq draws span positions from fresh OS entropy unless it is given ``(seed, epoch, indices)``; a seed taken
from numpy's global generator instead (which ``fairseq_cli.train`` seeds once from ``common.seed``) is the same
on every rank, so all workers mask the same spans, and it restarts on resume, so a resumed run replays the
masks of update 0. Here every draw has its own key like the rest of the project's randomness
(:func:`~fairseq_plugins.data.augment.seeded_rng`): in training ``(seed, update, rank, micro-batch)``, where the
micro-batch counts the masked forwards of one update (``update_freq`` > 1, fairseq's placeholder batches
included); in evaluation ``(seed, EVAL, rank, k)`` with ``k`` counting the evaluation forwards since the last
training forward, so every validation pass masks its batches the same way and validation losses stay comparable
across updates. A run resumed from ``checkpoint_last`` therefore masks exactly as an uninterrupted one, and ranks
mask differently. Used by the ``simsiam_recon`` and ``mgf`` models; any model with HuBERT-style span masking can
hold a :class:`SpanMaskKeys` and call :func:`seeded_span_mask`.
"""
from typing import Optional, Tuple

import torch
import torch.distributed as dist
from fairseq.data.data_utils import compute_mask_indices

from fairseq_plugins.data.augment import seeded_rng

EVAL_STREAM = 2 ** 62  # the "update" key of evaluation draws (larger than any real update number)
TIME, CHANNEL = 0, 1  # streams: time spans, channel spans (HuBERT's fine-tuning channel masking)
FINE_TIME = 2  # stream of a second, short-span time mask (MGF's frame scale)


def data_parallel_rank() -> int:
    """This worker's rank in ``torch.distributed`` (0 when it is not initialised)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def mask_seed(*keys: int) -> int:
    """A seed in ``[1, 2**31 - 1)`` for ``compute_mask_indices``, derived from the key tuple."""
    return int(seeded_rng(*keys).integers(1, 2 ** 31 - 1))


def seeded_span_mask(shape: Tuple[int, int], padding_mask: Optional[torch.Tensor], mask_prob: float,
                     mask_length: int, keys: Tuple[int, ...], selection: str = "static", other: float = 0.0,
                     min_masks: int = 0, no_overlap: bool = False, min_space: int = 0) -> torch.Tensor:
    """fairseq's ``compute_mask_indices`` (same arguments and meaning, ``require_same_masks`` as fairseq) with
    every row's spans drawn from a generator determined by ``keys``: ``(B, T)`` -> ``B x T`` bool tensor on
    the device of ``padding_mask`` (CPU when it is None). The same keys give the same mask in any process."""
    B = shape[0]
    mask = compute_mask_indices(shape, padding_mask, mask_prob, mask_length, selection, other,
                                min_masks=min_masks, no_overlap=no_overlap, min_space=min_space,
                                seed=mask_seed(*keys), epoch=1, indices=torch.arange(B))
    device = padding_mask.device if padding_mask is not None else "cpu"
    return torch.from_numpy(mask).to(device)


class SpanMaskKeys:
    """Hands out the key tuple of each masked forward (see the module docstring); callers append a stream
    (:data:`TIME`, :data:`CHANNEL`) per mask they draw from it. The counter is not checkpointed and needs not
    be: fairseq saves after whole updates, and a resumed update starts at micro-batch 0 as in an uninterrupted
    run."""

    def __init__(self, seed: int):
        if int(seed) < 0:
            raise ValueError(f"mask seed must be a non-negative integer, got {seed}")
        self.seed = int(seed)
        self._train = (-1, 0)  # (update, masked forwards so far in that update)
        self._eval = 0  # evaluation forwards since the last training forward

    def next(self, training: bool, num_updates: int) -> Tuple[int, int, int, int]:
        """Keys of the next masked forward: ``(seed, update | EVAL_STREAM, rank, micro-batch)``."""
        if training:
            update, k = self._train
            k = k if update == int(num_updates) else 0
            self._train = (int(num_updates), k + 1)
            self._eval = 0
            return self.seed, int(num_updates), data_parallel_rank(), k
        k, self._eval = self._eval, self._eval + 1
        return self.seed, EVAL_STREAM, data_parallel_rank(), k
