"""Model ``laser_finetune``: a released HuBERT / WavLM / wav2vec 2.0 backbone + a frame projection, for LASER.

LASER (Meghanani & Hain, Interspeech 2024, arXiv 2406.09153): both views pass through the same trainable model;
frames of the last transformer layer go through Linear(C -> 256) and are L2-normalised; only the top two
transformer layers and ``encoder.layer_norm`` train (chosen by module name, never by parameter index); layer-drop
is off. The projection is discarded after training: ``python -m fairseq_plugins.export_laser`` writes the tuned
backbone back in its release format. For SCORE (ICASSP 2024), ``frozen_reference`` keeps a frozen copy of the
original backbone that encodes view 2 (``reference_dropout``: in train mode, as in the SCORE authors' code).

Padded batches: fairseq's wav2vec 2.0 / HuBERT Base extractor (``extractor_mode="default"``) normalises the first
conv layer with a GroupNorm over the whole (padded) time axis, so a padded item is encoded differently from the
same item alone. With ``encode_per_item`` (default) every item of a padded batch is encoded on its own, unpadded,
so features never depend on what the item was batched with (``tests/fidelity`` checks this to 1e-5).

The backbone is read from ``checkpoint`` when the model is first built; its architecture is then stored in
``backbone_spec`` (like fairseq's ``w2v_args``), so a fine-tuned checkpoint reloads without the original file.
"""
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from fairseq.dataclass import FairseqDataclass
from fairseq.models import BaseFairseqModel
from omegaconf import MISSING, OmegaConf
from torch import nn

from fairseq_plugins.compat import register
from fairseq_plugins.modules.backbones import Backbone, build_backbone_from_spec, encoder_features, load_backbone

logger = logging.getLogger(__name__)


@dataclass
class LaserFinetuneModelConfig(FairseqDataclass):
    checkpoint: str = field(
        default=MISSING, metadata={"help": "released backbone to fine-tune: fairseq HuBERT / wav2vec 2.0 "
                                           "checkpoint or WavLM release file (absolute path)"})
    projection_dim: int = field(default=256, metadata={"help": "output size of the frame projection (paper 256)"})
    num_trainable_layers: int = field(
        default=2, metadata={"help": "number of top transformer layers that train (paper: 2, i.e. 10 and 11)"})
    train_encoder_layer_norm: bool = field(
        default=True, metadata={"help": "also train encoder.layer_norm (paper: yes)"})
    extra_trainable: List[str] = field(
        default_factory=list,
        metadata={"help": "further backbone module names (exact, e.g. 'post_extract_proj') to train"})
    output_layer: int = field(
        default=0, metadata={"help": "transformer layer whose output is aligned (1-based); 0 = the last"})
    frozen_reference: bool = field(
        default=False, metadata={"help": "keep a frozen copy of the original backbone to encode view 2 (SCORE)"})
    reference_dropout: bool = field(
        default=False, metadata={"help": "run the frozen SCORE copy in train mode (dropout on, layer-drop off), as "
                                         "the SCORE authors do (their s3prl upstream is never put in eval mode); "
                                         "false = eval mode, a fixed function of its input"})
    projection_layers: int = field(
        default=1, metadata={"help": "1 = Linear(C -> projection_dim) (LASER, SCORE HuBERT); 2 = Linear -> ReLU -> "
                                     "Linear (SCORE WavLM, content_preserving_wavlm/expert.py)"})
    encode_per_item: bool = field(
        default=True, metadata={"help": "encode each item of a padded batch alone, so padding never enters the "
                                        "first conv layer's GroupNorm; false = one padded forward (faster, but an "
                                        "item's features then depend on the batch)"})
    backbone_spec: Optional[Any] = field(
        default=None, metadata={"help": "filled in automatically: the backbone architecture, so that the "
                                        "fine-tuned checkpoint reloads without the original file"})


def trainable_module_names(backbone: Backbone, cfg: LaserFinetuneModelConfig) -> List[str]:
    """Module names (relative to the backbone) that train under ``cfg``."""
    n = backbone.num_layers
    k = cfg.num_trainable_layers
    if not 0 <= k <= n:
        raise ValueError(f"model.num_trainable_layers={k}: the backbone has {n} transformer layers")
    names = [f"encoder.layers.{i}" for i in range(n - k, n)]
    if cfg.train_encoder_layer_norm:
        names.append("encoder.layer_norm")
    return names + list(cfg.extra_trainable)


def freeze_except(module: nn.Module, names: List[str]) -> List[str]:
    """Freeze every parameter of ``module`` except those under the named sub-modules.

    Names are exact module paths (``named_modules``); a name that matches no module raises, listing the
    closest ones. Returns the names of the parameters left trainable.
    """
    modules = dict(module.named_modules())
    unknown = [n for n in names if n not in modules]
    if unknown:
        top = sorted({m.split(".")[0] for m in modules if m})
        raise ValueError(f"trainable module(s) {unknown} not found in the backbone; its top-level modules are "
                         f"{top} and its layers are named encoder.layers.<i>")
    pattern = re.compile("|".join(rf"^{re.escape(n)}\." for n in names)) if names else None
    trainable = []
    for pname, p in module.named_parameters():
        p.requires_grad = bool(pattern and pattern.match(pname))
        if p.requires_grad:
            trainable.append(pname)
    return trainable


@register("model", "laser_finetune", dataclass=LaserFinetuneModelConfig)
class LaserFinetuneModel(BaseFairseqModel):
    def __init__(self, cfg: LaserFinetuneModelConfig, backbone: Backbone):
        super().__init__()
        self.cfg = cfg
        self.kind = backbone.kind
        self.normalize = backbone.normalize
        self.backbone = backbone.model
        self.num_layers = backbone.num_layers
        if cfg.output_layer < 0 or cfg.output_layer > backbone.num_layers:
            raise ValueError(f"model.output_layer={cfg.output_layer}: expected 0 (last) to {backbone.num_layers}")
        if cfg.projection_layers == 1:
            self.proj = nn.Linear(backbone.embed_dim, cfg.projection_dim)
        elif cfg.projection_layers == 2:
            self.proj = nn.Sequential(nn.Linear(backbone.embed_dim, cfg.projection_dim), nn.ReLU(),
                                      nn.Linear(cfg.projection_dim, cfg.projection_dim))
        else:
            raise ValueError(f"model.projection_layers={cfg.projection_layers}: expected 1 or 2")
        self.trainable = freeze_except(self.backbone, trainable_module_names(backbone, cfg))
        self.reference = None
        if cfg.frozen_reference:  # a rebuilt copy (deepcopy fails on fairseq's weight-normed pos_conv)
            self.reference = build_backbone_from_spec(backbone.spec).model
            self.reference.load_state_dict(self.backbone.state_dict())
            for p in self.reference.parameters():
                p.requires_grad = False
            self._disable_layerdrop(self.reference)
        n_train = sum(p.numel() for p in self.backbone.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in self.backbone.parameters())
        logger.info("laser_finetune: %s backbone, %d layers, dim %d; training %d of %d backbone parameters (%s)",
                    self.kind, self.num_layers, backbone.embed_dim, n_train, n_all,
                    ", ".join(trainable_module_names(backbone, cfg)))

    @classmethod
    def build_model(cls, cfg: LaserFinetuneModelConfig, task=None) -> "LaserFinetuneModel":
        if cfg.backbone_spec is None:
            backbone = load_backbone(cfg.checkpoint)
            cfg.backbone_spec = backbone.spec
        else:
            spec = cfg.backbone_spec
            spec = OmegaConf.to_container(spec, resolve=True) if OmegaConf.is_config(spec) else spec
            backbone = build_backbone_from_spec(spec)
        cls._disable_layerdrop(backbone.model)
        return cls(cfg, backbone)

    @staticmethod
    def _disable_layerdrop(model: nn.Module) -> None:
        enc = model.encoder
        if getattr(enc, "layerdrop", 0.0):
            logger.info("laser_finetune: encoder layer-drop %.3f -> 0 for fine-tuning", enc.layerdrop)
        enc.layerdrop = 0.0

    def train(self, mode: bool = True):
        super().train(mode)
        if self.reference is not None:  # eval: a fixed function of its input; SCORE authors: dropout on
            self.reference.train(mode and self.cfg.reference_dropout)
        return self

    def _encode(self, backbone: nn.Module, source: torch.Tensor, padding_mask: Optional[torch.Tensor]):
        """``B x S`` -> (``B x T x C`` features, ``B x T`` padding mask or None); see ``encode_per_item``."""
        if not (self.cfg.encode_per_item and padding_mask is not None and bool(padding_mask.any())):
            return self._encode_batch(backbone, source, padding_mask)
        lengths = (~padding_mask).sum(1).tolist()
        if not any(lengths):
            raise ValueError("laser_finetune: every item of the batch is all padding")
        feats = {i: self._encode_batch(backbone, wav[:n].unsqueeze(0), None)[0][0]
                 for i, (wav, n) in enumerate(zip(source, lengths)) if n > 0}
        # an all-padding item gets zero frames: the criterion names its sample id
        some = next(iter(feats.values()))
        feats = [feats.get(i, some.new_zeros(0, some.size(-1))) for i in range(len(lengths))]
        t = max(f.size(0) for f in feats)
        x = some.new_zeros(len(feats), t, some.size(-1))
        frame_pad = torch.ones(len(feats), t, dtype=torch.bool, device=x.device)
        for i, f in enumerate(feats):
            x[i, : f.size(0)] = f
            frame_pad[i, : f.size(0)] = False
        return x, frame_pad

    def _encode_batch(self, backbone: nn.Module, source: torch.Tensor, padding_mask: Optional[torch.Tensor]):
        if self.normalize:
            from fairseq_plugins.data.audio import normalize_waveform

            source = normalize_waveform(source, padding_mask)
        return encoder_features(backbone, source, padding_mask, self.cfg.output_layer or None)

    def forward(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None,
                reference: bool = False) -> Dict[str, torch.Tensor]:
        """``source`` B x S waveform -> ``x`` B x T x projection_dim (unit-norm frames) and ``lengths`` [B].

        ``reference=True`` encodes with the frozen SCORE copy (no gradient reaches it).
        """
        if reference:
            if self.reference is None:
                raise ValueError("reference=True needs model.frozen_reference=true (the SCORE variant)")
            with torch.no_grad():
                x, pad = self._encode(self.reference, source, padding_mask)
        else:
            x, pad = self._encode(self.backbone, source, padding_mask)
        z = F.normalize(self.proj(x), dim=-1)
        if pad is None:
            lengths = torch.full((z.size(0),), z.size(1), dtype=torch.long, device=z.device)
        else:
            lengths = (~pad).sum(1)
        return {"x": z, "lengths": lengths, "padding_mask": pad}

    def extract_features(self, source, padding_mask=None, mask=False, output_layer=None, **kwargs):
        """The backbone's features (B x T x C, padding_mask), for downstream probes."""
        return encoder_features(self.backbone, source, padding_mask, output_layer)

    def backbone_state_dict(self) -> Dict[str, torch.Tensor]:
        """The tuned backbone weights under the backbone's own (release) key names."""
        if hasattr(self.backbone, "release_state_dict"):  # WavLM: module names -> release names
            return self.backbone.release_state_dict()
        return {k: v.detach().clone() for k, v in self.backbone.state_dict().items()}
