"""Task ``slicer_pretraining``: random 0.95 s crops of speech + non-speech manifests for SLICER.

SLICER (Seth, Ghosh, Umesh, Manocha; ICASSP 2023, arXiv 2211.01519) pre-trains on speech and non-speech audio
together. This task reads ``{data}/{split}.tsv`` plus ``{d}/{split}.tsv`` for every folder ``d`` of
``extra_data`` (e.g. the mini corpus and the procedural clips of ``manifests/clips.py``), and returns one random
crop of ``crop_seconds`` per item (zero-padded when the file is shorter), seeded by (seed, epoch, index); the
model ``slicer`` makes the two augmented log-mel views. Validation crops are fixed.

k-mix centroids (the documented step): at :meth:`SlicerPretrainingTask.begin_epoch`, when the model asks for
them (``model.mix_mode`` kmix or mixup_kmix, none fitted yet), k-means with ``model.kmix_clusters`` clusters is
fitted on the time-averaged raw log-mels of ``kmix_fraction`` of the training items (at least
``kmix_min_items``; seeded, so every worker fits the same ones) and stored in the model's ``kmix_centroids``
buffer. They are therefore in every checkpoint: a resumed run loads them and never refits. Registers the task
``slicer_pretraining``.
"""
import logging
import os
import time
from dataclasses import dataclass, field
from typing import List, Tuple

import numpy as np
import torch
from fairseq.data import FairseqDataset
from omegaconf import MISSING

from fairseq_plugins.compat import register
from fairseq_plugins.data.audio import read_audio
from fairseq_plugins.data.manifest_io import read_manifest_entries
from fairseq_plugins.data.spec_augment import assign_clusters, fit_kmix_centroids
from fairseq_plugins.tasks.base import PluginTaskConfig, UnlabelledAudioTask

logger = logging.getLogger(__name__)

TASK_NAME = "slicer_pretraining"


@dataclass
class SlicerPretrainingConfig(PluginTaskConfig):
    data: str = field(default=MISSING, metadata={"help": "folder with {split}.tsv fairseq audio manifests"})
    extra_data: List[str] = field(
        default_factory=list,
        metadata={"help": "more folders with {split}.tsv manifests read together with `data` (e.g. non-speech "
                          "clips); absolute paths; a folder without the split is skipped with a warning"})
    sample_rate: int = field(default=16000, metadata={"help": "audio sample rate; other rates fail"})
    crop_seconds: float = field(default=0.95, metadata={"help": "random crop length (paper 0.95 s)"})
    seed: int = field(default=1, metadata={"help": "seed of the crops (with epoch and index) and of k-means"})
    kmix_fraction: float = field(
        default=0.05, metadata={"help": "fraction of the training items whose time-averaged log-mels fit k-means"})
    kmix_min_items: int = field(default=64, metadata={"help": "fit k-means on at least this many items"})
    short_clip_padding: str = field(
        default="center", metadata={"help": "clips shorter than the crop are zero-padded: center (the SLICER "
                                             "authors' extract_window: half the padding on each side) or end"})


def read_manifest(path: str) -> Tuple[List[str], List[int], List[Tuple[str, int]]]:
    """Absolute paths, sample counts and ``(manifest, line)`` origins of a fairseq manifest's entries."""
    root, rows = read_manifest_entries(path)
    return ([os.path.join(root, rel) for rel, _, _ in rows], [n for _, n, _ in rows],
            [(os.path.abspath(path), line) for _, _, line in rows])


class CropDataset(FairseqDataset):
    """Fixed-length crops of the files of one or more manifests: ``{"id", "source": S}`` items."""

    short_clip_padding = "center"  # or "end"; set from task.short_clip_padding

    def __init__(self, manifests: List[str], crop: int, sample_rate: int, seed: int, random_crop: bool,
                 downmix: bool = False):
        self.files: List[str] = []
        self.lengths: List[int] = []
        self.origins: List[Tuple[str, int]] = []
        for m in manifests:
            files, sizes, origins = read_manifest(m)
            self.files += files
            self.lengths += sizes
            self.origins += origins
        self.downmix = bool(downmix)
        if not self.files:
            raise ValueError(f"no audio in {manifests}")
        self.crop, self.sample_rate, self.seed, self.random_crop = crop, sample_rate, seed, random_crop
        self.epoch = 1

    @property
    def can_reuse_epoch_itr_across_epochs(self) -> bool:
        return False  # batches depend on the epoch (ordered_indices): fairseq must rebuild them each epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int, epoch: int) -> torch.Tensor:
        manifest, line = self.origins[index]
        wav = read_audio(self.files[index], self.sample_rate, expected_samples=self.lengths[index],
                         manifest=manifest, line=line, downmix=self.downmix)
        rng = np.random.default_rng([self.seed, epoch if self.random_crop else 0, index])
        if wav.shape[0] > self.crop:
            start = int(rng.integers(0, wav.shape[0] - self.crop + 1))
            wav = wav[start:start + self.crop]
        elif wav.shape[0] < self.crop:
            missing = self.crop - wav.shape[0]
            left = missing // 2 if self.short_clip_padding == "center" else 0
            wav = np.pad(wav, (left, missing - left))
        return torch.from_numpy(np.ascontiguousarray(wav))

    def __getitem__(self, index: int):
        return {"id": index, "source": self.load(index, self.epoch)}

    def collater(self, samples):
        if not samples:
            return {}
        return {"id": torch.LongTensor([s["id"] for s in samples]),
                "net_input": {"source": torch.stack([s["source"] for s in samples])}}

    def num_tokens(self, index: int) -> int:
        return self.crop

    def size(self, index: int) -> int:
        return self.crop

    def ordered_indices(self):
        """Training: a permutation seeded by (seed, epoch), so batches differ between epochs; else in order."""
        if not self.random_crop:
            return np.arange(len(self))
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self))


@register("task", TASK_NAME, dataclass=SlicerPretrainingConfig)
class SlicerPretrainingTask(UnlabelledAudioTask):
    cfg: SlicerPretrainingConfig

    @classmethod
    def setup_task(cls, cfg: SlicerPretrainingConfig, **kwargs) -> "SlicerPretrainingTask":
        cls.check_setup(cfg, [("task.data", cfg.data)] + [("task.extra_data", d) for d in cfg.extra_data], **kwargs)
        return cls(cfg)

    def manifests(self, split: str) -> List[str]:
        found = []
        for d in [self.cfg.data, *self.cfg.extra_data]:
            path = os.path.join(d, f"{split}.tsv")
            if os.path.isfile(path):
                found.append(path)
            elif d == self.cfg.data:
                raise FileNotFoundError(f"task.data={d}: no manifest {path}")
            else:
                logger.warning("task.extra_data: %s has no %s.tsv; skipped for this split", d, split)
        return found

    def load_dataset(self, split: str, **kwargs) -> None:
        crop = int(round(self.cfg.crop_seconds * self.cfg.sample_rate))
        self.datasets[split] = CropDataset(self.manifests(split), crop, self.cfg.sample_rate, self.cfg.seed,
                                           random_crop=self.is_train_split(split),
                                           downmix=self.cfg.downmix_stereo)
        if self.cfg.short_clip_padding not in ("center", "end"):
            raise ValueError(f"task.short_clip_padding={self.cfg.short_clip_padding!r}: expected center or end")
        self.datasets[split].short_clip_padding = self.cfg.short_clip_padding
        logger.info("%s: %d clips from %s", split, len(self.datasets[split]), self.manifests(split))

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False, **kwargs):
        # fairseq passes ignore_grad=True for the placeholder batch of a worker that has run out of data under
        # DDP: the model must still join the collectives but add nothing to its queue, bank or statistics
        if ignore_grad:
            sample = dict(sample, net_input=dict(sample["net_input"], dummy_batch=True))
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad, **kwargs)

    def begin_epoch(self, epoch: int, model) -> None:
        if getattr(model, "needs_kmix_centroids", lambda: False)():
            self.fit_kmix(model)

    @torch.no_grad()
    def fit_kmix(self, model) -> np.ndarray:
        """Fit k-mix's k-means on time-averaged raw log-mels of a seeded sample of the (first) training split
        of ``dataset.train_subset``."""
        t0 = time.time()
        split = self.train_splits()[0]
        if split not in self.datasets:
            self.load_dataset(split)
        ds = self.datasets[split]
        n = min(len(ds), max(self.cfg.kmix_min_items, int(round(self.cfg.kmix_fraction * len(ds)))))
        idx = np.sort(np.random.default_rng(self.cfg.seed).choice(len(ds), size=n, replace=False))
        device = next(model.parameters()).device
        feats = []
        for i in range(0, n, 64):
            wav = torch.stack([ds.load(int(j), 0) for j in idx[i:i + 64]]).to(device)
            feats.append(model.frontend(wav).mean(dim=2).cpu())
        feats = torch.cat(feats)
        centroids = fit_kmix_centroids(feats.numpy(), model.cfg.kmix_clusters, self.cfg.seed, model.cfg.kmix_metric)
        model.set_kmix_centroids(torch.from_numpy(centroids).to(device))
        sizes = np.bincount(assign_clusters(feats, torch.from_numpy(centroids), model.cfg.kmix_metric).numpy(),
                            minlength=centroids.shape[0])
        logger.info("k-mix: fitted %d centroids (%s k-means) on %d of %d training items in %.1f s; cluster sizes %s",
                    centroids.shape[0], model.cfg.kmix_metric, n, len(ds), time.time() - t0, sizes.tolist())
        return centroids
