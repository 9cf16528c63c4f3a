"""Pre-trained speech encoders loaded from every checkpoint shape users have, strictly, and written back out.

This is the one loading path that LASER/SCORE (``laser_finetune``), the probes (``fairseq_plugins.evaluate``) and
``inspect_checkpoint`` share. Formats are recognised by their contents, not their file names:

- fairseq HuBERT pre-training checkpoints, as saved by today's fairseq (``cfg`` + ``task_state`` with the
  dictionaries) and as the 2021 releases ship (``cfg`` with fewer model fields, no ``task_state``,
  ``task.data`` / ``task.label_dir`` on the authors' cluster, ``label_embs_concat`` and ``final_proj`` still
  in the weights). The task is never rebuilt, so no label directory or dictionary is read (fairseq's own
  ``load_model_ensemble_and_task`` rebuilds it from ``cfg.task.label_dir`` and fails on the releases).
  Large / X-Large style (``task.normalize``, ``model.layer_norm_first``) load the same way.
- fairseq wav2vec 2.0 pre-training checkpoints, including those saved before fairseq moved to Hydra
  (``args`` Namespace, ``cfg`` None; converted like fairseq does).
- CTC fine-tuned HuBERT / wav2vec 2.0 (``w2v_encoder.w2v_model.*`` weights, the pre-training config in
  ``cfg.model.w2v_args``): the encoder inside is loaded, the CTC projection dropped.
- WavLM release files ``{'cfg': dict, 'model': state_dict}`` (:mod:`fairseq_plugins.modules.wavlm`) and the
  plugin's own checkpoints of HuBERT-shaped models (the ``wavlm`` fairseq model).
- Folders written by :func:`save_backbone_safetensors` (``config.json`` + ``model.safetensors``).

Keys that a pre-training or fine-tuning head leaves behind (:data:`HEAD_PREFIXES`) are dropped by name with
one log line; every other missing, unexpected or mis-shaped key is a :class:`BackboneCheckpointError` listing
all of them (:func:`strict_load`, the plugin's one strict state-dict loader). A file that is not a checkpoint
(text, a truncated download, a directory) or not a speech encoder gets one line naming the file and what was
expected. :func:`export_backbone` writes tuned weights back into the original file's exact structure.
"""
import copy
import json
import logging
import os
import zipfile
from argparse import Namespace
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from fairseq_plugins.compat import UnsafeCheckpointError, first_line, load_checkpoint_state

logger = logging.getLogger(__name__)

FAIRSEQ_KINDS = ("hubert", "wav2vec2")

#: Weight-name prefixes of heads that are not part of the encoder, per source. They are dropped by name when
#: loading an encoder (one log line lists them); anything else that does not fit stays an error.
HEAD_PREFIXES: Dict[str, Tuple[str, ...]] = {
    "hubert": ("label_embs_concat", "final_proj.", "target_glu."),
    "wav2vec2": ("quantizer.", "project_q.", "final_proj.", "target_glu.", "project_inp."),
    "ctc": ("w2v_encoder.proj.",),
}
CTC_PREFIX = "w2v_encoder.w2v_model."
EXPORT_FORMAT = "fairseq_plugins.backbone"
EXPECTED = ("expected a speech encoder checkpoint: a fairseq HuBERT / wav2vec 2.0 checkpoint (pre-trained or "
            "CTC fine-tuned), a WavLM release file {'cfg': dict, 'model': state_dict}, or a folder exported "
            "with `python -m fairseq_plugins.export_laser ... --format safetensors`")


class BackboneCheckpointError(ValueError):
    """A checkpoint cannot be loaded as a speech encoder; the message names the file and what it holds.

    The one error class of the plugin's checkpoint loading (backbones, WavLM release files, exports).
    """


@dataclass
class Backbone:
    """A loaded backbone and what is needed to rebuild and export it.

    ``model`` exposes ``extract_features(source, padding_mask=None, mask=False, output_layer=None)`` returning
    ``(B x T x C features, padding_mask)``; its pre-training heads (HuBERT ``final_proj``, label embeddings,
    wav2vec 2.0 quantiser) are removed. ``spec`` is a plain dict (kind + architecture config) from which
    :func:`build_backbone_from_spec` rebuilds the same architecture without the original file. ``source``
    says which shape the file had and ``dropped`` lists the head keys left out.
    """

    kind: str
    model: nn.Module
    spec: Dict[str, Any]
    embed_dim: int
    num_layers: int
    normalize: bool
    source: str = ""
    dropped: List[str] = field(default_factory=list)

    def summary(self) -> Dict[str, Any]:
        """What was found, for logs and ``inspect_checkpoint``."""
        return {"kind": self.kind, "source": self.source, "layers": self.num_layers, "dim": self.embed_dim,
                "normalize": self.normalize, "layer_norm_first": bool(getattr(self.model.encoder,
                                                                              "layer_norm_first", False)),
                "heads_dropped": self.dropped,
                "parameters": sum(p.numel() for p in self.model.parameters())}


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


# ----------------------------------------------------------------------------------------------- reading
def read_checkpoint(path: str, trust: bool = False) -> Dict[str, Any]:
    """The checkpoint dict at ``path`` (safe unpickling, :func:`fairseq_plugins.compat.load_checkpoint_state`).

    Raises :class:`BackboneCheckpointError` with one line naming the file for a directory, a file that is not
    a torch checkpoint (text, another format), a truncated or corrupted file; ``FileNotFoundError`` when
    nothing is there.
    """
    if os.path.isdir(path):
        raise BackboneCheckpointError(
            f"{path} is a directory; expected a checkpoint file (.pt) or a folder exported with --format "
            f"safetensors (config.json + model.safetensors)")
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:4] == b"PK\x03\x04":
        if not zipfile.is_zipfile(path):
            raise BackboneCheckpointError(
                f"{path} is truncated or corrupted ({size} bytes, its zip directory is missing); expected a "
                f"complete torch checkpoint: copy or download it again")
    elif head[:1] != b"\x80":  # neither torch's zip format nor a legacy pickle (protocol >= 2)
        raise BackboneCheckpointError(
            f"{path} is not a torch checkpoint ({size} bytes starting with {head!r}); {EXPECTED}")
    try:
        return load_checkpoint_state(path, trust=trust)
    except UnsafeCheckpointError:
        raise
    except (RuntimeError, EOFError, OSError, ValueError) as e:  # torch's reader on a damaged archive
        raise BackboneCheckpointError(
            f"{path} is truncated or corrupted ({size} bytes; torch: {first_line(str(e))}); expected a "
            f"complete torch checkpoint: copy or download it again") from e


def is_wavlm_release(state: Any) -> bool:
    """A WavLM release file: a flat ``cfg`` dict of the architecture (no ``model``/``task`` sections)."""
    cfg = state.get("cfg") if isinstance(state, Mapping) else None
    return isinstance(cfg, Mapping) and "encoder_layers" in cfg and "model" not in cfg and "model" in state


def _model_cfg(state: Mapping[str, Any]) -> Optional[Any]:
    cfg = state.get("cfg")
    if cfg is not None and hasattr(cfg, "get") and cfg.get("model") is not None:
        return cfg.get("model")
    if isinstance(state.get("args"), Namespace):  # pre-hydra fairseq checkpoint
        return {"_name": getattr(state["args"], "arch", None)}
    return None


def _encoder_classes() -> Tuple[type, ...]:
    """fairseq's encoder model classes (imported lazily): HuBERT, wav2vec 2.0 and their CTC fine-tuning."""
    from fairseq.models.hubert import HubertModel
    from fairseq.models.hubert.hubert_asr import HubertCtc
    from fairseq.models.wav2vec import Wav2Vec2Model
    from fairseq.models.wav2vec.wav2vec2_asr import Wav2VecCtc

    return HubertModel, Wav2Vec2Model, HubertCtc, Wav2VecCtc


def is_plugin_training_checkpoint(state: Any) -> bool:
    """A fairseq checkpoint of one of this plugin's own training models that is not a speech encoder by
    itself (``slicer``, ``laser_finetune`` ...) or whose constructor is not HuBERT's (the pre-training models on
    :class:`~fairseq_plugins.modules.hubert_encoder.SeededHubertEncoder`: ``simsiam_recon``, ``mgf``): fairseq's
    loader rebuilds those."""
    from fairseq.models import MODEL_REGISTRY

    from fairseq_plugins.modules.hubert_encoder import SeededHubertEncoder

    model_cfg = _model_cfg(state) if isinstance(state, Mapping) else None
    cls = MODEL_REGISTRY.get(model_cfg.get("_name")) if hasattr(model_cfg, "get") else None
    if cls is None or not cls.__module__.startswith("fairseq_plugins."):
        return False
    return issubclass(cls, SeededHubertEncoder) or not issubclass(cls, _encoder_classes())


def checkpoint_kind(state: Any, name: str = "<checkpoint>") -> str:
    """``'hubert'``, ``'wav2vec2'``, ``'ctc'`` (a fine-tuned encoder) or ``'wavlm'`` for a loaded checkpoint
    dict; raises :class:`BackboneCheckpointError` for anything else."""
    if not isinstance(state, Mapping):
        raise BackboneCheckpointError(f"{name}: expected a checkpoint dict, found {_describe(state)}; {EXPECTED}")
    if "model" not in state:
        raise BackboneCheckpointError(
            f"{name}: not a model checkpoint (no 'model' entry); found {_describe(state)}. Expected a fairseq "
            f"HuBERT / wav2vec 2.0 checkpoint or a WavLM release file {{'cfg': dict, 'model': state_dict}}"
        )
    model_cfg = _model_cfg(state)
    if model_cfg is not None:
        arch = model_cfg.get("_name") if hasattr(model_cfg, "get") else None
        from fairseq.models import MODEL_REGISTRY
        from fairseq.models.hubert import HubertModel
        from fairseq.models.hubert.hubert_asr import HubertCtc
        from fairseq.models.wav2vec import Wav2Vec2Model
        from fairseq.models.wav2vec.wav2vec2_asr import Wav2VecCtc

        cls = MODEL_REGISTRY.get(arch)
        if cls is not None and issubclass(cls, HubertModel):
            return "hubert"
        if cls is not None and issubclass(cls, Wav2Vec2Model):
            return "wav2vec2"
        if cls is not None and issubclass(cls, (HubertCtc, Wav2VecCtc)):
            return "ctc"
        raise BackboneCheckpointError(
            f"{name}: a fairseq checkpoint of model {arch!r} ({cls.__name__ if cls else 'not registered'}); "
            f"expected a pre-trained HuBERT, WavLM or wav2vec 2.0 backbone or a CTC fine-tuned one "
            f"(seq2seq checkpoints and other models are not speech encoders)"
        )
    if is_wavlm_release(state):
        return "wavlm"
    raise BackboneCheckpointError(
        f"{name}: unknown checkpoint format: found {_describe(state)} with cfg {_describe(state.get('cfg'))}. "
        f"Expected a fairseq checkpoint (cfg.model._name) or a WavLM release file (cfg with encoder_layers, "
        f"relative_position_embedding ...)"
    )


def _as_omegaconf(cfg: Any) -> Any:
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from omegaconf import OmegaConf

    if isinstance(cfg, Namespace):
        return convert_namespace_to_omegaconf(cfg)
    return cfg if OmegaConf.is_config(cfg) else OmegaConf.create(cfg)


def _fairseq_cfg(state: Mapping[str, Any]):
    """The checkpoint's config as OmegaConf, upgrading a pre-hydra ``args`` Namespace like fairseq does."""
    return _as_omegaconf(state["cfg"] if state.get("cfg") is not None else state["args"])


def _complete_model_cfg(model_cfg: Any, task_cfg: Any) -> Any:
    """``model_cfg`` with the fields its dataclass gained since the file was written filled with defaults
    (what fairseq's ``merge_with_parent`` does when it loads a checkpoint); a default that interpolates
    ``${task.X}`` / ``${common.X}`` takes the task's value / fairseq's common default."""
    from fairseq.dataclass.configs import CommonConfig
    from fairseq.dataclass.utils import merge_with_parent
    from fairseq.models import MODEL_DATACLASS_REGISTRY
    from omegaconf import OmegaConf

    dc = MODEL_DATACLASS_REGISTRY.get(model_cfg["_name"])
    if dc is None:
        return model_cfg
    merged = OmegaConf.to_container(merge_with_parent(dc(), model_cfg, remove_missing=True), resolve=False,
                                    enum_to_str=True)
    scopes = {"task": _plain(task_cfg) or {}, "common": OmegaConf.to_container(OmegaConf.structured(CommonConfig))}
    for key, value in merged.items():
        if isinstance(value, str) and value.startswith("${") and value.endswith("}"):
            scope, _, name = value[2:-1].partition(".")
            merged[key] = scopes.get(scope, {}).get(name)
    return OmegaConf.create(merged)


def _complete_task_cfg(task_cfg: Any) -> Any:
    """``task_cfg`` with the fields its dataclass gained filled with defaults (the task is never set up)."""
    from fairseq.dataclass.utils import merge_with_parent
    from fairseq.tasks import TASK_DATACLASS_REGISTRY
    from omegaconf import OmegaConf

    dc = TASK_DATACLASS_REGISTRY.get(task_cfg.get("_name")) if task_cfg is not None else None
    if dc is None:
        return task_cfg
    return OmegaConf.create(OmegaConf.to_container(merge_with_parent(dc(), task_cfg, remove_missing=True),
                                                   resolve=False, enum_to_str=True))


def _build_fairseq_model(kind: str, model_cfg: Any, task_cfg: Any, dictionaries: Optional[List[Any]]):
    from fairseq.models import MODEL_REGISTRY

    cls = MODEL_REGISTRY[model_cfg["_name"]]
    task_cfg = _complete_task_cfg(task_cfg)
    model_cfg = _complete_model_cfg(model_cfg, task_cfg)
    if kind == "hubert":
        labels = list(task_cfg.get("labels", ["km"]))
        dicts = dictionaries if dictionaries is not None else [None] * len(labels)
        return cls(model_cfg, task_cfg, dicts)
    return cls.build_model(model_cfg, task=None)


# --------------------------------------------------------------------------------------------- strict load
def strict_load(model: nn.Module, weights: Mapping[str, torch.Tensor], name: str,
                what: str = "the architecture in its config") -> None:
    """Load ``weights`` into ``model``; raise once with every missing, unexpected and mis-shaped key.

    The plugin's one strict state-dict loader (backbones, WavLM release files, exported folders).
    """
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
            f"{name}: weights do not match {what}: "
            f"{len(missing)} missing {missing}, {len(unexpected)} unexpected {unexpected}, "
            f"{len(shapes)} with another shape {shapes}"
        )
    nn.Module.load_state_dict(model, dict(weights), strict=True)


def drop_head_keys(weights: Mapping[str, torch.Tensor], prefixes: Tuple[str, ...],
                   name: str) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """``weights`` without the keys that start with one of ``prefixes`` (logged once), and those keys."""
    dropped = sorted(k for k in weights if k.startswith(prefixes))
    if dropped:
        logger.info("%s: dropped %d head key(s) that are not part of the encoder: %s", name, len(dropped),
                    ", ".join(dropped))
    return {k: v for k, v in weights.items() if k not in set(dropped)}, dropped


def _strip_heads(kind: str, model: nn.Module) -> nn.Module:
    if kind in FAIRSEQ_KINDS:
        model.remove_pretraining_modules()
        if getattr(model, "label_embs_concat", None) is not None:  # HuBERT keeps it after remove_pretraining
            model.label_embs_concat = None
    return model


def _finish(kind: str, model: nn.Module, spec: Dict[str, Any], embed_dim: int, normalize: bool,
            source: str = "", dropped: Optional[List[str]] = None) -> Backbone:
    layers = model.encoder.layers
    return Backbone(kind, model, spec, int(embed_dim), len(layers), bool(normalize), source, list(dropped or []))


# ------------------------------------------------------------------------------------------------- load
def _load_fairseq(kind: str, model_cfg: Any, task_cfg: Any, weights: Mapping[str, torch.Tensor],
                  dictionaries: Optional[List[Any]], name: str, dropped: List[str], source: str,
                  normalize: Optional[bool] = None) -> Backbone:
    model = _strip_heads(kind, _build_fairseq_model(kind, model_cfg, task_cfg, dictionaries))
    weights, heads = drop_head_keys(weights, HEAD_PREFIXES[kind], name)
    strict_load(model, weights, name)
    spec = {"kind": kind, "model": _plain(model_cfg), "task": _plain(task_cfg)}
    if normalize is None:
        normalize = task_cfg.get("normalize", False)
    return _finish(kind, model.eval(), spec, model_cfg.encoder_embed_dim, normalize, source, dropped + heads)


def encoder_features(model: nn.Module, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None,
                     output_layer: Optional[int] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``B x S`` waveform -> (``B x T x C`` features of transformer layer ``output_layer`` (1-based; None = last),
    ``B x T`` padding mask or None), for every backbone kind.

    HuBERT and WavLM take ``output_layer`` (1-based) and return a tuple; fairseq's ``Wav2Vec2Model`` takes
    ``layer`` (0-based, the same encoder loop) and returns a dict, so it is translated here.
    """
    from fairseq.models.wav2vec import Wav2Vec2Model

    if isinstance(model, Wav2Vec2Model):
        res = model.extract_features(source, padding_mask=padding_mask, mask=False,
                                     layer=None if output_layer is None else output_layer - 1)
        return res["x"], res["padding_mask"]
    return model.extract_features(source, padding_mask=padding_mask, mask=False, output_layer=output_layer)


def load_backbone_state(state: Mapping[str, Any], name: str = "<checkpoint>") -> Backbone:
    """:func:`load_backbone` for a checkpoint dict already in memory (``name`` is used in messages)."""
    kind = checkpoint_kind(state, name)
    if kind == "wavlm":
        from fairseq_plugins.modules.wavlm import load_wavlm_release, release_cfg_dict

        model, wcfg = load_wavlm_release(state, name=name)
        spec = {"kind": "wavlm", "cfg": release_cfg_dict(wcfg)}
        return _finish("wavlm", model.eval(), spec, wcfg.encoder_embed_dim, wcfg.normalize, "WavLM release file")
    cfg = _fairseq_cfg(state)
    era = "pre-hydra args" if state.get("cfg") is None else "cfg"
    if kind == "ctc":
        w2v_args = cfg.model.get("w2v_args")
        if w2v_args is None:
            raise BackboneCheckpointError(
                f"{name}: a fine-tuned {cfg.model._name} checkpoint without model.w2v_args (the pre-training "
                f"config of its encoder); expected the config that fairseq's fine-tuning stores there")
        inner = _as_omegaconf(w2v_args)
        inner_kind = checkpoint_kind({"cfg": inner, "model": {}}, name)
        if inner_kind not in FAIRSEQ_KINDS:
            raise BackboneCheckpointError(f"{name}: its w2v_args describe a {inner_kind} model; expected a "
                                          f"HuBERT or wav2vec 2.0 encoder inside the fine-tuned checkpoint")
        weights, dropped = drop_head_keys(state["model"], HEAD_PREFIXES["ctc"], name)
        outside = sorted(k for k in weights if not k.startswith(CTC_PREFIX))
        if outside:
            raise BackboneCheckpointError(
                f"{name}: fine-tuned checkpoint with weights outside {CTC_PREFIX}* and the CTC projection: "
                f"{outside}; expected only the encoder and its head")
        weights = {k[len(CTC_PREFIX):]: v for k, v in weights.items()}
        normalize = cfg.task.get("normalize", inner.task.get("normalize", False))
        return _load_fairseq(inner_kind, inner.model, inner.task, weights, None, name, dropped,
                             f"CTC fine-tuned {inner.model._name} ({cfg.model._name}, {era})", normalize)
    dictionaries = None
    task_state = state.get("task_state") or {}
    if kind == "hubert" and task_state.get("dictionaries") is not None:
        dictionaries = list(task_state["dictionaries"])
    source = f"fairseq {cfg.model._name} pre-training ({era}, " + \
        ("task_state" if task_state else "no task_state") + ")"
    return _load_fairseq(kind, cfg.model, cfg.task, state["model"], dictionaries, name, [], source)


def load_backbone(path: str, trust: bool = False) -> Backbone:
    """Load any supported checkpoint file or exported folder at ``path`` as a :class:`Backbone` (strict, eval).

    Raises :class:`BackboneCheckpointError` naming the file and what was expected when it is not one.
    """
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json")):
        return load_backbone_safetensors(path)
    state = read_checkpoint(path, trust=trust)
    b = load_backbone_state(state, path)
    logger.info("%s: %s, %s backbone, %d layers, dim %d, normalize %s", path, b.source, b.kind, b.num_layers,
                b.embed_dim, b.normalize)
    return b


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
    model = _strip_heads(kind, _build_fairseq_model(kind, model_cfg, task_cfg, None))
    return _finish(kind, model, dict(spec), model_cfg.encoder_embed_dim, task_cfg.get("normalize", False))


# ------------------------------------------------------------------------------------------- safetensors
def save_backbone_safetensors(backbone: Backbone, out_dir: str) -> Dict[str, str]:
    """Write ``backbone`` as ``out_dir/model.safetensors`` (its own weight names, heads removed) and
    ``out_dir/config.json`` (``{"format", "kind", "normalize", "spec"}``); :func:`load_backbone` reads the
    folder back. Returns the two paths."""
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous().clone() for k, v in backbone.model.state_dict().items()}
    paths = {"config": os.path.join(out_dir, "config.json"), "weights": os.path.join(out_dir, "model.safetensors")}
    save_file(weights, paths["weights"] + ".tmp", metadata={"format": EXPORT_FORMAT})
    os.replace(paths["weights"] + ".tmp", paths["weights"])
    config = {"format": EXPORT_FORMAT, "kind": backbone.kind, "normalize": backbone.normalize,
              "source": backbone.source, "spec": backbone.spec}
    with open(paths["config"] + ".tmp", "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    os.replace(paths["config"] + ".tmp", paths["config"])
    return paths


def load_backbone_safetensors(folder: str) -> Backbone:
    """A folder written by :func:`save_backbone_safetensors` as a :class:`Backbone` (strict)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    cfg_path, weights_path = os.path.join(folder, "config.json"), os.path.join(folder, "model.safetensors")
    try:
        with open(cfg_path) as f:
            config = json.load(f)
    except json.JSONDecodeError as e:
        raise BackboneCheckpointError(f"{cfg_path}: not valid JSON ({e}); expected the config written by "
                                      f"--format safetensors") from e
    if not isinstance(config, dict) or config.get("format") != EXPORT_FORMAT:
        hf = isinstance(config, dict) and config.get("model_type")
        raise BackboneCheckpointError(
            f"{cfg_path}: " + (f"a Hugging Face transformers {hf!r} folder (load it with transformers' "
                               f"AutoModel.from_pretrained)" if hf else f"found {_describe(config)}") +
            f"; expected a folder written by --format safetensors (config.json with format {EXPORT_FORMAT!r})")
    if not os.path.isfile(weights_path):
        raise BackboneCheckpointError(f"{folder}: model.safetensors is missing next to config.json")
    try:
        weights = load_file(weights_path)
    except (SafetensorError, OSError) as e:
        raise BackboneCheckpointError(f"{weights_path} is truncated or corrupted ({e}); expected the weights "
                                      f"written by --format safetensors") from e
    b = build_backbone_from_spec(config["spec"])
    strict_load(b.model, weights, weights_path)
    b.model.eval()
    b.source, b.normalize = f"safetensors export ({config.get('source', '')})", bool(config["normalize"])
    return b


# ------------------------------------------------------------------------------------- release-format export
def export_backbone(backbone_weights: Mapping[str, torch.Tensor], original: str, out: str,
                    trust: bool = False) -> Tuple[str, int]:
    """Write ``backbone_weights`` in the release format of the checkpoint ``original``.

    The output is the original file with its backbone weights replaced: same top-level structure, config,
    ``task_state`` and pre-training heads (which fine-tuning does not touch). ``last_optimizer_state`` is
    dropped, since it belongs to the old weights. Every backbone key must exist in the original with the same
    shape (under ``w2v_encoder.w2v_model.`` for a CTC fine-tuned original). Returns ``(kind, number of tensors
    replaced)``.
    """
    state = read_checkpoint(original, trust=trust)
    kind = checkpoint_kind(state, original)
    if kind == "wavlm":
        from fairseq_plugins.modules.wavlm import save_wavlm_release

        save_wavlm_release(dict(backbone_weights), state["cfg"], out)
        return kind, len(backbone_weights)
    prefix = CTC_PREFIX if kind == "ctc" else ""
    backbone_weights = {prefix + k: v for k, v in backbone_weights.items()}
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
