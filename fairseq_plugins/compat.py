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
2. Registry clashes. When a name is taken, fairseq's ``register_model`` / ``register_task`` silently keep the
   existing class and *return it*, so ``@register_model(name)`` rebinds the plugin's class name to the other
   package's class (a check placed after the class statement then compares that class with itself);
   ``register_criterion`` raises a ValueError that does not say who holds the name (fairseq main already has
   an unrelated ``laser`` task). Every plugin component registers through :func:`register`, which checks the
   registry before and after and raises :class:`RegistryClashError` naming both classes.
3. torchaudio. The PyPI torchaudio for torch >= 2.11 is CUDA-only and raises ``OSError`` on import next to
   CPU torch. The plugin never imports it; :func:`optional_torchaudio` is the one guarded import for users
   who have a working copy.
"""
import argparse
import logging
import os
import pickle
from typing import Any, Callable, Dict, List, Optional, Tuple

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
