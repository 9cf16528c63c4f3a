"""Pre-trained speech backbones loaded from released checkpoints, strictly, and exported back to their format.

Three release formats are recognised by their contents, not their file names:

- fairseq HuBERT checkpoints (``cfg`` with ``model._name: hubert``, ``task_state`` with the pre-training
  dictionaries). They load without the pre-training label files or dictionaries on disk: the dictionaries
  come from ``task_state``; the task's data paths are never read.
- fairseq wav2vec 2.0 checkpoints (``model._name: wav2vec2``; old ones keep an ``args`` Namespace).
- WavLM checkpoints as Microsoft releases them: ``{'cfg': dict, 'model': state_dict}`` of a model with gated
  relative position bias (:mod:`fairseq_plugins.modules.wavlm`). The plugin's own ``wavlm`` fairseq model is
  a HuBERT-style fairseq checkpoint and loads through the fairseq branch.

Loading is strict: every missing, unexpected or mis-shaped key is reported at once; an unknown format gets an
error naming what the file holds. :func:`export_backbone` writes tuned weights back into the original file's
exact structure, so whatever loaded the original (fairseq without the plugin, the WavLM loader, s3prl's
``hubert_local``/``wavlm_local``) loads the tuned one.
"""
import copy
import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from fairseq_plugins.compat import load_checkpoint_state

logger = logging.getLogger(__name__)

FAIRSEQ_KINDS = ("hubert", "wav2vec2")


class BackboneCheckpointError(ValueError):
    """A checkpoint is not a backbone the plugin can load; the message names the file and what it holds."""


@dataclass
class Backbone:
    """A loaded backbone and what is needed to rebuild and export it.

    ``model`` exposes ``extract_features(source, padding_mask=None, mask=False, output_layer=None)`` returning
    ``(B x T x C features, padding_mask)``; its pre-training heads (HuBERT ``final_proj``, label embeddings,
    wav2vec 2.0 quantiser) are removed. ``spec`` is a plain dict (kind + architecture config) from which
    :func:`build_backbone_from_spec` rebuilds the same architecture without the original file.
    """

    kind: str
    model: nn.Module
    spec: Dict[str, Any]
    embed_dim: int
    num_layers: int
    normalize: bool


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        keys = [str(k) for k in list(obj.keys())[:12]]
        return f"a dict with keys {keys}" + (" ..." if len(obj) > 12 else "")
    return f"a {type(obj).__name__}"


def _plain(cfg: Any) -> Any:
    from omegaconf import OmegaConf

    if OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    return copy.deepcopy(cfg)


def is_wavlm_release(state: Any) -> bool:
    """A WavLM release file: a flat ``cfg`` dict of the architecture (no ``model``/``task`` sections)."""
    cfg = state.get("cfg") if isinstance(state, Mapping) else None
    return isinstance(cfg, Mapping) and "encoder_layers" in cfg and "model" not in cfg and "model" in state


def checkpoint_kind(state: Any, name: str = "<checkpoint>") -> str:
    """``'hubert'``, ``'wav2vec2'`` or ``'wavlm'`` for a loaded checkpoint dict; raises for anything else."""
    if not isinstance(state, Mapping):
        raise BackboneCheckpointError(f"{name}: expected a checkpoint dict, found {_describe(state)}")
    if "model" not in state:
        raise BackboneCheckpointError(
            f"{name}: not a model checkpoint (no 'model' entry); found {_describe(state)}. Expected a fairseq "
            f"HuBERT / wav2vec 2.0 checkpoint or a WavLM release file {{'cfg': dict, 'model': state_dict}}"
        )
    cfg = state.get("cfg")
    model_cfg = None
    if cfg is not None and hasattr(cfg, "get") and cfg.get("model") is not None:
        model_cfg = cfg.get("model")
    elif state.get("args") is not None:  # pre-hydra fairseq checkpoint
        model_cfg = {"_name": getattr(state["args"], "arch", None)}
    if model_cfg is not None:
        arch = model_cfg.get("_name") if hasattr(model_cfg, "get") else None
        from fairseq.models import MODEL_REGISTRY
        from fairseq.models.hubert import HubertModel
        from fairseq.models.wav2vec import Wav2Vec2Model

        cls = MODEL_REGISTRY.get(arch)
        if cls is not None and issubclass(cls, HubertModel):
            return "hubert"
        if cls is not None and issubclass(cls, Wav2Vec2Model):
            return "wav2vec2"
        raise BackboneCheckpointError(
            f"{name}: a fairseq checkpoint of model {arch!r} ({cls.__name__ if cls else 'not registered'}); "
            f"expected a pre-trained HuBERT, WavLM or wav2vec 2.0 backbone (fine-tuned CTC/seq2seq "
            f"checkpoints and other models are not backbones)"
        )
    if is_wavlm_release(state):
        return "wavlm"
    raise BackboneCheckpointError(
        f"{name}: unknown checkpoint format: found {_describe(state)} with cfg {_describe(cfg)}. Expected a "
        f"fairseq checkpoint (cfg.model._name) or a WavLM release file (cfg with encoder_layers, "
        f"relative_position_embedding ...)"
    )


def _fairseq_cfg(state: Mapping[str, Any]):
    """The checkpoint's config as OmegaConf, upgrading a pre-hydra ``args`` Namespace like fairseq does."""
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from omegaconf import OmegaConf

    if state.get("cfg") is not None:
        cfg = state["cfg"]
        return cfg if OmegaConf.is_config(cfg) else OmegaConf.create(cfg)
    return convert_namespace_to_omegaconf(state["args"])


def _build_fairseq_model(kind: str, model_cfg: Any, task_cfg: Any, dictionaries: Optional[List[Any]]):
    from fairseq.models import MODEL_REGISTRY

    cls = MODEL_REGISTRY[model_cfg["_name"]]
    if kind == "hubert":
        labels = list(task_cfg.get("labels", ["km"]))
        dicts = dictionaries if dictionaries is not None else [None] * len(labels)
        return cls(model_cfg, task_cfg, dicts)
    return cls.build_model(model_cfg, task=None)


def strict_load(model: nn.Module, weights: Mapping[str, torch.Tensor], name: str) -> None:
    """Load ``weights`` into ``model``; raise once with every missing, unexpected and mis-shaped key."""
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    shapes = sorted(
        f"{k}: file {tuple(weights[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(weights)
        if tuple(weights[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or shapes:
        raise BackboneCheckpointError(
            f"{name}: weights do not match the architecture in its config: "
            f"{len(missing)} missing {missing}, {len(unexpected)} unexpected {unexpected}, "
            f"{len(shapes)} with another shape {shapes}"
        )
    nn.Module.load_state_dict(model, dict(weights), strict=True)


def _finish(kind: str, model: nn.Module, spec: Dict[str, Any], embed_dim: int, normalize: bool) -> Backbone:
    if kind in FAIRSEQ_KINDS:
        model.remove_pretraining_modules()
        if getattr(model, "label_embs_concat", None) is not None:  # HuBERT keeps it after remove_pretraining
            model.label_embs_concat = None
    layers = model.encoder.layers
    return Backbone(kind, model, spec, int(embed_dim), len(layers), bool(normalize))


def load_backbone(path: str, trust: bool = False) -> Backbone:
    """Load a released HuBERT / wav2vec 2.0 / WavLM checkpoint as a :class:`Backbone` (strict, eval mode)."""
    state = load_checkpoint_state(path, trust=trust)
    kind = checkpoint_kind(state, path)
    if kind == "wavlm":
        from fairseq_plugins.modules.wavlm import load_wavlm_release, release_cfg_dict

        model, wcfg = load_wavlm_release(state, strict=True)
        spec = {"kind": "wavlm", "cfg": release_cfg_dict(wcfg)}
        return _finish("wavlm", model.eval(), spec, wcfg.encoder_embed_dim, wcfg.normalize)
    cfg = _fairseq_cfg(state)
    dictionaries = None
    task_state = state.get("task_state") or {}
    if kind == "hubert" and task_state.get("dictionaries") is not None:
        dictionaries = list(task_state["dictionaries"])
    model = _build_fairseq_model(kind, cfg.model, cfg.task, dictionaries)
    strict_load(model, state["model"], path)
    spec = {"kind": kind, "model": _plain(cfg.model), "task": _plain(cfg.task)}
    return _finish(kind, model.eval(), spec, cfg.model.encoder_embed_dim, cfg.task.get("normalize", False))


def build_backbone_from_spec(spec: Mapping[str, Any]) -> Backbone:
    """Rebuild the architecture of a :class:`Backbone` (random weights) from its ``spec``, offline."""
    from omegaconf import OmegaConf

    kind = spec.get("kind")
    if kind == "wavlm":
        from fairseq_plugins.modules.wavlm import WavLMBackbone, wavlm_config_from_release

        wcfg = wavlm_config_from_release(dict(spec["cfg"]), source="backbone spec")
        return _finish("wavlm", WavLMBackbone(wcfg), dict(spec), wcfg.encoder_embed_dim, wcfg.normalize)
    if kind not in FAIRSEQ_KINDS:
        raise BackboneCheckpointError(f"backbone spec has kind {kind!r}; expected hubert, wav2vec2 or wavlm")
    model_cfg, task_cfg = OmegaConf.create(dict(spec["model"])), OmegaConf.create(dict(spec["task"]))
    model = _build_fairseq_model(kind, model_cfg, task_cfg, None)
    return _finish(kind, model, dict(spec), model_cfg.encoder_embed_dim, task_cfg.get("normalize", False))


def export_backbone(backbone_weights: Mapping[str, torch.Tensor], original: str, out: str,
                    trust: bool = False) -> Tuple[str, int]:
    """Write ``backbone_weights`` in the release format of the checkpoint ``original``.

    The output is the original file with its backbone weights replaced: same top-level structure, config,
    ``task_state`` and pre-training heads (which fine-tuning does not touch). ``last_optimizer_state`` is
    dropped, since it belongs to the old weights. Every backbone key must exist in the original with the same
    shape. Returns ``(kind, number of tensors replaced)``.
    """
    state = load_checkpoint_state(original, trust=trust)
    kind = checkpoint_kind(state, original)
    if kind == "wavlm":
        from fairseq_plugins.modules.wavlm import save_wavlm_release

        save_wavlm_release(dict(backbone_weights), state["cfg"], out)
        return kind, len(backbone_weights)
    weights = state["model"]
    unknown = sorted(set(backbone_weights) - set(weights))
    shapes = sorted(k for k in set(backbone_weights) & set(weights)
                    if tuple(weights[k].shape) != tuple(backbone_weights[k].shape))
    untouched = sorted(set(weights) - set(backbone_weights))
    if unknown or shapes:
        raise BackboneCheckpointError(
            f"cannot export into the format of {original}: {len(unknown)} keys not in it {unknown}, "
            f"{len(shapes)} with another shape {shapes}"
        )
    for k, v in backbone_weights.items():
        weights[k] = v.detach().to(device="cpu", dtype=weights[k].dtype).clone()
    if state.pop("last_optimizer_state", None) is not None:
        logger.info("export: dropped last_optimizer_state of %s (it belongs to the original weights)", original)
    logger.info("export: %d tensors replaced, %d kept from %s (%s)", len(backbone_weights), len(untouched),
                original, ", ".join(untouched) or "none")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, out)
    return kind, len(backbone_weights)
