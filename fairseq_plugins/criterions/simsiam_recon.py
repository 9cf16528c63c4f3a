"""The ``simsiam_recon`` criterion: ``L = recon_weight * L_rec + simsiam_weight * L_sim`` for the
positive-sample contrast + masked reconstruction method (Zhang, Liu, Niu, Chen, Qu; Journal on Communications
2022, 43(7):163-171; design choices in examples/simsiam_recon/README.md). ``L_sim`` is the symmetric
stop-gradient SimSiam loss on
the utterance-level heads (plus ``frame_simsiam_weight`` times the frame-level one when the model has frame
heads); ``L_rec`` is the L1 error of the log-mel reconstruction over masked frames. The single criteria
``simsiam`` and ``masked_reconstruction`` are this class with one weight fixed at 0 (see their modules),
and a weight of 0 also skips that branch in the model (no masking without reconstruction, unless
``mask_without_recon``; no heads without SimSiam). ``mask_without_recon=true`` with ``recon_weight=0`` keeps the
span masks, so SimSiam runs on the masked pass without reconstruction: with ``model.simsiam_input`` it makes the
2 x 2 ablation grid (masked / unmasked SimSiam input x with / without reconstruction) one change per row
(examples/simsiam_recon/README.md, "Ablation grid").

Logged (per utterance, through :class:`~fairseq_plugins.criterions.base.PluginCriterion`): ``loss``,
``simsiam_loss``, ``simsiam_utt_loss``, ``simsiam_frame_loss``, ``cos_sim`` (mean cosine between p and
sg(z) of the other views, = -``simsiam_utt_loss``), ``collapse_std`` and its healthy reference
``collapse_ref`` = 1/sqrt(dim), the same for the pooled encoder output before the heads (``enc_collapse_std``,
``enc_collapse_ref``), ``recon_loss``, ``mask_frac`` (masked share of non-padding frames, whenever the
encoder input is masked). ``sample_size`` =
utterances. In training mode the projector's last BatchNorm standardises every dimension of z over the batch,
which pins ``collapse_std`` near 1/sqrt(dim) unless z collapses completely; ``enc_collapse_std`` (no BN) and
the validation values (running BN statistics) also show partial collapse.

Registers the criterion ``simsiam_recon``.
"""
import logging
from dataclasses import dataclass, field
from typing import Dict, Tuple

import torch
from fairseq.dataclass import FairseqDataclass

from fairseq_plugins.compat import register
from fairseq_plugins.criterions.base import PluginCriterion
from fairseq_plugins.losses.simsiam import collapse_std, healthy_std, masked_l1, simsiam_loss

logger = logging.getLogger(__name__)

CRITERION_NAME = "simsiam_recon"


@dataclass
class SimsiamReconCriterionConfig(FairseqDataclass):
    recon_weight: float = field(
        default=1.0,
        metadata={"help": "weight of the masked log-mel L1 reconstruction loss (0: plain SimSiam)"})
    simsiam_weight: float = field(
        default=1.0,
        metadata={"help": "lambda, weight of the SimSiam loss (0: plain masked reconstruction)"})
    frame_simsiam_weight: float = field(
        default=1.0, metadata={"help": "weight of the frame-level SimSiam term inside L_sim (used only when "
                                       "model.frame_simsiam=true)"})
    mask_without_recon: bool = field(
        default=False,
        metadata={"help": "span-mask the encoder input also when recon_weight=0, so SimSiam sees the masked pass "
                          "(needs model.simsiam_input=masked): the 'masked SimSiam, no reconstruction' ablation; "
                          "no effect when recon_weight > 0"})


@register("criterion", CRITERION_NAME, dataclass=SimsiamReconCriterionConfig)
class SimsiamReconCriterion(PluginCriterion):
    """See the module docstring."""

    def __init__(self, task, recon_weight: float = 1.0, simsiam_weight: float = 1.0,
                 frame_simsiam_weight: float = 1.0, mask_without_recon: bool = False):
        super().__init__(task)
        if min(recon_weight, simsiam_weight, frame_simsiam_weight) < 0:
            raise ValueError("criterion weights must be non-negative")
        if recon_weight == 0 and simsiam_weight == 0:
            raise ValueError("recon_weight and simsiam_weight are both 0: nothing to train")
        self.recon_weight = float(recon_weight)
        self.simsiam_weight = float(simsiam_weight)
        self.frame_simsiam_weight = float(frame_simsiam_weight)
        self.mask_without_recon = bool(mask_without_recon)

    def compute_loss(self, net_output: Dict) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Per-utterance loss and its terms (unweighted by sample size) from the model's output."""
        terms: Dict[str, torch.Tensor] = {}
        loss = net_output["x"].new_zeros(()).float()
        if self.simsiam_weight > 0:
            utt = simsiam_loss(net_output["p"], net_output["z"])
            sim = utt
            terms["simsiam_utt_loss"] = utt
            if self.frame_simsiam_weight > 0 and "frame_z" in net_output:
                frame = simsiam_loss(net_output["frame_p"], net_output["frame_z"])
                terms["simsiam_frame_loss"] = frame
                sim = sim + self.frame_simsiam_weight * frame
            terms["simsiam_loss"] = sim
            terms["cos_sim"] = -utt.detach()
            terms["collapse_std"] = collapse_std(net_output["z"])
            terms["collapse_ref"] = torch.tensor(healthy_std(net_output["z"].size(-1)))
            terms["enc_collapse_std"] = collapse_std(net_output["pooled"])
            terms["enc_collapse_ref"] = torch.tensor(healthy_std(net_output["pooled"].size(-1)))
            loss = loss + self.simsiam_weight * sim
        if self.recon_weight > 0:
            if "recon_pred" in net_output:
                rec, _ = masked_l1(net_output["recon_pred"], net_output["recon_target"], net_output["recon_mask"])
            else:  # the model masked nothing (mask_prob 0)
                rec = net_output["x"].sum() * 0.0
            terms["recon_loss"] = rec
            loss = loss + self.recon_weight * rec
        mask = net_output.get("mask_indices")
        if mask is not None:
            pad = net_output["padding_mask"]
            if pad is not None:
                mask = mask & ~pad
            frames = mask.numel() if pad is None else int((~pad).sum())
            terms["mask_frac"] = torch.tensor(int(mask.sum()) / max(1, frames))
        return loss, terms

    def forward(self, model, sample, reduce: bool = True):
        views = sample["views"]
        mask = self.recon_weight > 0 or self.mask_without_recon
        if mask and self.recon_weight == 0 and model.cfg.simsiam_input == "unmasked":
            raise ValueError("criterion.mask_without_recon=true with recon_weight=0 masks a pass that nothing uses "
                             "when model.simsiam_input=unmasked: set model.simsiam_input=masked (masked SimSiam, "
                             "no reconstruction) or mask_without_recon=false (unmasked SimSiam)")
        net_output = model(**sample["net_input"], num_views=views["num_views"], aligned=views["aligned"],
                           mask=mask, simsiam=self.simsiam_weight > 0, recon=self.recon_weight > 0)
        net_output = self.float32_outputs(net_output)
        loss, terms = self.compute_loss(net_output)
        return self.frame_loss_result(loss, terms, net_output, views["batch_size"])
