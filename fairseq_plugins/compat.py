"""Every workaround for fairseq / torch version quirks, in one place, each with its reason.

The plugin targets fairseq-fixed 0.12.3.1 (fairseq main of 2024-01 with the Python 3.11 fix) and torch >= 2.6.
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
2. Registry clashes. fairseq's ``register_model``/``register_task``/``register_criterion`` silently keep an
   existing class when a name is taken (fairseq main already has an unrelated ``laser`` task): after
   registration :func:`assert_registered` checks that the name maps to our class.
3. torchaudio. The PyPI torchaudio for torch >= 2.11 is CUDA-only and raises ``OSError`` on import next to
   CPU torch. The plugin never imports it; :func:`optional_torchaudio` is the one guarded import for users
   who have a working copy.
"""
import argparse
import logging
import os
import pickle
from typing import Any, Dict, List, Optional

import torch

logger = logging.getLogger(__name__)

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
    if not hasattr(torch.serialization, "add_safe_globals"):  # torch < 2.4: weights_only is opt-in anyway
        _SAFE_GLOBALS_INSTALLED = True
        return
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


def assert_registered(registry: Dict[str, Any], name: str, cls: type, kind: str) -> None:
    """Fail loudly when fairseq kept another class under ``name`` (its registries never raise on a clash)."""
    found = registry.get(name)
    if found is not cls:
        raise RuntimeError(
            f"fairseq {kind} registry maps {name!r} to {found!r}, not to fairseq_plugins' {cls!r}: another "
            f"package registered that name first"
        )


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
