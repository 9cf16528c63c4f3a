"""A manifest-driven audio dataset that returns N augmented views of every utterance.

Subclass of fairseq's :class:`~fairseq.data.FileAudioDataset` (manifest reading, ``min_sample_size``
filtering, length-sorted ``ordered_indices``, buckets, ``batch_by_size``); it adds views, seeded augmentation
and line-parallel side labels. Used by the ``multiview_audio_pretraining`` task
(:mod:`fairseq_plugins.tasks.multiview_audio_pretraining`) of the positive-sample contrast + masked
reconstruction method (Zhang et al., Journal on Communications 2022).

Randomness. Every random choice of item ``index`` comes from :func:`~fairseq_plugins.data.augment.seeded_rng`
keyed by ``(seed, epoch, index, stream)``: stream ``v`` for view ``v`` (its crop and augmentations), one
shared stream for the crop common to shared-crop (and aligned) views, one for the collater's crop. So the same
seed and epoch give the same views in any data-loader worker, and a new epoch gives new views. The epoch lives in a
shared-memory tensor, so :meth:`set_epoch` reaches persistent data-loader workers too (fairseq keeps them
across epochs).

Views. Where each view's audio comes from (``max_sample_size`` is the crop length):

==================  ===============  ============================  ==================================================
``aligned_views``   ``shared_crop``  crop                          augmentations
==================  ===============  ============================  ==================================================
false (default)     false (default)  one independent random crop   any; views cover different, overlapping parts of
                                     per view                      the utterance
false               true             ONE random crop, shared by    any, drawn independently per view (speed, crop
                                     every view                    ... allowed): before augmentation every view is
                                                                   the same samples; after it the views need not
                                                                   line up in time
true                (implied)        ONE random crop, shared       alignment-keeping only (ValueError otherwise):
                                                                   every view has the same length and sample ``i``
                                                                   is the same instant in all views (frame-level
                                                                   objectives need this)
==================  ===============  ============================  ==================================================

The collater's crop to the batch length keeps shared-crop views together: it draws one start per utterance and
uses it for every view of that length (a view whose length an augmentation changed starts at the same relative
position). Views listed in ``unaugmented_views`` are returned unaugmented.

Batch layout (:meth:`collater`)::

    net_input.source        (V*B) x T float, VIEW-MAJOR: row v*B + b is view v of utterance b
    net_input.padding_mask  (V*B) x T bool, True = padding (always present; all False without padding)
    net_input.target_source (V*B) x T float, the un-augmented crop of each row (only with clean_target)
    id                      B long
    views                   {"num_views": V, "batch_size": B, "aligned": bool, "shared_crop": bool,
                             "layout": "view_major",
                             "lengths": V x B long (valid samples), "augmentations": V lists of B name lists}
    side_labels             {ext: [B strings]} for every side file asked for (e.g. "spk")

``source.view(V, B, T)`` gives the V x B x T view of the same tensor.
"""
import logging
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from fairseq.data import FileAudioDataset
from fairseq.data.text_compressor import TextCompressionLevel

from fairseq_plugins.data.audio import ManifestAudioDataset, normalize_waveform
from fairseq_plugins.data.augment import AugmentationChain, seeded_rng

logger = logging.getLogger(__name__)

SHARED_CROP_STREAM = 1 << 20  # stream ids after the view streams 0..V-1
COLLATE_STREAM = SHARED_CROP_STREAM + 1


class MultiviewAudioDataset(ManifestAudioDataset, FileAudioDataset):
    """N views per utterance from a fairseq manifest (see the module docstring for randomness and layout).

    Args:
        manifest_path: fairseq TSV manifest.
        sample_rate: expected sample rate (files at another rate raise, as in fairseq).
        num_views: views per utterance (V >= 1).
        augment: chain applied to each view, or None.
        aligned_views: one shared crop, alignment-keeping augmentations only (ValueError otherwise).
        shared_crop: one shared crop, any augmentations (see the module docstring's table); implied by
            ``aligned_views``.
        unaugmented_views: view indices that are not augmented (e.g. ``[0]`` for clean/augmented pairs).
        side_labels: ``{ext: lines}``, one line per manifest entry (skipped entries included).
        clean_target: also return the un-augmented crop as ``net_input.target_source`` (aligned only).
        view_augment: chains applied after ``augment``, one per view (view ``v`` gets entry ``v % len``):
            per-view conditions such as CSC's ``interferer(kind=speech)``, ``(kind=noise)``, ``(kind=both)``.
            A chain that needs the target's speaker (:attr:`AugmentationChain.needs_speaker`) gets it from
            the ``spk`` side labels (ValueError when they are not loaded).
        seed: base seed of all random choices.
        fixed_epoch: if set, views do not change with the epoch (validation sets).
        max_sample_size / min_sample_size / pad / normalize / num_buckets / shuffle /
        text_compression_level: as in :class:`~fairseq.data.FileAudioDataset`; ``normalize`` is applied to
            each view after augmentation.
        downmix: average multi-channel files (logged) instead of raising; audio is read with the shared checked
            reader :func:`fairseq_plugins.data.audio.read_audio` (errors name the manifest line and the file).
    """

    def __init__(
        self,
        manifest_path: str,
        sample_rate: int,
        num_views: int = 2,
        augment: Optional[AugmentationChain] = None,
        aligned_views: bool = False,
        shared_crop: bool = False,
        unaugmented_views: Sequence[int] = (),
        side_labels: Optional[Dict[str, List[str]]] = None,
        clean_target: bool = False,
        seed: int = 1,
        fixed_epoch: Optional[int] = None,
        max_sample_size: Optional[int] = None,
        min_sample_size: int = 0,
        pad: bool = False,
        normalize: bool = False,
        num_buckets: int = 0,
        shuffle: bool = True,
        text_compression_level: TextCompressionLevel = TextCompressionLevel.none,
        downmix: bool = False,
        view_augment: Optional[Sequence[AugmentationChain]] = None,
    ):
        super().__init__(
            manifest_path=manifest_path, sample_rate=sample_rate, max_sample_size=max_sample_size,
            min_sample_size=min_sample_size, shuffle=shuffle, pad=pad, normalize=False,
            num_buckets=num_buckets, text_compression_level=text_compression_level,
        )
        self.init_reader(manifest_path, downmix=downmix)
        if num_views < 1:
            raise ValueError(f"num_views={num_views}: need at least one view")
        bad_views = [v for v in unaugmented_views if not 0 <= int(v) < num_views]
        if bad_views:
            raise ValueError(f"unaugmented_views {bad_views} out of range for num_views={num_views}")
        if aligned_views and augment is not None and not augment.keeps_alignment:
            raise ValueError(
                f"aligned_views=true needs alignment-keeping augmentations, but {augment.non_aligned} change "
                f"timing or length: remove them or set aligned_views=false")
        if clean_target and not aligned_views:
            raise ValueError("clean_target=true needs aligned_views=true (the clean crop must line up with "
                             "every view)")
        self.num_views = int(num_views)
        self.augment = augment if augment is not None and len(augment) else None
        self.view_augment = [c if c is not None and len(c) else None for c in (view_augment or [])]
        if aligned_views:
            bad = sorted({n for c in self.view_augment if c is not None for n in c.non_aligned})
            if bad:
                raise ValueError(f"aligned_views=true needs alignment-keeping augmentations, but the per-view "
                                 f"augmentations {bad} change timing or length")
        self.aligned_views = bool(aligned_views)
        self.shared_crop = bool(shared_crop) or self.aligned_views
        self.unaugmented_views = {int(v) for v in unaugmented_views}
        self.clean_target = bool(clean_target)
        self.normalize_views = bool(normalize)
        self.seed = int(seed)
        self.fixed_epoch = fixed_epoch
        self._epoch = torch.ones(1, dtype=torch.long).share_memory_()
        self.side_labels = {}
        num_lines = len(self.sizes) + len(self.skipped_indices)
        for ext, lines in (side_labels or {}).items():
            if len(lines) != num_lines:
                raise ValueError(f"side labels {ext!r}: {len(lines)} lines, but {manifest_path} lists "
                                 f"{num_lines} files")
            self.side_labels[ext] = [s for i, s in enumerate(lines) if i not in self.skipped_indices]
        chains = [c for c in [self.augment, *self.view_augment] if c is not None]
        if any(c.needs_speaker for c in chains) and "spk" not in self.side_labels:
            raise ValueError(f"an augmentation needs the target's speaker (interferer), but no 'spk' side labels "
                             f"were loaded for {manifest_path} (task.side_labels must include 'spk' and the "
                             f"speaker file must exist)")

    # ------------------------------------------------------------------ epochs and sizes
    @property
    def epoch(self) -> int:
        return int(self.fixed_epoch) if self.fixed_epoch is not None else int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self._epoch[0] = int(epoch)

    def num_tokens(self, index: int) -> int:
        """Samples of all views together (what ``max_tokens`` budgets)."""
        return self.num_views * self.size(index)

    def num_tokens_vec(self, indices: np.ndarray) -> np.ndarray:
        sizes = self.sizes[indices]
        if not self.pad:
            sizes = np.minimum(sizes, self.max_sample_size)
        return self.num_views * sizes

    # ------------------------------------------------------------------ items
    def _crop(self, wav: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if len(wav) <= self.max_sample_size:
            return wav
        start = int(rng.integers(0, len(wav) - self.max_sample_size + 1))
        return wav[start:start + self.max_sample_size]

    def _finish(self, wav: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))
        if self.normalize_views:
            with torch.no_grad():
                x = normalize_waveform(x)
        return x

    def __getitem__(self, index: int) -> Dict:
        wav = super().__getitem__(index)["source"].numpy()
        epoch = self.epoch
        shared = self._crop(wav, seeded_rng(self.seed, epoch, index, SHARED_CROP_STREAM)) \
            if self.shared_crop or self.clean_target else None
        views, applied = [], []
        for v in range(self.num_views):
            rng = seeded_rng(self.seed, epoch, index, v)
            x = shared if self.shared_crop else self._crop(wav, rng)
            names: List[str] = []
            if v not in self.unaugmented_views:
                speaker = self.side_labels["spk"][index] if "spk" in self.side_labels else None
                chains = [self.augment, self.view_augment[v % len(self.view_augment)] if self.view_augment
                          else None]
                for chain in chains:
                    if chain is not None:
                        x, more = chain.apply(x, rng, speaker=speaker)
                        names = names + more
            views.append(self._finish(x))
            applied.append(names)
        item = {"id": index, "views": views, "augmentations": applied}
        if self.clean_target:
            item["clean"] = torch.from_numpy(np.ascontiguousarray(shared, dtype=np.float32))
        if self.side_labels:
            item["side_labels"] = {ext: labels[index] for ext, labels in self.side_labels.items()}
        return item

    # ------------------------------------------------------------------ batches
    def collater(self, samples: List[Dict]) -> Dict:
        samples = [s for s in samples if s.get("views")]
        if not samples:
            return {}
        V, B = self.num_views, len(samples)
        lengths = [len(x) for s in samples for x in s["views"]]
        target = min(max(lengths) if self.pad else min(lengths), self.max_sample_size)
        width = target
        if self.pad and getattr(self, "num_buckets", 0) > 0:
            width = max(target, max(int(self._bucketed_sizes[s["id"]]) for s in samples))
        source = torch.zeros(V * B, width)
        padding_mask = torch.ones(V * B, width, dtype=torch.bool)
        valid = torch.zeros(V, B, dtype=torch.long)
        clean = torch.zeros(B, width) if self.clean_target else None
        for b, s in enumerate(samples):
            rng = seeded_rng(self.seed, self.epoch, s["id"], COLLATE_STREAM)
            shared_start = shared_n = None
            for v, x in enumerate(s["views"]):
                n = len(x)
                if n > target:
                    if self.shared_crop:
                        if shared_start is None:
                            shared_start, shared_n = int(rng.integers(0, n - target + 1)), n
                        # same start for views of the same length, the same relative position otherwise
                        start = shared_start if n == shared_n else \
                            round(shared_start * (n - target) / (shared_n - target))
                    else:
                        start = int(rng.integers(0, n - target + 1))
                    x = x[start:start + target]
                source[v * B + b, :len(x)] = x
                padding_mask[v * B + b, :len(x)] = False
                valid[v, b] = len(x)
            if clean is not None:
                c = s["clean"]
                if len(c) > target:
                    c = c[shared_start:shared_start + target]
                clean[b, :len(c)] = c
        net_input = {"source": source, "padding_mask": padding_mask}
        if clean is not None:
            net_input["target_source"] = clean.repeat(V, 1)
        out = {
            "id": torch.LongTensor([s["id"] for s in samples]),
            "net_input": net_input,
            "views": {
                "num_views": V, "batch_size": B, "aligned": self.aligned_views, "shared_crop": self.shared_crop,
                "layout": "view_major",
                "lengths": valid,
                "augmentations": [[s["augmentations"][v] for s in samples] for v in range(V)],
            },
        }
        if self.side_labels:
            out["side_labels"] = {ext: [s["side_labels"][ext] for s in samples] for ext in self.side_labels}
        return out
