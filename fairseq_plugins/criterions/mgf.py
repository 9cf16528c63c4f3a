"""The ``mgf`` criterion: ``L = w_frame L_frame + w_phone L_phone + w_utt L_utt`` of MGF (Zhao et al., arXiv
2102.01930; design choices in examples/mgf/README.md), on the ``mgf`` model.

- ``L_frame``: L1 between the log-mel head's prediction and the log-mel of the frame-scale-masked frames;
- ``L_phone``: InfoNCE (cosine / ``phone_temperature``) of every phoneme-scale-masked frame's prediction against
  its target and ``num_distractors`` targets of other masked frames of the same utterance, drawn with a
  generator keyed by the masks' (seed, update, rank, micro-batch) keys (repeatable, resumes exactly);
- ``L_div`` (only with the model's ``phone_target=quantised``): wav2vec 2.0's codebook diversity loss
  ``(num_vars - prob_perplexity) / num_vars`` of the target quantiser, weight ``w_diversity`` (wav2vec 2.0
  Base: 0.1 next to its per-frame InfoNCE, which is what ``L_phone`` is here);
- ``L_utt``: NT-Xent (``utt_temperature``) over the projected pooled embeddings of the two segments of each
  utterance, the batch's other segments as negatives, gathered from every worker with ``utt_gather``.

A weight of 0 switches its scale off: the model draws no masks and runs no head for it, so it costs nothing and
gives no gradient (ablations are overrides: ``criterion.w_utt=0`` etc., listed in the README). Logged per
utterance through :class:`~fairseq_plugins.criterions.base.PluginCriterion`: ``loss``, ``frame_loss``,
``phone_loss``, ``phone_acc`` (share of masked frames whose positive beats every distractor), ``utt_loss``,
``utt_acc`` (share of segments whose nearest other segment is their partner), ``frame_mask_frac`` /
``phone_mask_frac`` (masked share of non-padding frames), and the collapse monitors ``utt_collapse_std`` (std
over the batch of the normalised projections; healthy about ``collapse_ref`` = 1/sqrt(dim)),
``enc_collapse_std`` / ``enc_collapse_ref`` (pooled encoder output) and ``phone_collapse_std`` (phoneme
predictions of masked frames); with the quantised target also ``diversity_loss``, ``prob_perplexity``,
``code_perplexity`` and ``quantizer_temp``. Registers the criterion ``mgf``.
"""
import logging
from dataclasses import dataclass, field
from typing import Dict, Tuple

import torch
from fairseq.dataclass import FairseqDataclass

from fairseq_plugins.compat import register
from fairseq_plugins.criterions.base import PluginCriterion
from fairseq_plugins.losses.mgf import frame_l1, nt_xent, phone_infonce
from fairseq_plugins.losses.simsiam import collapse_std, healthy_std
from fairseq_plugins.modules.span_mask import mask_seed

logger = logging.getLogger(__name__)

CRITERION_NAME = "mgf"
DISTRACTOR_STREAM = 3  # appended to the mask keys for the distractor draw


@dataclass
class MgfCriterionConfig(FairseqDataclass):
    w_frame: float = field(default=1.0, metadata={"help": "weight of the frame-scale L1 (0: scale off)"})
    w_phone: float = field(default=1.0, metadata={"help": "weight of the phoneme-scale InfoNCE (0: scale off)"})
    w_utt: float = field(default=1.0, metadata={"help": "weight of the utterance-scale NT-Xent (0: scale off)"})
    num_distractors: int = field(
        default=100, metadata={"help": "phoneme scale: distractors per masked frame (wav2vec 2.0: 100)"})
    phone_temperature: float = field(default=0.1, metadata={"help": "phoneme-scale InfoNCE temperature"})
    utt_temperature: float = field(default=0.1, metadata={"help": "utterance-scale NT-Xent temperature"})
    utt_gather: bool = field(
        default=True, metadata={"help": "gather the utterance-scale negatives from every worker under DDP"})
    w_diversity: float = field(
        default=0.1, metadata={"help": "weight of wav2vec 2.0's codebook diversity loss, used only with "
                                       "model.phone_target=quantised (wav2vec 2.0 Base: 0.1)"})


@register("criterion", CRITERION_NAME, dataclass=MgfCriterionConfig)
class MgfCriterion(PluginCriterion):
    """See the module docstring."""

    def __init__(self, task, w_frame: float = 1.0, w_phone: float = 1.0, w_utt: float = 1.0,
                 num_distractors: int = 100, phone_temperature: float = 0.1, utt_temperature: float = 0.1,
                 utt_gather: bool = True, w_diversity: float = 0.1):
        super().__init__(task)
        if min(w_frame, w_phone, w_utt, w_diversity) < 0:
            raise ValueError(f"criterion weights must be non-negative, got w_frame={w_frame}, "
                             f"w_phone={w_phone}, w_utt={w_utt}, w_diversity={w_diversity}")
        if w_frame == w_phone == w_utt == 0:
            raise ValueError("criterion.w_frame, w_phone and w_utt are all 0: nothing to train")
        if num_distractors < 1:
            raise ValueError(f"criterion.num_distractors={num_distractors}: expected >= 1")
        if phone_temperature <= 0 or utt_temperature <= 0:
            raise ValueError("criterion.phone_temperature and utt_temperature must be > 0")
        self.w_frame, self.w_phone, self.w_utt = float(w_frame), float(w_phone), float(w_utt)
        self.num_distractors = int(num_distractors)
        self.phone_temperature, self.utt_temperature = float(phone_temperature), float(utt_temperature)
        self.utt_gather = bool(utt_gather)
        self.w_diversity = float(w_diversity)

    def compute_loss(self, net_output: Dict) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Per-utterance loss and its terms from the model's output."""
        terms: Dict[str, torch.Tensor] = {}
        loss = net_output["x"].new_zeros(()).float()
        pad = net_output["padding_mask"]
        frames = max(1, net_output["x"].shape[0] * net_output["x"].shape[1] if pad is None else int((~pad).sum()))
        if self.w_frame > 0:
            if "frame_pred" in net_output:
                rec, count = frame_l1(net_output["frame_pred"], net_output["frame_target"],
                                      net_output["frame_mask"])
            else:  # frame_mask_prob 0: nothing masked
                rec, count = net_output["x"].sum() * 0.0, 0
            terms["frame_loss"] = rec
            terms["frame_mask_frac"] = torch.tensor(count / frames)
            loss = loss + self.w_frame * rec
        if self.w_phone > 0:
            if "phone_pred" in net_output:
                gen = torch.Generator().manual_seed(mask_seed(*net_output["mask_keys"], DISTRACTOR_STREAM))
                nce, acc, count = phone_infonce(net_output["phone_pred"], net_output["phone_target"],
                                                net_output["phone_mask"], self.num_distractors,
                                                self.phone_temperature, gen)
                terms["phone_collapse_std"] = collapse_std(net_output["phone_pred"][net_output["phone_mask"]])
            else:  # mask_prob 0
                nce, acc, count = net_output["x"].sum() * 0.0, torch.zeros(()), 0
            terms["phone_loss"] = nce
            terms["phone_acc"] = acc
            terms["phone_mask_frac"] = torch.tensor(count / frames)
            loss = loss + self.w_phone * nce
            if "prob_perplexity" in net_output:  # phone_target=quantised
                div = (net_output["num_vars"] - net_output["prob_perplexity"]) / net_output["num_vars"]
                terms["diversity_loss"] = div
                for key in ("prob_perplexity", "code_perplexity", "quantizer_temp"):
                    terms[key] = net_output[key]
                loss = loss + self.w_diversity * div
        if self.w_utt > 0:
            z = net_output["utt_z"]
            utt, acc = nt_xent(z[0], z[1], self.utt_temperature, gather=self.utt_gather)
            terms["utt_loss"] = utt
            terms["utt_acc"] = acc
            terms["utt_collapse_std"] = collapse_std(z)
            terms["collapse_ref"] = torch.tensor(healthy_std(z.size(-1)))
            terms["enc_collapse_std"] = collapse_std(net_output["pooled"])
            terms["enc_collapse_ref"] = torch.tensor(healthy_std(net_output["pooled"].size(-1)))
            loss = loss + self.w_utt * utt
        return loss, terms

    def forward(self, model, sample, reduce: bool = True):
        views = sample["views"]
        net_output = model(**sample["net_input"], num_views=views["num_views"], frame=self.w_frame > 0,
                           phone=self.w_phone > 0, utt=self.w_utt > 0)
        net_output = self.float32_outputs(net_output)
        loss, terms = self.compute_loss(net_output)
        return self.frame_loss_result(loss, terms, net_output, views["batch_size"])
