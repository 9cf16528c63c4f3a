"""Paired views of whole utterances for LASER / SCORE self-supervised fine-tuning.

LASER (Meghanani & Hain, "LASER: Learning by Aligning Self-supervised Representations of Speech for Improving
Content-related Tasks", Interspeech 2024, arXiv 2406.09153): view 1 is the utterance, view 2 the same utterance
speed-perturbed (factor drawn uniformly from a list) and then pitch-shifted by +2 or -2 semitones (p = 1/2
each); the pair is returned in random order. The views differ in length, so both are padded separately and the
loss aligns them with soft-DTW (the model encodes each padded item alone, ``model.encode_per_item``, so padding
never changes an item's features). Randomness is seeded by ``(seed, epoch, index)``: the same sample gives the
same pair in any data-loader worker.
"""
import logging
import math
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch
from fairseq.data import FileAudioDataset

from fairseq_plugins.data.audio import ManifestAudioDataset
from fairseq_plugins.data.augment import PitchShift, Speed, seeded_rng

logger = logging.getLogger(__name__)


def collate_padded(waves: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D waveforms: ``(B x T source, B x T padding_mask)``, True marks padding."""
    size = max(int(w.numel()) for w in waves)
    source = waves[0].new_zeros(len(waves), size)
    padding_mask = torch.ones(len(waves), size, dtype=torch.bool)
    for i, w in enumerate(waves):
        source[i, : w.numel()] = w
        padding_mask[i, : w.numel()] = False
    return source, padding_mask


class LaserPairDataset(ManifestAudioDataset, FileAudioDataset):
    """A fairseq manifest read as pairs ``(utterance, speed+pitch perturbed utterance)`` in random order.

    Items too short to survive the strongest speed-up with ``min_sample_size`` samples left are skipped at
    load time, with their count logged (fairseq's FileAudioDataset skip, with the reason added here). Audio is
    read with the shared checked reader (:func:`fairseq_plugins.data.audio.read_audio`).
    """

    def __init__(self, manifest_path: str, sample_rate: int, speed_factors: Sequence[float],
                 pitch_semitones: Sequence[float], min_sample_size: int, max_sample_size: int,
                 seed: int = 1, shuffle: bool = True, swap_prob: float = 0.5, downmix: bool = False):
        if not speed_factors or min(speed_factors) <= 0:
            raise ValueError(f"speed_factors must be positive, got {list(speed_factors)}")
        if not pitch_semitones:
            raise ValueError("pitch_semitones must list at least one shift (0 for none)")
        fastest = max(speed_factors)
        min_source = int(math.ceil(min_sample_size * max(1.0, fastest)))
        super().__init__(manifest_path, sample_rate, max_sample_size=max_sample_size,
                         min_sample_size=min_source, shuffle=shuffle, pad=True, normalize=False)
        self.init_reader(manifest_path, downmix=downmix)
        if self.skipped_indices:
            logger.info(
                "%s: skipped %d utterances shorter than %d samples (min_sample_size %d after a speed-up of %g)",
                manifest_path, len(self.skipped_indices), min_source, min_sample_size, fastest)
        if len(self.sizes) == 0:
            raise ValueError(f"{manifest_path}: no utterance is long enough ({min_source} samples needed)")
        factors = "|".join(f"{f:g}" for f in speed_factors)
        shifts = "|".join(f"{s:g}" for s in pitch_semitones)
        self.speed = Speed(sample_rate, factor=factors)
        self.pitch = PitchShift(sample_rate, semitones=shifts)
        self.seed = int(seed)
        self.swap_prob = float(swap_prob)
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def can_reuse_epoch_itr_across_epochs(self) -> bool:
        return False  # the views are redrawn every epoch

    def __getitem__(self, index: int) -> Dict[str, Any]:
        item = super().__getitem__(index)
        wav = item["source"].numpy().astype(np.float32)
        rng = seeded_rng(self.seed, self.epoch, index)
        if self.max_sample_size and len(wav) > self.max_sample_size:
            start = int(rng.integers(0, len(wav) - self.max_sample_size + 1))
            wav = wav[start: start + self.max_sample_size]
        other = self.pitch(self.speed(wav, rng), rng)
        views = [torch.from_numpy(wav.copy()), torch.from_numpy(np.ascontiguousarray(other, dtype=np.float32))]
        swapped = bool(rng.random() < self.swap_prob)
        if swapped:
            views.reverse()
        return {"id": index, "views": views, "swapped": swapped}

    def num_tokens(self, index: int) -> int:
        return self.size(index)

    def size(self, index: int) -> int:
        size = int(self.sizes[index])
        return min(size, self.max_sample_size) if self.max_sample_size else size

    def collater(self, samples: List[Dict[str, Any]]) -> Dict[str, Any]:
        samples = [s for s in samples if s.get("views") is not None]
        if not samples:
            return {}
        src1, pad1 = collate_padded([s["views"][0] for s in samples])
        src2, pad2 = collate_padded([s["views"][1] for s in samples])
        return {
            "id": torch.LongTensor([s["id"] for s in samples]),
            "net_input": {"source": src1, "padding_mask": pad1},
            "net_input_2": {"source": src2, "padding_mask": pad2},
            "swapped": torch.BoolTensor([s["swapped"] for s in samples]),
            "nsentences": len(samples),
        }
