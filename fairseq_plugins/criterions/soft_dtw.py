"""Criterion ``soft_dtw``: the LASER loss (soft-DTW divergence + Contrastive-IDM), and the SCORE variant.

LASER (Meghanani & Hain, Interspeech 2024, arXiv 2406.09153): ``L = D_gamma(X, Y) + alpha [I(X) + I(Y)]`` with
the soft-DTW divergence ``D = sdtw(X, Y) - (sdtw(X, X) + sdtw(Y, Y)) / 2`` (Cuturi & Blondel 2017; cost
``||x_i - y_j||^2``; no length normalisation) and the Contrastive-IDM temporal regulariser of Haresh et al.
(CVPR 2021). Defaults are the paper's HuBERT values (gamma 0.1, alpha 0.4, margin 1.1, sigma 0); WavLM uses
alpha 0.15, margin 1.0. ``variant=score`` is SCORE (ICASSP 2024): view 2 through the frozen original backbone
(``model.frozen_reference=true``), divergence / (N + M), no regulariser. The pure losses live in
:mod:`fairseq_plugins.losses`; this class combines them, checks them and logs every term.
"""
import logging
from dataclasses import dataclass, field
from typing import Optional

import torch
from fairseq.dataclass import ChoiceEnum, FairseqDataclass

from fairseq_plugins.compat import register
from fairseq_plugins.criterions.base import PluginCriterion, weighted
from fairseq_plugins.losses.idm import contrastive_idm
from fairseq_plugins.losses.soft_dtw import soft_dtw_divergence

logger = logging.getLogger(__name__)

VARIANTS = ChoiceEnum(["laser", "score"])
NORMALISATIONS = ChoiceEnum(["none", "length"])


@dataclass
class SoftDTWCriterionConfig(FairseqDataclass):
    variant: VARIANTS = field(
        default="laser", metadata={"help": "laser: siamese views + IDM; score: view 2 through the frozen "
                                           "reference, divergence / (N + M), no IDM"})
    gamma: float = field(default=0.1, metadata={"help": "soft-DTW smoothing, > 0 (paper 0.1)"})
    alpha: float = field(default=0.4, metadata={"help": "weight of the IDM regulariser (HuBERT 0.4, WavLM 0.15)"})
    margin: float = field(default=1.1, metadata={"help": "IDM hinge margin lambda (HuBERT 1.1, WavLM 1.0)"})
    sigma: float = field(default=0.0, metadata={"help": "IDM window: |i-j| > sigma counts as far apart (paper 0)"})
    normalization: NORMALISATIONS = field(
        default="none", metadata={"help": "none (LASER) or length: divide the divergence by N + M (SCORE; "
                                          "variant=score implies it)"})
    band: Optional[float] = field(
        default=None, metadata={"help": "Sakoe-Chiba band half-width in frames (None: no band)"})
    backend: str = field(
        default="auto", metadata={"help": "soft-DTW implementation: auto, torch or cpp"})


@register("criterion", "soft_dtw", dataclass=SoftDTWCriterionConfig)
class SoftDTWCriterion(PluginCriterion):
    def __init__(self, cfg: SoftDTWCriterionConfig, task):
        super().__init__(task)
        if cfg.gamma <= 0:
            raise ValueError(f"criterion.gamma={cfg.gamma}: soft-DTW needs gamma > 0")
        if cfg.alpha < 0:
            raise ValueError(f"criterion.alpha={cfg.alpha}: the regulariser weight must be >= 0")
        self.cfg = cfg

    def forward(self, model, sample, reduce: bool = True):
        score = self.cfg.variant == "score"
        if score and getattr(model, "reference", None) is None:
            raise ValueError("criterion.variant=score needs model.frozen_reference=true")
        a = model(**sample["net_input"])
        b = model(**sample["net_input_2"], reference=score)
        x, y, xl, yl = a["x"], b["x"], a["lengths"], b["lengths"]
        for name, lens, src in (("view 1", xl, sample["net_input"]), ("view 2", yl, sample["net_input_2"])):
            if (lens < 1).any():
                bad = sample["id"][lens < 1].tolist()
                pad = src.get("padding_mask")
                samples = (~pad).sum(1).tolist() if pad is not None else [src["source"].size(1)] * len(lens)
                raise ValueError(f"{name} of sample ids {bad} has no frame (all padding); input lengths in "
                                 f"samples: {samples}")
        div = soft_dtw_divergence(x, y, self.cfg.gamma, xl, yl, band=self.cfg.band, backend=self.cfg.backend)
        if score or self.cfg.normalization == "length":
            div = div / (xl + yl).to(div.dtype)
        idm = x.new_zeros(x.size(0))
        if not score and self.cfg.alpha > 0:
            idm = contrastive_idm(x, xl, self.cfg.sigma, self.cfg.margin) + \
                contrastive_idm(y, yl, self.cfg.sigma, self.cfg.margin)
        per_item = div + self.cfg.alpha * idm
        if not torch.isfinite(per_item).all():
            bad = sample["id"][~torch.isfinite(per_item)].tolist()
            raise FloatingPointError(
                f"soft_dtw: non-finite loss for sample ids {bad} (divergence {div.tolist()}, idm {idm.tolist()})")
        loss = per_item.sum()
        n = x.size(0)
        frames = float((xl + yl).sum())
        log = {
            "loss": weighted(loss / n, n),
            "sdtw_div": weighted(div.mean(), n),
            "idm": weighted(idm.mean(), n),
            "frames_per_view": weighted(frames / (2 * n), n),
            "sample_size": n,
            "nsentences": n,
            "ntokens": frames,
        }
        return loss, n, log
