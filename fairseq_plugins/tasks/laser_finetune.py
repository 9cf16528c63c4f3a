"""Task ``laser_finetune``: self-supervised fine-tuning of a pre-trained backbone on paired views (LASER, SCORE).

LASER (Meghanani & Hain, Interspeech 2024, arXiv 2406.09153) and its predecessor SCORE (ICASSP 2024) fine-tune
a released HuBERT / WavLM checkpoint on unlabelled speech (LibriSpeech train-clean-100 in the papers): each
sample is a whole utterance and its speed + pitch perturbed copy (:mod:`fairseq_plugins.data.laser_pairs`).
Registered with the model ``laser_finetune`` and the criterion ``soft_dtw``. Defaults are the paper's HuBERT
settings; the WavLM speed factors are in examples/laser/config/laser_wavlm_base.yaml.
"""
import logging
import os
from dataclasses import dataclass, field
from typing import List

from omegaconf import MISSING

from fairseq_plugins.compat import register
from fairseq_plugins.data.laser_pairs import LaserPairDataset
from fairseq_plugins.tasks.base import PluginTaskConfig, UnlabelledAudioTask

logger = logging.getLogger(__name__)


@dataclass
class LaserFinetuneConfig(PluginTaskConfig):
    data: str = field(default=MISSING, metadata={"help": "folder with {split}.tsv fairseq audio manifests"})
    sample_rate: int = field(default=16000, metadata={"help": "audio sample rate; files at another rate fail"})
    speed_factors: List[float] = field(
        default_factory=lambda: [0.9, 1.0, 1.1],
        metadata={"help": "speed perturbation factors for view 2, drawn uniformly (paper: HuBERT 0.9/1.0/1.1; "
                          "WavLM 0.8/0.85/0.9/1.0/1.1/1.15/1.2)"},
    )
    pitch_semitones: List[float] = field(
        default_factory=lambda: [-2.0, 2.0],
        metadata={"help": "pitch shifts (semitones) for view 2 after the speed change, drawn uniformly "
                          "(paper: -2 or +2, p=1/2 each)"},
    )
    swap_prob: float = field(default=0.5, metadata={"help": "probability that the pair is returned swapped"})
    min_sample_size: int = field(
        default=8000,
        metadata={"help": "utterances shorter than this many samples after the strongest speed-up are skipped "
                          "(logged); must exceed the encoder's receptive field (400 samples for HuBERT)"},
    )
    max_sample_size: int = field(
        default=16000 * 35,
        metadata={"help": "utterances longer than this are randomly cropped to it (LibriSpeech max is ~35 s)"},
    )
    seed: int = field(default=1, metadata={"help": "seed of the view augmentations (with epoch and index)"})


@register("task", "laser_finetune", dataclass=LaserFinetuneConfig)
class LaserFinetuneTask(UnlabelledAudioTask):
    cfg: LaserFinetuneConfig

    @classmethod
    def setup_task(cls, cfg: LaserFinetuneConfig, **kwargs) -> "LaserFinetuneTask":
        if cfg.min_sample_size < 400:
            raise ValueError(
                f"task.min_sample_size={cfg.min_sample_size}: must be at least the encoder's receptive field "
                f"(400 samples) so that every view yields a frame")
        cls.check_setup(cfg, [("task.data", cfg.data)], **kwargs)
        return cls(cfg)

    def build_model(self, cfg, from_checkpoint: bool = False):
        # the backbone file is read only on the first build (then its architecture lives in backbone_spec)
        if not from_checkpoint and getattr(cfg, "backbone_spec", None) is None:
            self.check_paths([("model.checkpoint", getattr(cfg, "checkpoint", None))], kind="file")
        return super().build_model(cfg, from_checkpoint)

    def load_dataset(self, split: str, **kwargs) -> None:
        manifest = os.path.join(self.cfg.data, f"{split}.tsv")
        if not os.path.isfile(manifest):
            raise FileNotFoundError(f"task.data={self.cfg.data}: no manifest {manifest}")
        self.datasets[split] = LaserPairDataset(
            manifest, self.cfg.sample_rate, list(self.cfg.speed_factors), list(self.cfg.pitch_semitones),
            min_sample_size=self.cfg.min_sample_size, max_sample_size=self.cfg.max_sample_size,
            seed=self.cfg.seed, swap_prob=self.cfg.swap_prob, downmix=self.cfg.downmix_stereo,
        )
