"""``simsiam_recon``: positive-sample contrast (SimSiam) + masked reconstruction on a wav2vec2/HuBERT encoder.

Paper: Zhang, Liu, Niu, Chen, Qu, "positive-sample contrast + masked reconstruction" self-supervised speech
pre-training, Journal on Communications 2022, 43(7):163-171 (a SimSiam-style siamese network on two augmented
views of raw speech, one branch through a predictor, the other under stop-gradient, no negatives, multi-task
with masked reconstruction). Details beyond the abstract are not public: every choice of the project's
reconstruction is a field of :class:`SimsiamReconConfig` (listed in examples/simsiam_recon/README.md).

The encoder is fairseq's HuBERT encoder reused by subclassing :class:`~fairseq.models.hubert.HubertModel`
(``ConvFeatureExtractionModel``, ``TransformerEncoder``, ``compute_mask_indices`` span masking with
``mask_emb``; same parameter names, so the encoder part of a checkpoint reads like HuBERT's). On top:

- utterance level: masked mean pooling over non-padding frames -> :class:`~fairseq_plugins.modules.heads.
  ProjectorMLP` (z) -> :class:`~fairseq_plugins.modules.heads.PredictorMLP` (p), per view;
- frame level (``frame_simsiam``, only with time-aligned views): the same on every frame;
- reconstruction: a linear head predicts ``log(mel + 1e-5)`` (80 mels, 25 ms window, 20 ms hop, one target
  per encoder frame) of the input view, or of the clean crop when the task provides ``target_source``.

Input layout: ``source`` is (V*B) x T, view-major (see :mod:`fairseq_plugins.data.multiview_dataset`).
:meth:`SimsiamReconModel.extract_features` matches ``HubertModel.extract_features`` (returns
``(features B x T x C, padding_mask)``) and also answers wav2vec2-style ``res["x"]``, ``res["padding_mask"]``,
``res["layer_results"]``, so fairseq's ``hubert_ctc`` and ``wav2vec_ctc`` encoders both accept it.

Registers the model ``simsiam_recon`` with config :class:`SimsiamReconConfig`.
"""
import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from fairseq.dataclass import ChoiceEnum
from fairseq.models.hubert.hubert import HubertConfig, HubertModel

from fairseq_plugins.compat import register
from fairseq_plugins.modules.heads import LogMelTarget, PredictorMLP, ProjectorMLP, ReconstructionHead
from fairseq_plugins.modules.precision import apply_keeping
from fairseq_plugins.modules.span_mask import CHANNEL, TIME, SpanMaskKeys, seeded_span_mask

logger = logging.getLogger(__name__)

MODEL_NAME = "simsiam_recon"
SIMSIAM_INPUT_CHOICES = ChoiceEnum(["masked", "unmasked"])
RECON_NORM_CHOICES = ChoiceEnum(["none", "utterance"])


@dataclass
class SimsiamReconConfig(HubertConfig):
    """HuBERT's encoder config plus the heads. ``mask_prob``/``mask_length`` keep HuBERT's meaning (span
    starts are drawn with probability ``mask_prob / mask_length`` per frame, so about ``mask_prob`` of the
    frames are covered before overlaps)."""

    label_rate: float = field(
        default=50.0, metadata={"help": "unused (no frame labels); kept for HubertModel"})
    mask_prob: float = field(
        default=0.15, metadata={"help": "fraction of frames covered by mask spans (before overlaps); design "
                                        "choice (the paper gives none): ~15%"})
    projector_dim: int = field(default=2048, metadata={"help": "SimSiam projector output dim (z)"})
    projector_hidden_dim: int = field(default=2048, metadata={"help": "SimSiam projector hidden dim"})
    projector_layers: int = field(default=3, metadata={"help": "linear layers in the projector (SimSiam: 3)"})
    predictor_hidden_dim: int = field(
        default=512, metadata={"help": "predictor bottleneck (SimSiam: projector_dim / 4)"})
    bn_per_view: bool = field(
        default=True,
        metadata={"help": "BatchNorm statistics of the heads per view (as SimSiam's separate forward "
                          "passes); joint over all views when false or when a view has a single item"},
    )
    frame_simsiam: bool = field(
        default=False,
        metadata={"help": "also apply SimSiam per frame with separate heads; needs task.aligned_views=true"},
    )
    simsiam_input: SIMSIAM_INPUT_CHOICES = field(
        default="masked",
        metadata={"help": "'masked': SimSiam and reconstruction share one masked encoder pass; 'unmasked': a "
                          "second pass without masks feeds SimSiam (about 2x encoder cost)"},
    )
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


@register("model", MODEL_NAME, dataclass=SimsiamReconConfig)
class SimsiamReconModel(HubertModel):
    """See the module docstring. Built by the ``multiview_audio_pretraining`` task."""

    PRETRAINING_MODULES = ("projector", "predictor", "frame_projector", "frame_predictor", "recon_head")

    def __init__(self, cfg: SimsiamReconConfig, task_cfg) -> None:
        super().__init__(cfg, task_cfg, dictionaries=[None])  # [None]: no label embeddings
        self.final_proj = None  # HuBERT's label-prediction projection is not used
        self.cfg = cfg
        dim = cfg.encoder_embed_dim
        self.projector = ProjectorMLP(dim, cfg.projector_hidden_dim, cfg.projector_dim, cfg.projector_layers)
        self.predictor = PredictorMLP(cfg.projector_dim, cfg.predictor_hidden_dim)
        self.frame_projector = self.frame_predictor = None
        if cfg.frame_simsiam:
            self.frame_projector = ProjectorMLP(dim, cfg.projector_hidden_dim, cfg.projector_dim,
                                                cfg.projector_layers)
            self.frame_predictor = PredictorMLP(cfg.projector_dim, cfg.predictor_hidden_dim)
        rf, stride = conv_geometry(cfg.conv_feature_layers)
        if cfg.recon_hop_length != stride:
            raise ValueError(f"model.recon_hop_length={cfg.recon_hop_length} must equal the conv stride "
                             f"{stride} (one reconstruction target per encoder frame)")
        if cfg.recon_win_length != rf:
            logger.warning("recon_win_length=%d differs from the conv receptive field %d: target frame t is "
                           "centred %d samples off encoder frame t", cfg.recon_win_length, rf,
                           (cfg.recon_win_length - rf) // 2)
        self.recon_head = ReconstructionHead(dim, cfg.recon_n_mels, cfg.recon_head_hidden_dim)
        self.logmel = LogMelTarget(task_cfg.sample_rate, cfg.recon_n_mels, cfg.recon_win_length,
                                   cfg.recon_hop_length)
        self.removed_prefixes: List[str] = []
        self.num_updates = 0
        self.mask_keys = SpanMaskKeys(task_cfg.seed)

    @classmethod
    def build_model(cls, cfg: SimsiamReconConfig, task):
        if cfg.frame_simsiam and not getattr(task.cfg, "aligned_views", False):
            raise ValueError("model.frame_simsiam=true needs time-aligned views: set task.aligned_views=true "
                             "(with alignment-keeping augmentations only)")
        return cls(cfg, task.cfg)

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
        mask_indices = None
        if self.mask_prob > 0:
            mask_indices = seeded_span_mask(
                (B, T), padding_mask, self.mask_prob, self.mask_length, keys + (TIME,), self.mask_selection,
                self.mask_other, min_masks=2, no_overlap=self.no_mask_overlap, min_space=self.mask_min_space,
            ).to(x.device)
            x[mask_indices] = self.mask_emb.to(x.dtype)
        if self.mask_channel_prob > 0:
            channels = seeded_span_mask(
                (B, C), None, self.mask_channel_prob, self.mask_channel_length, keys + (CHANNEL,),
                self.mask_channel_selection, self.mask_channel_other, no_overlap=self.no_mask_channel_overlap,
                min_space=self.mask_channel_min_space,
            ).to(x.device)
            x[channels.unsqueeze(1).expand(-1, T, -1)] = 0
        return x, mask_indices

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

    # ------------------------------------------------------------------ heads
    def _per_view(self, module: torch.nn.Module, t: torch.Tensor) -> torch.Tensor:
        """Apply a BN head to ``V x N x C`` per view (or jointly, see ``bn_per_view``) -> ``V x N x D``."""
        V, N = t.shape[:2]
        if self.cfg.bn_per_view and N > 1:
            return torch.stack([module(t[v]) for v in range(V)])
        return module(t.reshape(V * N, -1)).view(V, N, -1)

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

    def forward(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None, num_views: int = 2,
                aligned: bool = False, mask: bool = True, simsiam: bool = True, recon: bool = True,
                target_source: Optional[torch.Tensor] = None, features_only: bool = False,
                output_layer: Optional[int] = None, **unused) -> Dict[str, torch.Tensor]:
        """Pre-training forward on a view-major batch.

        Args:
            source: (V*B) x L waveforms, row ``v*B + b`` = view v of utterance b.
            padding_mask: (V*B) x L, True at padding samples (or None).
            num_views: V. aligned: whether the views are time-aligned (needed by ``frame_simsiam``).
            mask: span-mask the transformer input (needed for reconstruction).
            simsiam / recon: compute the SimSiam heads / the reconstruction head.
            target_source: (V*B) x L clean waveforms for the reconstruction targets (default: ``source``).
        Returns:
            dict with ``x`` (V*B) x T x C, ``padding_mask`` (V*B) x T or None, ``mask_indices`` (V*B) x T or
            None, ``features_pen``; with ``simsiam``: ``pooled`` V x B x C (masked mean of ``x``), ``z``,
            ``p`` V x B x D (and ``frame_z``, ``frame_p`` V x M x D over the M non-padding frames with
            ``frame_simsiam``); with ``recon`` and ``mask``:
            ``recon_pred``, ``recon_target`` (V*B) x T x n_mels and ``recon_mask`` (V*B) x T (masked, not
            padding).
        """
        enc = self.encode_features(source, padding_mask)
        padding_mask = enc["padding_mask"]
        main = self.run_transformer(enc["features"], padding_mask, mask, output_layer)
        x = main["x"]
        out = {"x": x, "padding_mask": padding_mask, "mask_indices": main["mask_indices"],
               "features_pen": enc["features_pen"], "num_views": num_views}
        if features_only:
            out["layer_results"] = main["layer_results"]
            return out
        if simsiam:
            if num_views < 2 or x.size(0) % num_views:
                raise ValueError(f"SimSiam needs >= 2 views and a view-major batch: got {x.size(0)} rows for "
                                 f"num_views={num_views}")
            xs = x
            if mask and self.cfg.simsiam_input == "unmasked":
                xs = self.run_transformer(enc["features"], padding_mask, False)["x"]
            V, B = num_views, x.size(0) // num_views
            out["pooled"] = pooled = self.masked_mean(xs, padding_mask).view(V, B, -1)
            out["z"] = z = self._per_view(self.projector, pooled)
            out["p"] = self._per_view(self.predictor, z)
            if self.frame_projector is not None:
                if not aligned:
                    raise ValueError("frame_simsiam needs time-aligned views (task.aligned_views=true)")
                T = xs.size(1)
                keep = torch.ones(B, T, dtype=torch.bool, device=xs.device) if padding_mask is None \
                    else ~padding_mask.view(V, B, T)[0]
                frames = xs.view(V, B, T, -1)[:, keep]  # V x M x C
                out["frame_z"] = fz = self._per_view(self.frame_projector, frames)
                out["frame_p"] = self._per_view(self.frame_predictor, fz)
        if recon and main["mask_indices"] is not None:
            wav = source if target_source is None else target_source
            out["recon_pred"] = self.recon_head(x)
            out["recon_target"] = self.recon_targets(wav, x.size(1), padding_mask)
            recon_mask = main["mask_indices"]
            if padding_mask is not None:
                recon_mask = recon_mask & ~padding_mask
            out["recon_mask"] = recon_mask
        return out

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
