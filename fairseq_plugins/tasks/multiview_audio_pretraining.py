"""The ``multiview_audio_pretraining`` task: N augmented views of every utterance of a fairseq manifest.

Used by the positive-sample contrast + masked reconstruction method (Zhang, Liu, Niu, Chen, Qu; Journal on
Communications 2022, 43(7):163-171; model ``simsiam_recon``); SLICER has its own task (``slicer_pretraining``).
It extends fairseq's ``audio_pretraining`` (same manifests ``{data}/{split}.tsv``,
random cropping to ``max_sample_size``, length-sorted ``batch_by_size`` batching, ``enable_padding``,
``num_batch_buckets``) with a seeded augmentation chain declared in the config
(:mod:`fairseq_plugins.data.augment`), ``num_views`` views per utterance (independent crops per view, one
shared crop with ``shared_crop``, or time-aligned views with ``aligned_views``), and line-parallel side labels
(``{data}/{split}.{ext}``, e.g. speaker ids) passed through to the criterion. The batch layout is documented in
:mod:`fairseq_plugins.data.multiview_dataset` (``source`` is (V*B) x T, view-major).

Registers the task ``multiview_audio_pretraining`` with config :class:`MultiviewAudioPretrainingConfig`.
"""
import logging
import os
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

from fairseq.data import SubsampleDataset
from fairseq.data.text_compressor import TextCompressionLevel
from fairseq.tasks.audio_pretraining import AudioPretrainingConfig, AudioPretrainingTask

from fairseq_plugins.compat import register
from fairseq_plugins.data.augment import AugmentationChain
from fairseq_plugins.data.multiview_dataset import MultiviewAudioDataset
from fairseq_plugins.tasks.base import PluginTaskConfig, PluginTaskMixin

logger = logging.getLogger(__name__)

TASK_NAME = "multiview_audio_pretraining"

DEFAULT_AUGMENTATIONS = [
    "noise(snr=5:20,p=0.8)",
    "reverb(rt60=0.2:0.8,drr=0:10,p=0.3)",
    "pitch(semitones=-2:2,p=0.5)",
    "bandreject(freq=200:4000,octaves=0.25:1,p=0.3)",
    "timedrop(count=1:4,width_ms=20:80,p=0.3)",
    "gain(db=-6:6,p=0.5)",
    "crop(fraction=0.6:1,min_seconds=0.5,p=0.5)",
]


@dataclass
class MultiviewAudioPretrainingConfig(AudioPretrainingConfig, PluginTaskConfig):
    num_views: int = field(default=2, metadata={"help": "augmented views per utterance (V >= 1)"})
    augmentations: List[str] = field(
        default_factory=lambda: list(DEFAULT_AUGMENTATIONS),
        metadata={"help": "augmentation specs applied in order to every view, e.g. "
                          "['noise(snr=5:20,p=0.8)', 'pitch(semitones=-2:2)']; names: noise, reverb, pitch, "
                          "speed, bandreject, timedrop, gain, crop (see fairseq_plugins/data/augment.py)"},
    )
    view_augmentations: List[str] = field(
        default_factory=list,
        metadata={"help": "per-view conditions applied after 'augmentations': view v gets entry v % len, e.g. "
                          "CSC's ['interferer(kind=speech)', 'interferer(kind=noise)', 'interferer(kind=both)'] "
                          "(interfering speech from another speaker of the training manifest, whose .spk file is "
                          "required, as is {split}.spk, passed as side label 'spk'); empty: none"},
    )
    aligned_views: bool = field(
        default=False,
        metadata={"help": "all views share one crop and only alignment-keeping augmentations are allowed "
                          "(an error names the others); needed by frame-level objectives"},
    )
    shared_crop: bool = field(
        default=False,
        metadata={"help": "all views come from ONE random crop of the utterance, each then augmented on its "
                          "own with any augmentation (timing-changing ones allowed, so views need not line up); "
                          "false: each view gets its own crop; implied by aligned_views (table in "
                          "fairseq_plugins/data/multiview_dataset.py)"},
    )
    unaugmented_views: List[int] = field(
        default_factory=list, metadata={"help": "0-based views returned without augmentation, e.g. [0]"})
    noise_manifest: Optional[str] = field(
        default=None,
        metadata={"help": "absolute path of a noise manifest (fairseq TSV) for noise(...); procedural noise "
                          "(fairseq_plugins/data/noise.py) when unset"},
    )
    rir_manifest: Optional[str] = field(
        default=None,
        metadata={"help": "absolute path of a room-impulse-response manifest for reverb(...); synthetic RIRs "
                          "when unset"},
    )
    side_labels: List[str] = field(
        default_factory=list,
        metadata={"help": "extensions of line-parallel side files {data}/{split}.{ext} passed through as "
                          "sample['side_labels'][ext] (e.g. ['spk'])"},
    )
    clean_target: bool = field(
        default=False,
        metadata={"help": "also return the un-augmented crop as net_input.target_source (needs "
                          "aligned_views); models may compute reconstruction targets from it"},
    )
    augment_valid: bool = field(
        default=True,
        metadata={"help": "augment non-training splits too (with views fixed across epochs)"},
    )


@register("task", TASK_NAME, dataclass=MultiviewAudioPretrainingConfig)
class MultiviewAudioPretrainingTask(PluginTaskMixin, AudioPretrainingTask):
    """See the module docstring. Unsupported ``audio_pretraining`` options raise at setup."""

    cfg: MultiviewAudioPretrainingConfig

    @classmethod
    def setup_task(cls, cfg: MultiviewAudioPretrainingConfig, **kwargs):
        unsupported = {
            "binarized_dataset": bool(cfg.binarized_dataset),
            "multi_corpus_keys": cfg.multi_corpus_keys is not None,
            "precompute_mask_config": cfg.precompute_mask_config is not None,
            "labels": cfg.labels is not None,
        }
        bad = [k for k, on in unsupported.items() if on]
        if bad:
            raise ValueError(f"{TASK_NAME} does not support {', '.join(bad)} (use side_labels for "
                             f"per-utterance labels)")
        for name in ("augmentations", "view_augmentations"):
            chain = AugmentationChain.from_specs(getattr(cfg, name), cfg.sample_rate)  # validates the specs
            if cfg.aligned_views and not chain.keeps_alignment:
                raise ValueError(
                    f"task.aligned_views=true needs alignment-keeping augmentations, but {chain.non_aligned} "
                    f"change timing or length: remove them from task.{name} or set task.aligned_views=false")
        cls.check_setup(cfg, [("task.data", cfg.data)],
                        [("task.noise_manifest", cfg.noise_manifest), ("task.rir_manifest", cfg.rir_manifest)],
                        **kwargs)
        return cls(cfg)

    def build_augmentation(self, speech_manifest: Optional[str] = None) -> AugmentationChain:
        """The configured chain, with the noise/RIR manifests loaded (and ``speech_manifest``, the training
        manifest, for ``interferer``)."""
        return AugmentationChain.from_specs(
            self.cfg.augmentations, self.cfg.sample_rate, noise_manifest=self.cfg.noise_manifest,
            rir_manifest=self.cfg.rir_manifest, speech_manifest=speech_manifest)

    def build_view_augmentations(self, speech_manifest: str) -> List[AugmentationChain]:
        """One chain per entry of ``view_augmentations`` (per-view conditions)."""
        return [AugmentationChain.from_specs([spec], self.cfg.sample_rate, noise_manifest=self.cfg.noise_manifest,
                                             rir_manifest=self.cfg.rir_manifest, speech_manifest=speech_manifest)
                for spec in self.cfg.view_augmentations]

    def load_side_labels(self, split: str, extra: Sequence[str] = ()) -> dict:
        out = {}
        for ext in list(self.cfg.side_labels) + [e for e in extra if e not in self.cfg.side_labels]:
            path = os.path.join(self.cfg.data, f"{split}.{ext}")
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"side labels {ext!r} asked for (task.side_labels) but {path} is missing")
            with open(path) as f:
                out[ext] = f.read().split("\n")
            if out[ext] and out[ext][-1] == "":
                out[ext].pop()
        return out

    def load_dataset(self, split: str, task_cfg=None, **kwargs):
        cfg = self.cfg
        train = self.is_train_split(split)
        manifest = os.path.join(cfg.data, f"{split}.tsv")
        # interfering speech (interferer) comes from the training manifest for every split: a validation set
        # may hold a single speaker
        speech = os.path.join(cfg.data, f"{cfg.train_subset.split(',')[0]}.tsv")
        augment = self.build_augmentation(speech) if (train or cfg.augment_valid) else None
        view_augment = self.build_view_augmentations(speech) if (train or cfg.augment_valid) else []
        needs_speaker = any(c.needs_speaker for c in [augment, *view_augment] if c is not None)
        dataset = MultiviewAudioDataset(
            manifest_path=manifest,
            sample_rate=cfg.sample_rate,
            num_views=cfg.num_views,
            augment=augment,
            aligned_views=cfg.aligned_views,
            shared_crop=cfg.shared_crop,
            unaugmented_views=list(cfg.unaugmented_views),
            side_labels=self.load_side_labels(split, extra=["spk"] if needs_speaker else []),
            view_augment=view_augment,
            clean_target=cfg.clean_target,
            seed=cfg.seed,
            fixed_epoch=None if train else 1,
            max_sample_size=cfg.max_sample_size,
            min_sample_size=cfg.min_sample_size or 0,
            pad=cfg.enable_padding,
            normalize=cfg.normalize,
            downmix=cfg.downmix_stereo,
            num_buckets=cfg.num_batch_buckets,
            text_compression_level=getattr(TextCompressionLevel, str(cfg.text_compression_level)),
        )
        if cfg.subsample < 1:
            dataset = SubsampleDataset(dataset, cfg.subsample, shuffle=True, seed=cfg.seed)
        self.datasets[split] = dataset
        logger.info("%s: %d utterances, %d views, augmentations %s%s", split, len(dataset), cfg.num_views,
                    augment.specs() if augment is not None else "none",
                    " (aligned views)" if cfg.aligned_views else " (one shared crop)" if cfg.shared_crop
                    else " (independent crops)")
