"""The workarounds for fairseq / torch quirks that wrap fairseq or torch themselves, each with its reason; the
ones that live next to the code they serve are listed at the end ("Elsewhere"), each with a pointer.

The plugin targets fairseq-fixed 0.12.3.1 (fairseq main of 2024-01 with the Python 3.11 fix) and torch >= 2.4
(the first release with ``torch.serialization.add_safe_globals``; torch >= 2.6 loads with ``weights_only=True``
by default).
Nothing here changes behaviour silently: each function says what it patches, and the package ``__init__``
applies them once at import.

1. Safe checkpoint loading. torch >= 2.6 loads with ``weights_only=True`` by default, and fairseq's loader
   does not pass ``weights_only``; fairseq checkpoints pickle a few fairseq/python classes (HuBERT's
   ``task_state`` holds ``fairseq.data.Dictionary`` objects, pre-hydra checkpoints hold ``argparse.Namespace``).
   We allow-list exactly those classes with
   ``torch.serialization.add_safe_globals`` so fairseq's own loaders work while a crafted pickle that names any
   other global (``os.system`` ...) is still refused. We never turn ``weights_only`` off: a user who trusts a
   file opts in with ``load_checkpoint_state(path, trust=True)`` or torch's own switch
   ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``.
2. Registry clashes. When a name is taken, fairseq's ``register_model`` / ``register_task`` silently keep the
   existing class and *return it*, so ``@register_model(name)`` rebinds the plugin's class name to the other
   package's class (a check placed after the class statement then compares that class with itself);
   ``register_criterion`` raises a ValueError that does not say who holds the name (fairseq main already has
   an unrelated ``laser`` task). Every plugin component registers through :func:`register`, which checks the
   registry before and after and raises :class:`RegistryClashError` naming both classes.
3. torchaudio. The PyPI torchaudio for torch >= 2.11 is CUDA-only and raises ``OSError`` on import next to
   CPU torch. The plugin never imports it; :func:`optional_torchaudio` is the one guarded import for users
   who have a working copy.
4. Checkpoint writing and resuming (:func:`install_checkpoint_guards`, last section of this file). fairseq
   saves the first checkpoint file atomically but copies it onto ``checkpoint_last.pt`` non-atomically, so a
   kill during the copy truncates it; :class:`AtomicCopyPathManager` copies to a temporary name and renames.
   A broken file to resume from raises :class:`BrokenCheckpointError` naming it, listing the intact
   checkpoints with their update numbers and the ``checkpoint.restore_file=...`` override to resume.

Elsewhere (fairseq behaviours the plugin works around where it uses them):

- fairseq imports a user dir's ``tasks/`` and ``models/`` but not ``criterions/``: the package ``__init__``
  imports all three.
- fairseq main's ``hubert_ctc`` reads ``cfg.autoregressive``, which ``HubertCtcConfig`` lacks:
  ``models/hubert_ctc_compat.py`` registers the same model with the field added.
- ``HubertModel.build_model`` hard-codes ``HubertModel(...)``: subclasses override ``build_model``
  (``models/wavlm.py``, ``models/simsiam_recon.py``).
- ``copy.deepcopy`` fails on fairseq's weight-normed positional convolution: the LASER frozen reference is
  rebuilt instead of copied (``models/laser_finetune.py``, ``frozen_reference``).
- fp16/bf16 training casts the whole model (``model.half()``): ``models/slicer.py`` (``_apply``) and
  ``models/simsiam_recon.py`` (through ``modules/precision.py``) keep chosen tensors (log-mel front ends,
  statistics, queue, teacher) in their precision.
- Under DDP a worker that has run out of data trains on a placeholder copy of its first batch with
  ``ignore_grad=True``: SLICER adds nothing from it to its queue, bank or normaliser
  (``tasks/slicer_pretraining.py`` ``train_step``, ``models/slicer.py``).
- fairseq divides gradients by ``sample_size``: ``criterions/slicer.py`` returns the batch mean times the batch
  size.
- fairseq's ``compute_mask_indices`` draws from numpy's global generator (seeded once, identical on every rank,
  restarted on resume): ``modules/span_mask.py`` keys masks by (seed, update, rank, micro-batch).
- Hydra changes the working directory before the task is built: ``tasks/base.py`` (``check_paths``) refuses
  relative data paths; Hydra composes the YAML before the user dir is imported, so every example YAML names
  ``task._name``, ``model._name`` and ``criterion._name``; ``hydra_train.py`` (``fairseq-plugins-train``)
  passes ``common.user_dir`` so it cannot be forgotten.
- Loading a checkpoint does not import the user dir: ``evaluate/upstream.py`` and ``inspect_checkpoint.py``
  call ``fairseq.utils.import_user_module`` first.
- Importing fairseq configures the root logger at DEBUG (numba's JIT then logs its bytecode, hundreds of lines):
  every command-line tool of the package calls :func:`cli_logging`, ``data/augment.py`` quiets
  numba for training.
- fairseq and the WavLM authors ``eval()`` the ``conv_feature_layers`` string of a checkpoint:
  ``modules/wavlm.py`` (``parse_conv_feature_layers``) parses it without eval (a release file is untrusted).
- Config-level: fairseq's CTC channel masking raises "this should never happens" when a batch draws no span
  (``examples/simsiam_recon/config/ctc_tiny.yaml``, ``mask_channel_length``); the legacy ``sgd`` optimizer reads
  ``lr`` from its own section (``examples/slicer/config/*.yaml``).
- Packaging: fairseq does not declare ``editdistance`` (CTC validation needs it: the ``eval`` extra of
  setup.py); fairseq-fixed pulls the CUDA-only torchaudio, which ``scripts/setup_venv.sh`` removes again.
"""
import argparse
import logging
import os
import pickle
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

logger = logging.getLogger(__name__)

CLI_LOG_FORMAT = "%(asctime)s | %(levelname)s | %(name)s | %(message)s"  # fairseq's own


def cli_logging(level: int = logging.INFO, verbose: bool = False) -> None:
    """The one logging set-up of the package's command-line tools: ``level`` (DEBUG with ``verbose``) on stderr
    in fairseq's format. Importing fairseq installed a plain stream handler on the root logger at DEBUG (so a
    ``basicConfig`` would do nothing); this replaces every plain ``StreamHandler`` of the root (handlers of other
    kinds, e.g. pytest's capture, stay) and keeps numba's and matplotlib's chatter at WARNING."""
    root = logging.getLogger()
    for h in [h for h in root.handlers if type(h) is logging.StreamHandler]:
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(CLI_LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else level)
    for noisy in ("numba", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


TRUST_HINT = (
    "If you trust this file and its origin, load it with "
    "fairseq_plugins.compat.load_checkpoint_state(path, trust=True), or set TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 "
    "for fairseq's own loaders. Untrusted pickles can run arbitrary code."
)


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint references a Python global that is not on the fairseq allow-list."""


def fairseq_safe_globals() -> List[Any]:
    """The classes that fairseq checkpoints legitimately pickle beyond torch's default allow-list.

    Measured on checkpoints written by ``fairseq-hydra-train`` (HuBERT pre-training, wav2vec2/HuBERT CTC):
    their pickles name ``torch._utils._rebuild_tensor_v2``, storages and ``collections.OrderedDict`` (all on
    torch's default list) plus

    - ``fairseq.data.dictionary.Dictionary``: HuBERT / CTC ``task_state`` dictionaries;
    - ``argparse.Namespace``: the ``args`` entry of checkpoints written before fairseq's hydra migration
      (e.g. the released wav2vec 2.0 checkpoints).

    Training metrics are stored as plain state dicts, not meter objects, so no meter class is needed.
    """
    from fairseq.data.dictionary import Dictionary

    return [Dictionary, argparse.Namespace]


_SAFE_GLOBALS_INSTALLED = False


def install_safe_globals() -> None:
    """Allow-list the fairseq checkpoint classes for ``torch.load(weights_only=True)`` (idempotent)."""
    global _SAFE_GLOBALS_INSTALLED
    if _SAFE_GLOBALS_INSTALLED:
        return
    if not hasattr(torch.serialization, "add_safe_globals"):
        raise ImportError(
            f"fairseq_plugins needs torch >= 2.4 (torch.serialization.add_safe_globals, for safe checkpoint "
            f"loading); this is torch {torch.__version__}"
        )
    torch.serialization.add_safe_globals(fairseq_safe_globals())
    _SAFE_GLOBALS_INSTALLED = True


def load_checkpoint_state(path: str, trust: bool = False, map_location: str = "cpu") -> Dict[str, Any]:
    """Load a checkpoint file safely.

    With ``trust=False`` (the default) the file is unpickled with ``weights_only=True`` and only the classes of
    :func:`fairseq_safe_globals` may appear; anything else raises :class:`UnsafeCheckpointError` naming the
    file and the offending global, and nothing in the file is executed. ``trust=True`` is the explicit opt-in
    for files the user vouches for.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if trust:
        logger.warning("loading %s with weights_only=False because trust=True was passed", path)
        return torch.load(path, map_location=map_location, weights_only=False)
    install_safe_globals()
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it is not a plain fairseq/WavLM checkpoint. torch's safe unpickler "
            f"reported: {first_line(str(e))} {TRUST_HINT}"
        ) from e


def first_line(msg: str) -> str:
    """The informative part of torch's long weights_only error message."""
    for line in msg.splitlines():  # "Unsupported global: GLOBAL x.y ..." or "... unsupported GLOBAL os.system ..."
        if "unsupported" in line.lower() and ("global" in line.lower() or "operand" in line.lower()):
            return line.strip()
    return msg.splitlines()[0].strip() if msg else msg


class RegistryClashError(RuntimeError):
    """A fairseq registry name the plugin needs is already held by another class."""


def _fairseq_registry(kind: str) -> Tuple[Dict[str, Any], Callable]:
    """fairseq's registry dict and register function for ``kind`` (model, task or criterion)."""
    if kind == "model":
        from fairseq.models import MODEL_REGISTRY, register_model

        return MODEL_REGISTRY, register_model
    if kind == "task":
        from fairseq.tasks import TASK_REGISTRY, register_task

        return TASK_REGISTRY, register_task
    if kind == "criterion":
        from fairseq.criterions import CRITERION_REGISTRY, register_criterion

        return CRITERION_REGISTRY, register_criterion
    raise ValueError(f"register: kind must be 'model', 'task' or 'criterion', got {kind!r}")


def _qualified(cls: Any) -> str:
    return f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', repr(cls))}"


def register(kind: str, name: str, dataclass: Optional[type] = None) -> Callable[[type], type]:
    """Class decorator: register the class under ``name`` in fairseq's ``kind`` registry, or fail loudly.

    Use instead of ``@register_model`` / ``@register_task`` / ``@register_criterion``. It always returns the
    decorated class itself (fairseq's model/task decorators return the *other* class on a clash) and raises
    :class:`RegistryClashError`, naming the registered name, the class that holds it and ours, when the name is
    taken before registration or does not map to our class after it.
    """
    registry, register_fn = _fairseq_registry(kind)

    def clash(cls: type, found: Any) -> RegistryClashError:
        return RegistryClashError(
            f"fairseq {kind} name {name!r} is already registered to {_qualified(found)}, so fairseq_plugins "
            f"cannot register {_qualified(cls)} under it: another package registered that name first (fairseq "
            f"would silently keep the other class). Remove or rename the other registration."
        )

    def decorate(cls: type) -> type:
        found = registry.get(name)
        if found is not None and found is not cls:
            raise clash(cls, found)
        if found is None:
            register_fn(name, dataclass=dataclass)(cls)
        found = registry.get(name)
        if found is not cls:
            raise clash(cls, found)
        return cls

    return decorate


def optional_torchaudio() -> Optional[Any]:
    """Import torchaudio if it works here; returns None (and says why) if it does not.

    torchaudio's CUDA-only wheels raise OSError (missing libc10_cuda.so) rather than ImportError on CPU
    torch, so both are caught; the plugin itself never needs torchaudio.
    """
    try:
        import torchaudio  # noqa: F401
    except (ImportError, OSError) as e:
        logger.info("torchaudio is not usable here (%s); the plugin does not need it", first_line(str(e)))
        return None
    return torchaudio


# ==========================================================================================================
# 4. Checkpoints a kill cannot truncate, and a resume that says what to do with a broken one (issue 16).
#    Added by the fault-handling work; tests: tests/faults/test_checkpoint_faults.py.
# ==========================================================================================================
class BrokenCheckpointError(RuntimeError):
    """A checkpoint to resume from is truncated or not a checkpoint; the message lists the intact ones."""


class AtomicCopyPathManager:
    """fairseq's ``PathManager`` with ``copy`` made atomic for local paths: copy to ``dst.tmp``, then rename.

    fairseq writes the first checkpoint of a save atomically (``torch_persistent_save``: ``.tmp`` + rename) but
    makes ``checkpoint_last.pt`` / ``checkpoint_best.pt`` with ``PathManager.copy`` (``shutil.copyfile`` onto
    the old file), so a kill during that copy leaves a truncated ``checkpoint_last.pt``. Installed only as
    ``fairseq.checkpoint_utils.PathManager``; every other attribute is fairseq's.
    """

    def __init__(self, base):
        self._base = base

    def __getattr__(self, name: str):
        return getattr(self._base, name)

    def copy(self, src_path: str, dst_path: str, overwrite: bool = False) -> bool:
        if not self._base.supports_rename(dst_path):  # remote (ioPath) paths: fairseq's behaviour
            return self._base.copy(src_path, dst_path, overwrite=overwrite)
        if os.path.exists(dst_path) and not overwrite:
            raise FileExistsError(f"{dst_path} exists (copy of {src_path} without overwrite)")
        tmp = dst_path + ".tmp"
        self._base.copy(src_path, tmp, overwrite=True)
        os.replace(tmp, dst_path)
        return True


def checkpoint_file_problem(path: str) -> Optional[str]:
    """Why ``path`` cannot be a loadable torch checkpoint (cheap: reads the zip directory only), or None."""
    import zipfile

    size = os.path.getsize(path)
    if size == 0:
        return "empty file (0 bytes)"
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04":  # torch's zip format (torch >= 1.6)
        try:
            with zipfile.ZipFile(path) as z:
                z.namelist()
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            return f"truncated or corrupted ({size} bytes; {e})"
        return None
    if head[:1] == b"\x80":  # legacy pickle format: only loading it can tell
        return None
    return f"not a torch checkpoint ({size} bytes starting with {head!r})"


def checkpoint_num_updates(path: str) -> Tuple[Optional[int], Optional[str]]:
    """``(updates, None)`` for an intact fairseq checkpoint (tensors memory-mapped, not read), else
    ``(None, reason)``."""
    problem = checkpoint_file_problem(path)
    if problem:
        return None, problem
    install_safe_globals()
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, OSError, ValueError) as e:
        return None, f"not loadable: {first_line(str(e))}"
    history = state.get("optimizer_history") or [{}] if isinstance(state, dict) else [{}]
    return history[-1].get("num_updates"), None


def resume_advice(path: str, problem: str) -> str:
    """The message for a broken checkpoint to resume from: the file, why, the intact checkpoints next to it
    (newest first, with their update numbers) and the exact override that resumes from the newest."""
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    intact = []
    for name in sorted(os.listdir(folder)):
        other = os.path.join(folder, name)
        if other == path or not name.endswith(".pt") or not os.path.isfile(other):
            continue
        updates, _ = checkpoint_num_updates(other)
        if updates is not None:
            intact.append((updates, name))
    intact.sort(key=lambda x: (-x[0], x[1]))
    lines = [f"cannot resume from {path}: {problem} (was the run killed while writing it?)"]
    if not intact:
        lines.append(f"no intact checkpoint in {folder}: remove {path} to start from scratch")
        return "\n".join(lines)
    lines.append(f"intact checkpoints in {folder}:")
    lines += [f"  {name}  (update {updates})" for updates, name in intact]
    newest = os.path.join(folder, intact[0][1])
    lines.append(f"to resume from the newest, rerun the same command with: checkpoint.restore_file={newest}")
    lines.append(f"(or replace the broken file: cp {newest} {path})")
    return "\n".join(lines)


_CHECKPOINT_GUARDS_INSTALLED = False


def install_checkpoint_guards() -> None:
    """Make fairseq's checkpoint copies atomic and check the file ``Trainer.load_checkpoint`` resumes from
    (idempotent). A broken file raises :class:`BrokenCheckpointError` with :func:`resume_advice` instead of
    torch's ``PytorchStreamReader failed reading zip archive`` trace."""
    global _CHECKPOINT_GUARDS_INSTALLED
    if _CHECKPOINT_GUARDS_INSTALLED:
        return
    import functools

    from fairseq import checkpoint_utils, trainer

    if not isinstance(checkpoint_utils.PathManager, AtomicCopyPathManager):
        checkpoint_utils.PathManager = AtomicCopyPathManager(checkpoint_utils.PathManager)
    original = trainer.Trainer.load_checkpoint

    @functools.wraps(original)
    def load_checkpoint(self, filename, *args, **kwargs):
        if os.path.isfile(filename):
            problem = checkpoint_file_problem(filename)
            if problem:
                raise BrokenCheckpointError(resume_advice(filename, problem))
        return original(self, filename, *args, **kwargs)

    trainer.Trainer.load_checkpoint = load_checkpoint
    _CHECKPOINT_GUARDS_INSTALLED = True
