"""What the plugin's three tasks share: config fields, the training-split test, and the path checks at setup.

:class:`PluginTaskConfig` adds to every task config ``downmix_stereo`` (the audio reader's one policy choice,
off by default), ``train_subset`` (fairseq's ``dataset.train_subset``) and ``checkpoint_save_dir`` (mirrors
``checkpoint.save_dir``, read only to warn). :class:`PluginTaskMixin` gives :meth:`~PluginTaskMixin.is_train_split`
(a split is a training split when it is one of the comma-separated ``dataset.train_subset`` names, e.g.
``train_960``; training splits get random crops, shuffling and fresh augmentations every epoch) and
:meth:`~PluginTaskMixin.check_paths`, called by every ``setup_task``: ``fairseq-hydra-train`` changes the working
directory to ``hydra.run.dir`` before the task is built, so a relative ``task.data`` would be looked up there;
relative or missing paths therefore stop the run at setup with a message that says what to pass instead, and a
relative ``checkpoint.save_dir`` (which silently lands under ``hydra.run.dir``) is warned about. Tasks rebuilt
from a checkpoint (``from_checkpoint=True``) skip the checks: the training data need not exist where the
checkpoint is used.
"""
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Tuple

from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import FairseqTask
from omegaconf import II, DictConfig, OmegaConf

logger = logging.getLogger(__name__)


@dataclass
class PluginTaskConfig(FairseqDataclass):
    downmix_stereo: bool = field(
        default=False,
        metadata={"help": "average the channels of multi-channel files (logged once per folder); off: such "
                          "files stop the run naming the file"})
    train_subset: str = II("dataset.train_subset")
    checkpoint_save_dir: Optional[str] = field(
        default=II("checkpoint.save_dir"),
        metadata={"help": "mirrors checkpoint.save_dir (set that one); read only to warn when it is relative"})


def resolved(cfg, key: str) -> Optional[object]:
    """``cfg.key``, or None when it is an interpolation that cannot be resolved (a task config built outside a
    full fairseq config, e.g. in a test or a notebook)."""
    if isinstance(cfg, DictConfig):
        value = OmegaConf.select(cfg, key, throw_on_resolution_failure=False)
    else:
        value = getattr(cfg, key, None)
    if isinstance(value, str) and value.startswith("${"):
        return None
    return value


def _original_cwd() -> Optional[str]:
    """The directory fairseq-hydra-train was started from (None outside a Hydra run)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    from hydra.utils import get_original_cwd

    return get_original_cwd()


class PluginTaskMixin:
    """Shared behaviour of the plugin's tasks (see the module docstring). Needs ``self.cfg``."""

    def train_splits(self) -> List[str]:
        """The names of ``dataset.train_subset`` (comma-separated there), e.g. ``["train_960"]``."""
        subsets = resolved(self.cfg, "train_subset")
        if subsets is None:
            raise ValueError(
                f"{type(self).__name__}: task.train_subset is unresolved (it mirrors dataset.train_subset); "
                f"when building the task outside fairseq-hydra-train pass train_subset=<your training split>")
        return [s.strip() for s in str(subsets).split(",") if s.strip()]

    def is_train_split(self, split: str) -> bool:
        """True for the splits of ``dataset.train_subset`` (random crops, shuffling, new views per epoch)."""
        return split in self.train_splits()

    @staticmethod
    def check_paths(paths: Iterable[Tuple[str, Optional[str]]], kind: str = "dir") -> None:
        """``paths``: ``(config key, value)`` pairs; each set value must be absolute and exist (a directory
        when ``kind == "dir"``, a file when ``"file"``)."""
        for key, value in paths:
            if value is None or value == "":
                continue
            value = str(value)
            if not os.path.isabs(value):
                cwd = _original_cwd()
                hint = ""
                if cwd is not None:
                    hint = f"; from where you started the command that is {key}={os.path.join(cwd, value)}"
                raise ValueError(
                    f"{key}={value} is a relative path: fairseq-hydra-train changes the working directory to "
                    f"hydra.run.dir ({os.getcwd()}) before the task is built, so pass an absolute path{hint}")
            exists = os.path.isdir(value) if kind == "dir" else os.path.isfile(value)
            if not exists:
                what = "directory" if kind == "dir" else "file"
                raise FileNotFoundError(f"{key}={value}: no such {what}")

    @classmethod
    def check_setup(cls, cfg, dirs: List[Tuple[str, Optional[str]]], files: List[Tuple[str, Optional[str]]] = (),
                    **kwargs) -> None:
        """The checks of ``setup_task`` (skipped when fairseq rebuilds the task from a checkpoint)."""
        if kwargs.get("from_checkpoint"):
            return
        cls.check_paths(dirs, "dir")
        cls.check_paths(files, "file")
        save_dir = resolved(cfg, "checkpoint_save_dir")
        if save_dir and not os.path.isabs(str(save_dir)):
            logger.warning("checkpoint.save_dir=%s is relative: checkpoints go to %s (under hydra.run.dir); pass "
                           "an absolute checkpoint.save_dir to put them elsewhere", save_dir,
                           os.path.abspath(str(save_dir)))


class UnlabelledAudioTask(PluginTaskMixin, FairseqTask):
    """A FairseqTask without source/target dictionaries whose datasets filter lengths themselves."""

    @property
    def source_dictionary(self):
        return None

    @property
    def target_dictionary(self):
        return None

    def max_positions(self) -> Tuple[int, int]:
        return (sys.maxsize, sys.maxsize)
