"""The HuBERT encoder that the plugin's pre-training models share: fairseq's
:class:`~fairseq.models.hubert.HubertModel` (``ConvFeatureExtractionModel``, ``TransformerEncoder``, span masking
with ``mask_emb``; same parameter names, so a checkpoint's encoder reads like HuBERT's and fairseq's
``hubert_ctc`` / ``wav2vec_ctc`` fine-tuning and the probes take it) with the span masks keyed by (seed, update,
rank, micro-batch) (:mod:`fairseq_plugins.modules.span_mask`), the log-mel target of masked reconstruction
(:class:`~fairseq_plugins.modules.heads.LogMelTarget`, kept float32 under bf16/fp16 through
:mod:`fairseq_plugins.modules.precision`), masked mean pooling, HuBERT/wav2vec2-style ``extract_features`` and
removal of pre-training heads before fine-tuning. Subclasses (``simsiam_recon``, ``mgf``) add heads, list them
in ``PRETRAINING_MODULES`` and write ``forward``. Registers nothing.
"""
import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from fairseq.dataclass import ChoiceEnum
from fairseq.models.hubert.hubert import HubertConfig, HubertModel

from fairseq_plugins.modules.heads import LogMelTarget
from fairseq_plugins.modules.precision import apply_keeping
from fairseq_plugins.modules.span_mask import CHANNEL, TIME, SpanMaskKeys, seeded_span_mask

logger = logging.getLogger(__name__)

RECON_NORM_CHOICES = ChoiceEnum(["none", "utterance"])


@dataclass
class SeededHubertConfig(HubertConfig):
    """HuBERT's encoder config without frame labels, plus the log-mel reconstruction target."""

    label_rate: float = field(
        default=50.0, metadata={"help": "unused (no frame labels); kept for HubertModel"})
    recon_n_mels: int = field(default=80, metadata={"help": "mel bands of the reconstruction target"})
    recon_win_length: int = field(
        default=400, metadata={"help": "target window in samples (25 ms; = the conv receptive field)"})
    recon_hop_length: int = field(
        default=320, metadata={"help": "target hop in samples (20 ms; must equal the conv stride)"})
    recon_head_hidden_dim: int = field(
        default=0, metadata={"help": "hidden dim of the reconstruction head (0: a single linear layer)"})
    recon_target_norm: RECON_NORM_CHOICES = field(
        default="none",
        metadata={"help": "'none': raw log(mel+1e-5); 'utterance': mean/var normalised per utterance and "
                          "band"},
    )


class FeatureOutput(tuple):
    """``(x, padding_mask)`` as ``HubertModel.extract_features`` returns it, that also answers the
    wav2vec2-style keys ``"x"``, ``"padding_mask"``, ``"features"`` and ``"layer_results"`` (fairseq's
    ``Wav2VecEncoder`` reads those), plus :attr:`hidden_states`."""

    def __new__(cls, x, padding_mask, features=None, layer_results=None):
        obj = super().__new__(cls, (x, padding_mask))
        obj._extra = {"x": x, "padding_mask": padding_mask, "features": features,
                      "layer_results": layer_results or []}
        return obj

    def __getitem__(self, key):
        if isinstance(key, str):
            return self._extra[key]
        return super().__getitem__(key)

    def get(self, key, default=None):
        return self._extra.get(key, default)

    @property
    def hidden_states(self) -> List[torch.Tensor]:
        """B x T x C tensors: the transformer input, then the output of every layer that ran."""
        return [self._extra["features"]] + [lr[0].transpose(0, 1) for lr in self._extra["layer_results"]]


def conv_geometry(conv_feature_layers: str):
    """``(receptive_field, stride)`` in samples of a wav2vec2 conv spec string."""
    layers = eval(conv_feature_layers)  # noqa: S307  (fairseq's own format, parsed the same way by fairseq)
    rf, stride = 1, 1
    for _, k, s in layers:
        rf += (k - 1) * stride
        stride *= s
    return rf, stride


class SeededHubertEncoder(HubertModel):
    """See the module docstring. ``cfg``: a :class:`SeededHubertConfig`; ``task_cfg``: needs ``sample_rate``
    and ``seed`` (the mask seed)."""

    PRETRAINING_MODULES: Tuple[str, ...] = ()

    def __init__(self, cfg: SeededHubertConfig, task_cfg) -> None:
        super().__init__(cfg, task_cfg, dictionaries=[None])  # [None]: no label embeddings
        self.final_proj = None  # HuBERT's label-prediction projection is not used
        self.cfg = cfg
        rf, stride = conv_geometry(cfg.conv_feature_layers)
        if cfg.recon_hop_length != stride:
            raise ValueError(f"model.recon_hop_length={cfg.recon_hop_length} must equal the conv stride "
                             f"{stride} (one reconstruction target per encoder frame)")
        if cfg.recon_win_length != rf:
            logger.warning("recon_win_length=%d differs from the conv receptive field %d: target frame t is "
                           "centred %d samples off encoder frame t", cfg.recon_win_length, rf,
                           (cfg.recon_win_length - rf) // 2)
        self.logmel = LogMelTarget(task_cfg.sample_rate, cfg.recon_n_mels, cfg.recon_win_length,
                                   cfg.recon_hop_length)
        self.removed_prefixes: List[str] = []
        self.num_updates = 0
        self.mask_keys = SpanMaskKeys(task_cfg.seed)

    def _apply(self, fn, recurse: bool = True):
        # fairseq's bf16/fp16 training casts the whole model: the log-mel target front end stays float32
        return apply_keeping(super()._apply, fn, list(self.logmel.buffers()), recurse)

    # ------------------------------------------------------------------ encoder
    def encode_features(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> Dict:
        """Conv features, layer-normed and projected: the transformer input ``B x T x C``, the frame padding
        mask ``B x T`` (or None), HuBERT's ``features_pen`` and the pre-projection ``conv`` features."""
        features = self.forward_features(source)
        features_pen = features.float().pow(2).mean()
        features = self.layer_norm(features.transpose(1, 2))
        conv = features
        if padding_mask is not None:
            padding_mask = self.forward_padding_mask(features, padding_mask)
        if self.post_extract_proj is not None:
            features = self.post_extract_proj(features)
        features = self.dropout_input(features)
        return {"features": features, "padding_mask": padding_mask, "features_pen": features_pen,
                "conv": conv}

    def set_num_updates(self, num_updates: int) -> None:
        """fairseq calls this before every training forward (and after loading a checkpoint): the update number
        keys the span masks."""
        super().set_num_updates(num_updates)
        self.num_updates = int(num_updates)

    def apply_mask(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor], target_list=None):
        """HuBERT's span masking (``compute_mask_indices``, ``mask_emb``; channel masking for fine-tuning as
        HuBERT's), with every mask keyed by (seed, update, rank, micro-batch) through
        :class:`~fairseq_plugins.modules.span_mask.SpanMaskKeys`: repeatable, different on every rank and
        update, and the same after a resume. ``B x T x C -> (B x T x C, B x T bool or None)``; modifies ``x``."""
        B, T, C = x.shape
        keys = self.mask_keys.next(self.training, self.num_updates)
        mask_indices = self.time_mask((B, T), padding_mask, keys)
        if mask_indices is not None:
            mask_indices = mask_indices.to(x.device)
            x[mask_indices] = self.mask_emb.to(x.dtype)
        if self.mask_channel_prob > 0:
            channels = seeded_span_mask(
                (B, C), None, self.mask_channel_prob, self.mask_channel_length, keys + (CHANNEL,),
                self.mask_channel_selection, self.mask_channel_other, no_overlap=self.no_mask_channel_overlap,
                min_space=self.mask_channel_min_space,
            ).to(x.device)
            x[channels.unsqueeze(1).expand(-1, T, -1)] = 0
        return x, mask_indices

    def time_mask(self, shape: Tuple[int, int], padding_mask: Optional[torch.Tensor],
                  keys: Tuple[int, ...]) -> Optional[torch.Tensor]:
        """The ``B x T`` bool time mask of one masked forward (None when ``mask_prob`` is 0): HuBERT's spans
        (``mask_prob``, ``mask_length``) drawn with ``keys + (TIME,)``. Subclasses may add more span kinds."""
        if self.mask_prob <= 0:
            return None
        return seeded_span_mask(
            shape, padding_mask, self.mask_prob, self.mask_length, keys + (TIME,), self.mask_selection,
            self.mask_other, min_masks=2, no_overlap=self.no_mask_overlap, min_space=self.mask_min_space,
        )

    def run_transformer(self, features: torch.Tensor, padding_mask: Optional[torch.Tensor], mask: bool,
                        output_layer: Optional[int] = None) -> Dict:
        """Span-mask (HuBERT's ``apply_mask``, on a copy) and run the transformer; ``output_layer`` is
        1-based."""
        if mask:
            x, mask_indices = self.apply_mask(features.clone(), padding_mask, None)
        else:
            x, mask_indices = features, None
        x, layer_results = self.encoder(x, padding_mask=padding_mask,
                                        layer=None if output_layer is None else output_layer - 1)
        return {"x": x, "mask_indices": mask_indices, "layer_results": layer_results}

    def extract_features(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None,
                         mask: bool = False, ret_conv: bool = False,
                         output_layer: Optional[int] = None, **unused) -> FeatureOutput:
        """Like ``HubertModel.extract_features``: ``(x B x T x C, padding_mask B x T or None)``; ``x`` is the
        output of layer ``output_layer`` (1-based; default the last), or the conv features with ``ret_conv``.
        The result also has ``["layer_results"]`` and :attr:`FeatureOutput.hidden_states` for probes."""
        enc = self.encode_features(source, padding_mask)
        out = self.run_transformer(enc["features"], enc["padding_mask"], mask, output_layer)
        x = enc["conv"] if ret_conv else out["x"]
        return FeatureOutput(x, enc["padding_mask"], enc["features"], out["layer_results"])

    # ------------------------------------------------------------------ pooling and targets
    @staticmethod
    def masked_mean(x: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """Mean over non-padding frames: ``B x T x C, B x T -> B x C``."""
        if padding_mask is None:
            return x.mean(1)
        keep = (~padding_mask).to(x.dtype).unsqueeze(-1)
        return (x * keep).sum(1) / keep.sum(1).clamp(min=1.0)

    def recon_targets(self, wav: torch.Tensor, num_frames: int,
                      padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """``log(mel + 1e-5)`` targets ``B x num_frames x n_mels`` of ``wav`` (B x L)."""
        target = self.logmel(wav.float())  # float32 also under bf16/fp16 training
        if abs(target.size(1) - num_frames) > 1:
            raise RuntimeError(f"{target.size(1)} log-mel frames for {num_frames} encoder frames: check "
                               f"recon_win_length/recon_hop_length against conv_feature_layers")
        if target.size(1) < num_frames:  # at most one frame short: repeat the last one
            target = torch.cat([target, target[:, -1:].expand(-1, num_frames - target.size(1), -1)], 1)
        target = target[:, :num_frames]
        if self.cfg.recon_target_norm == "utterance":
            keep = torch.ones_like(target[..., 0]) if padding_mask is None else (~padding_mask).to(target)
            keep = keep.unsqueeze(-1)
            n = keep.sum(1, keepdim=True).clamp(min=1.0)
            mean = (target * keep).sum(1, keepdim=True) / n
            var = ((target - mean) ** 2 * keep).sum(1, keepdim=True) / n
            target = (target - mean) / (var + 1e-5).sqrt()
        return target

    # ------------------------------------------------------------------ fine-tuning support
    def remove_pretraining_modules(self) -> None:
        """Drop the SimSiam and reconstruction heads (for fine-tuning); later ``load_state_dict`` calls skip
        their keys and log how many were skipped."""
        super().remove_pretraining_modules()
        for name in self.PRETRAINING_MODULES:
            if getattr(self, name, None) is not None:
                setattr(self, name, None)
            if name not in self.removed_prefixes:
                self.removed_prefixes.append(name)

    def load_state_dict(self, state_dict, strict: bool = True, model_cfg=None, args=None):
        """Strict load, except that keys of heads removed by :meth:`remove_pretraining_modules` are skipped
        (fairseq's ``Wav2VecEncoder`` loads a pre-training checkpoint strictly after removing them)."""
        if self.removed_prefixes:
            prefixes = tuple(p + "." for p in self.removed_prefixes)
            skipped = [k for k in state_dict if k.startswith(prefixes)]
            if skipped:
                logger.info("skipping %d keys of removed pre-training heads (%s)", len(skipped),
                            ", ".join(sorted({k.split(".")[0] for k in skipped})))
                state_dict = {k: v for k, v in state_dict.items() if not k.startswith(prefixes)}
        return super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg, args=args)

    def get_extra_losses(self, net_output):
        return [], []

    def num_parameters(self) -> Dict[str, int]:
        """Parameter counts of the encoder and of each head (for logs and READMEs)."""
        counts = {"total": sum(p.numel() for p in self.parameters())}
        for name in self.PRETRAINING_MODULES:
            module = getattr(self, name, None)
            if module is not None:
                counts[name] = sum(p.numel() for p in module.parameters())
        counts["encoder"] = counts["total"] - sum(v for k, v in counts.items() if k != "total")
        return counts
