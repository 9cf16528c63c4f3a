"""``simsiam_recon``: positive-sample contrast (SimSiam) + masked reconstruction on a wav2vec2/HuBERT encoder.

Paper: Zhang, Liu, Niu, Chen, Qu, "positive-sample contrast + masked reconstruction" self-supervised speech
pre-training, Journal on Communications 2022, 43(7):163-171 (a SimSiam-style siamese network on two augmented
views of raw speech, one branch through a predictor, the other under stop-gradient, no negatives, multi-task
with masked reconstruction). Details beyond the abstract are not public: every choice of the project's
reconstruction is a field of :class:`SimsiamReconConfig` (listed in examples/simsiam_recon/README.md).

The encoder is fairseq's HuBERT encoder shared with ``mgf`` (:class:`~fairseq_plugins.modules.hubert_encoder.
SeededHubertEncoder`, a :class:`~fairseq.models.hubert.HubertModel` subclass)
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
from typing import Dict, Optional

import torch
from fairseq.dataclass import ChoiceEnum

from fairseq_plugins.compat import register
from fairseq_plugins.modules.heads import PredictorMLP, ProjectorMLP, ReconstructionHead
from fairseq_plugins.modules.hubert_encoder import (  # noqa: F401  (FeatureOutput, conv_geometry: re-exported)
    FeatureOutput,
    SeededHubertConfig,
    SeededHubertEncoder,
    conv_geometry,
)

logger = logging.getLogger(__name__)

MODEL_NAME = "simsiam_recon"
SIMSIAM_INPUT_CHOICES = ChoiceEnum(["masked", "unmasked"])


@dataclass
class SimsiamReconConfig(SeededHubertConfig):
    """HuBERT's encoder config plus the heads. ``mask_prob``/``mask_length`` keep HuBERT's meaning (span
    starts are drawn with probability ``mask_prob / mask_length`` per frame, so about ``mask_prob`` of the
    frames are covered before overlaps)."""

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


@register("model", MODEL_NAME, dataclass=SimsiamReconConfig)
class SimsiamReconModel(SeededHubertEncoder):
    """See the module docstring. Built by the ``multiview_audio_pretraining`` task."""

    PRETRAINING_MODULES = ("projector", "predictor", "frame_projector", "frame_predictor", "recon_head")

    def __init__(self, cfg: SimsiamReconConfig, task_cfg) -> None:
        super().__init__(cfg, task_cfg)
        dim = cfg.encoder_embed_dim
        self.projector = ProjectorMLP(dim, cfg.projector_hidden_dim, cfg.projector_dim, cfg.projector_layers)
        self.predictor = PredictorMLP(cfg.projector_dim, cfg.predictor_hidden_dim)
        self.frame_projector = self.frame_predictor = None
        if cfg.frame_simsiam:
            self.frame_projector = ProjectorMLP(dim, cfg.projector_hidden_dim, cfg.projector_dim,
                                                cfg.projector_layers)
            self.frame_predictor = PredictorMLP(cfg.projector_dim, cfg.predictor_hidden_dim)
        self.recon_head = ReconstructionHead(dim, cfg.recon_n_mels, cfg.recon_head_hidden_dim)

    @classmethod
    def build_model(cls, cfg: SimsiamReconConfig, task):
        if cfg.frame_simsiam and not getattr(task.cfg, "aligned_views", False):
            raise ValueError("model.frame_simsiam=true needs time-aligned views: set task.aligned_views=true "
                             "(with alignment-keeping augmentations only)")
        return cls(cfg, task.cfg)

    # ------------------------------------------------------------------ heads
    def _per_view(self, module: torch.nn.Module, t: torch.Tensor) -> torch.Tensor:
        """Apply a BN head to ``V x N x C`` per view (or jointly, see ``bn_per_view``) -> ``V x N x D``."""
        V, N = t.shape[:2]
        if self.cfg.bn_per_view and N > 1:
            return torch.stack([module(t[v]) for v in range(V)])
        return module(t.reshape(V * N, -1)).view(V, N, -1)

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
