"""Frozen upstreams for the probes: any checkpoint -> every hidden layer, as SUPERB's upstream interface.

An upstream maps a batch of 16 kHz waveforms to the hidden states of ALL its layers, the transformer input
included (``L = num_transformer_layers + 1`` states, SUPERB's convention), each ``B x T x C`` at 50 Hz, plus
a ``B x T`` padding mask (True = padding). It is always in eval mode and runs without gradients.

Sources:

- Speech encoders -- fairseq HuBERT / wav2vec 2.0 checkpoints in every shape they ship (2021 releases whose
  task points at label directories on the authors' cluster, pre-hydra ``args`` files, CTC fine-tuned ones),
  WavLM release files and folders exported with ``--format safetensors`` -- through the plugin's one loader,
  ``fairseq_plugins.modules.backbones.load_backbone`` (no task is rebuilt, so no label file is read).
- The plugin's own training checkpoints (``slicer``, ``simsiam_recon``, ``laser_finetune`` ...) through
  ``fairseq.checkpoint_utils.load_model_ensemble_and_task`` with ``data`` overridden to the manifest
  directory. Checkpoints of plugins outside this package need ``--user-dir``
  (``fairseq.utils.import_user_module``) before loading; ``NAME=fairseq:PATH`` forces fairseq's loader.
- Baselines: ``logmel`` (80-bin log-mel, 25 ms window, 20 ms hop: a 1-layer upstream) and ``random`` (the
  first checkpoint's architecture, freshly initialised with a fixed seed by the model's own constructor).

Layers are captured with forward hooks on the model's transformer encoder (the shallowest module with a
``layers`` ModuleList, preferring one with ``pos_conv``): the encoder's input (after the conv front end and
projection) is state 0, each layer's output a further state, and the encoder's own output replaces the last
state (it differs only for ``layer_norm_first`` models, whose final LayerNorm SUPERB also includes). This works
for fairseq's ``TransformerEncoder``, WavLM's encoder and plugin models that wrap one, whatever
``extract_features`` returns. The model is driven through ``extract_features(source, padding_mask, mask=False)``.
"""
import copy
import inspect
import logging
import os
from argparse import Namespace
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from fairseq_plugins.data.audio import normalize_waveform

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
FRAME_HOP = 320  # 20 ms at 16 kHz
BASELINES = ("logmel", "random")
KINDS = ("auto", "fairseq", "wavlm")


class Upstream(nn.Module):
    """Base class: ``forward(wavs B x S, padding_mask B x S) -> ([L x (B x T x C)], B x T mask or None)``."""

    name: str = "upstream"
    kind: str = "?"

    def __init__(self):
        super().__init__()
        self.info: Dict[str, object] = {}

    @property
    def num_layers(self) -> int:
        """Number of hidden states returned (transformer layers + 1 for the input)."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    def extract(self, wav: torch.Tensor) -> torch.Tensor:
        """One unpadded utterance (1-D float tensor) -> ``L x T x C`` float32 tensor on the CPU."""
        states, _ = self(wav.to(self.device).unsqueeze(0), None)
        return torch.stack([h[0] for h in states]).float().cpu()


class LogMelUpstream(Upstream):
    """80-bin log-mel filterbank at 50 Hz as a 1-layer upstream (the floor of every table).

    Frame ``i`` is the 25 ms window centred on sample ``320 i + 160`` (the centre of label frame ``i``);
    an utterance of ``n`` samples gives ``n // 320`` frames.
    """

    kind = "logmel"

    def __init__(self, n_mels: int = 80, win: int = 400, hop: int = FRAME_HOP, name: str = "logmel"):
        super().__init__()
        from fairseq_plugins.modules.logmel import LogMel

        self.name = name
        self.win, self.hop = win, hop
        # one home for log-mels: framing "label" = window centred on the label frame, n // hop frames
        self.logmel = LogMel(SAMPLE_RATE, n_fft=win, win_length=win, hop_length=hop, n_mels=n_mels, f_min=0.0,
                             f_max=None, eps=1e-6, framing="label", time_first=True)
        self.info = {"kind": "logmel", "n_mels": n_mels, "win": win, "hop": hop}

    @property
    def num_layers(self) -> int:
        return 1

    def _one(self, wav: torch.Tensor) -> torch.Tensor:
        return self.logmel(wav.float().view(1, -1))[0]  # T x n_mels

    @torch.no_grad()
    def forward(self, wavs: torch.Tensor, padding_mask: Optional[torch.Tensor] = None):
        lengths = [wavs.size(1)] * wavs.size(0) if padding_mask is None else (~padding_mask).sum(1).tolist()
        feats = [self._one(w[: int(n)]) for w, n in zip(wavs, lengths)]
        t_max = max(f.size(0) for f in feats)
        out = wavs.new_zeros(len(feats), t_max, feats[0].size(1))
        mask = torch.ones(len(feats), t_max, dtype=torch.bool, device=wavs.device)
        for i, f in enumerate(feats):
            out[i, : f.size(0)] = f
            mask[i, : f.size(0)] = False
        return [out], (mask if padding_mask is not None else None)


def find_encoder(model: nn.Module) -> Tuple[str, nn.Module]:
    """The transformer encoder of a wav2vec2/HuBERT/WavLM-like model: the shallowest module holding a
    ``layers`` ``nn.ModuleList`` (one with ``pos_conv`` preferred). Raises ``ValueError`` if none exists."""
    found = []
    for name, m in model.named_modules():
        layers = getattr(m, "layers", None)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            found.append((0 if hasattr(m, "pos_conv") else 1, name.count(".") if name else -1, name, m))
    if not found:
        raise ValueError(f"{type(model).__name__} has no transformer encoder (a module with a `layers` "
                         "ModuleList); cannot read its hidden layers")
    found.sort(key=lambda t: (t[0], t[1]))
    return found[0][2], found[0][3]


class HookedUpstream(Upstream):
    """A frozen wav2vec2/HuBERT/WavLM-like model whose layers are read with forward hooks.

    Args:
        model: the loaded model (put in eval mode, gradients off, here).
        name: the label used in tables.
        normalize: layer-normalise each waveform first (fairseq's task ``normalize``: large models).
        kind: where it came from (``fairseq``, ``wavlm``, ``random``).
        builder: ``() -> nn.Module`` building a fresh, randomly initialised model of the same architecture
            (used by the ``random`` baseline), or None.
    """

    def __init__(self, model: nn.Module, name: str, normalize: bool = False, kind: str = "fairseq",
                 builder: Optional[Callable[[], nn.Module]] = None):
        super().__init__()
        if hasattr(model, "w2v_encoder"):  # fine-tuned CTC models wrap the pre-trained one
            model = model.w2v_encoder.w2v_model
        self.model = model.eval().requires_grad_(False)
        self.name, self.kind, self.normalize = name, kind, bool(normalize)
        self.builder = builder
        self.encoder_name, self.encoder = find_encoder(self.model)
        params = inspect.signature(self.model.extract_features).parameters
        self._pass_mask = "mask" in params
        self.info = {"kind": kind, "model": type(model).__name__, "encoder": self.encoder_name or "<model>",
                     "transformer_layers": len(self.encoder.layers), "normalize": self.normalize,
                     "parameters": sum(p.numel() for p in self.model.parameters())}

    @property
    def num_layers(self) -> int:
        return len(self.encoder.layers) + 1

    def train(self, mode: bool = True):  # always frozen
        return super().train(False)

    @torch.no_grad()
    def forward(self, wavs: torch.Tensor, padding_mask: Optional[torch.Tensor] = None):
        """``wavs``: ``B x S`` float, ``padding_mask``: ``B x S`` bool (True = padding) or None.

        Returns ``(states, mask)``: ``L`` tensors ``B x T x C`` (state 0 = transformer input) and the frame
        padding mask ``B x T`` (None when no padding mask was given).
        """
        if self.normalize:
            wavs = normalize_waveform(wavs, padding_mask)
        captured: Dict[str, object] = {}
        layer_out: List[torch.Tensor] = []

        def pre_hook(module, args, kwargs):
            if "input" not in captured:
                captured["input"] = args[0] if args else kwargs["x"]
                pm = kwargs.get("padding_mask", args[1] if len(args) > 1 else None)
                captured["mask"] = pm

        def layer_hook(module, args, output):
            if len(layer_out) < len(self.encoder.layers):
                layer_out.append(output[0] if isinstance(output, tuple) else output)

        def post_hook(module, args, kwargs, output):
            if "output" not in captured:
                captured["output"] = output[0] if isinstance(output, tuple) else output

        handles = [self.encoder.register_forward_pre_hook(pre_hook, with_kwargs=True),
                   self.encoder.register_forward_hook(post_hook, with_kwargs=True)]
        handles += [layer.register_forward_hook(layer_hook) for layer in self.encoder.layers]
        try:
            kwargs = {"mask": False} if self._pass_mask else {}
            self.model.extract_features(wavs, padding_mask=padding_mask, **kwargs)
        finally:
            for h in handles:
                h.remove()
        if "input" not in captured or len(layer_out) != len(self.encoder.layers):
            raise RuntimeError(f"{self.name}: extract_features did not run the encoder "
                               f"{self.encoder_name!r} through all {len(self.encoder.layers)} layers "
                               f"(captured {len(layer_out)}); is layer drop on or output_layer set?")
        x0 = captured["input"]  # B x T x C
        t = x0.size(1)
        states = [x0]
        for h in layer_out:  # T' x B x C (T' >= T when the encoder pads to a multiple)
            states.append(h.transpose(0, 1)[:, :t])
        final = captured.get("output")
        if isinstance(final, torch.Tensor) and final.dim() == 3 and final.size(0) == x0.size(0):
            states[-1] = final[:, :t]
        mask = captured.get("mask")
        if isinstance(mask, torch.Tensor):
            mask = mask[:, :t]
        return states, (mask if padding_mask is not None else None)


# ------------------------------------------------------------------------------------------------------
# loading
def detect_kind(state: Dict) -> str:
    """``wavlm`` for a WavLM release file (flat ``cfg`` dict with ``encoder_layers`` and no task), else
    ``fairseq``."""
    from fairseq_plugins.modules.backbones import is_wavlm_release

    return "wavlm" if is_wavlm_release(state) else "fairseq"


def import_user_dir(user_dir: Optional[str]) -> None:
    """``fairseq.utils.import_user_module`` for plugin checkpoints (loading does not do it)."""
    if user_dir:
        from fairseq import utils

        utils.import_user_module(Namespace(user_dir=os.path.abspath(user_dir)))


def load_fairseq_upstream(path: str, name: str, manifest_dir: Optional[str] = None) -> HookedUpstream:
    """A checkpoint of one of the plugin's own training models (``slicer``, ``simsiam_recon``,
    ``laser_finetune`` ...) through fairseq's ``load_model_ensemble_and_task``, with ``data`` pointed at the
    manifest directory. Released encoders go through :func:`load_backbone_upstream` instead."""
    from fairseq import checkpoint_utils

    overrides = {"data": os.path.abspath(manifest_dir)} if manifest_dir else {}
    try:
        models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([path], arg_overrides=overrides)
    except Exception as e:
        raise RuntimeError(f"cannot load fairseq checkpoint {path}: {type(e).__name__}: {e}. Plugin "
                           "checkpoints need --user-dir; WavLM release files load with kind 'wavlm'.") from e
    normalize = bool(getattr(cfg.task, "normalize", False))
    model_cfg = cfg.model

    def builder() -> nn.Module:
        return task.build_model(model_cfg)

    up = HookedUpstream(models[0], name, normalize=normalize, kind="fairseq", builder=builder)
    up.info.update(checkpoint=os.path.abspath(path), task=getattr(cfg.task, "_name", None))
    return up


def load_backbone_upstream(path: str, name: str, state: Optional[Dict] = None) -> HookedUpstream:
    """A released / fine-tuned / exported speech encoder through the plugin's one loader
    (:func:`fairseq_plugins.modules.backbones.load_backbone`): no task is rebuilt, so no label directory is
    read; pre-training and CTC heads are dropped by name. ``state``: the file's dict when already read."""
    from fairseq_plugins.modules.backbones import build_backbone_from_spec, load_backbone, load_backbone_state

    b = load_backbone(path) if state is None else load_backbone_state(state, path)
    spec = b.spec

    def builder() -> nn.Module:
        return build_backbone_from_spec(spec).model

    up = HookedUpstream(b.model, name, normalize=b.normalize, kind=b.kind, builder=builder)
    up.info.update(checkpoint=os.path.abspath(path), source=b.source, heads_dropped=b.dropped)
    return up


def load_upstream(path: str, name: str, kind: str = "auto", manifest_dir: Optional[str] = None) -> Upstream:
    """Load a checkpoint file as a frozen upstream; ``kind`` is ``auto``, ``fairseq`` (fairseq's own loader)
    or ``wavlm``. ``auto``: speech encoders (HuBERT / wav2vec 2.0 / WavLM, pre-trained, CTC fine-tuned or
    exported) through the shared backbone loader, the plugin's own training checkpoints through fairseq.
    A file that is neither raises ``BackboneCheckpointError`` (a ValueError) naming it."""
    from fairseq_plugins.modules.backbones import is_plugin_training_checkpoint, read_checkpoint

    if kind not in KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}; expected one of {', '.join(KINDS)}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {name}={path} not found")
    logger.info("loading %s (%s) from %s", name, kind, path)
    if kind == "fairseq":
        return load_fairseq_upstream(path, name, manifest_dir)
    if os.path.isdir(path):
        return load_backbone_upstream(path, name)
    state = read_checkpoint(path)
    if kind == "auto" and is_plugin_training_checkpoint(state):
        del state
        return load_fairseq_upstream(path, name, manifest_dir)
    return load_backbone_upstream(path, name, state)


def _reset_all(model: nn.Module) -> None:
    for m in model.modules():
        if hasattr(m, "reset_parameters") and callable(m.reset_parameters):
            m.reset_parameters()


def random_like(up: Upstream, seed: int = 0, name: str = "random") -> HookedUpstream:
    """The same architecture as ``up``, randomly initialised under ``torch.manual_seed(seed)``.

    Uses the model's own constructor (fairseq: ``task.build_model(cfg.model)``), so the initialisation is the
    one pre-training starts from; if that fails, every submodule's ``reset_parameters`` (logged).
    """
    if not isinstance(up, HookedUpstream):
        raise ValueError(f"the random baseline needs a checkpoint upstream, got {type(up).__name__}")
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    np_state = np.random.get_state()
    np.random.seed(seed)
    try:
        model = None
        if up.builder is not None:
            try:
                model = up.builder()
            except Exception as e:  # a model whose constructor needs files we do not have
                logger.warning("rebuilding %s failed (%s); re-initialising a copy with reset_parameters",
                               up.name, e)
        if model is None:
            model = copy.deepcopy(up.model)
            _reset_all(model)
    finally:
        torch.random.set_rng_state(state)
        np.random.set_state(np_state)
    out = HookedUpstream(model, name, normalize=up.normalize, kind="random")
    out.info.update(architecture_of=up.name, seed=seed)
    return out


def parse_checkpoint_arg(spec: str) -> Tuple[str, str, str]:
    """``NAME=PATH``, ``NAME=KIND:PATH`` or ``PATH`` -> ``(name, kind, path)``; the name defaults to the file
    name without ``.pt`` (with its parent directory when the file is ``checkpoint_*.pt``)."""
    name, sep, rest = spec.partition("=")
    if not sep:
        name, rest = "", spec
    kind = "auto"
    head, colon, tail = rest.partition(":")
    if colon and head in KINDS:
        kind, rest = head, tail
    if not rest:
        raise ValueError(f"--checkpoints entry {spec!r}: expected NAME=PATH")
    if not name:
        stem = os.path.splitext(os.path.basename(rest))[0]
        parent = os.path.basename(os.path.dirname(os.path.abspath(rest)))
        name = f"{parent}/{stem}" if stem.startswith("checkpoint") and parent else stem
    if name in BASELINES:
        raise ValueError(f"--checkpoints name {name!r} is reserved for a baseline; pick another name")
    return name, kind, rest
