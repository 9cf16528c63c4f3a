"""The ``csc`` criterion: ``L = sep_weight * L_sep + csc_weight * L_csc`` for contrastive separative coding
(Wang, Lam, Su, Yu, ICASSP 2021; design choices in examples/csc/README.md).

``L_sep`` is minus the SI-SNR (dB) of the separation head's estimate against the clean target over the valid
samples of every condition (:func:`~fairseq_plugins.losses.csc.neg_si_snr`); ``L_csc`` (``lambda``) is the
negative-free vMF objective (:func:`~fairseq_plugins.losses.csc.vmf_nll`): minus the vMF log-likelihood of the
encoder frames of condition k around ``mu_k``, the projected global speaker vector of the same utterance. A
weight of 0 skips that term and its head in the model.

Collapse monitor: a negative-free objective is minimised by constant representations; the separation term
counters that (the mask needs frames that differ) only while it dominates: on the tiny test setup lambda 0.01
keeps the frames spread, lambda >= 0.1 collapses them even with L_sep (tests/csc/test_model.py). Logged:
``frame_collapse_std`` (std over the valid frames of the L2-normalised encoder frames, averaged over
dimensions), ``spk_collapse_std`` (the same over the condition vectors of the batch) and their healthy
reference ``collapse_ref`` = 1/sqrt(dim) (0 = collapsed); also ``sep_loss``, ``si_snr`` (estimate),
``si_snr_in`` (mixture), ``si_snri`` (improvement), ``csc_loss``, ``mean_cos`` (frames vs mu), ``kappa``,
``attn_max`` (mean largest cross-attention weight: 1/K = uniform).
``sample_size`` = utterances (B). Registers the criterion ``csc``.
"""
import logging
from dataclasses import dataclass, field
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from fairseq.dataclass import FairseqDataclass

from fairseq_plugins.compat import register
from fairseq_plugins.criterions.base import PluginCriterion
from fairseq_plugins.losses.csc import si_snr, vmf_nll
from fairseq_plugins.losses.simsiam import collapse_std, healthy_std

logger = logging.getLogger(__name__)

CRITERION_NAME = "csc"


@dataclass
class CscCriterionConfig(FairseqDataclass):
    sep_weight: float = field(
        default=1.0, metadata={"help": "weight of the separation loss L_sep = -SI-SNR (dB) against the clean "
                                       "target (0: no separation loss, the ablation)"})
    csc_weight: float = field(
        default=0.01, metadata={"help": "lambda, weight of the negative-free vMF contrastive loss L_csc (0: no "
                                        "L_csc, the ablation); 0.01 because with lambda >= 0.1 the frames collapse "
                                        "even with L_sep in tests/csc/test_model.py"})


@register("criterion", CRITERION_NAME, dataclass=CscCriterionConfig)
class CscCriterion(PluginCriterion):
    """See the module docstring."""

    def __init__(self, task, sep_weight: float = 1.0, csc_weight: float = 0.01):
        super().__init__(task)
        if min(sep_weight, csc_weight) < 0:
            raise ValueError("criterion.sep_weight and criterion.csc_weight must be non-negative")
        if sep_weight == 0 and csc_weight == 0:
            raise ValueError("criterion.sep_weight and criterion.csc_weight are both 0: nothing to train")
        self.sep_weight, self.csc_weight = float(sep_weight), float(csc_weight)

    def compute_loss(self, net_output: Dict, source: torch.Tensor, clean: torch.Tensor,
                     sample_pad: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Per-utterance loss and its terms from the model's output, the mixtures, the clean targets and the
        sample padding mask (all (K*B) x L)."""
        x, frame_pad = net_output["x"].float(), net_output["padding_mask"]
        keep = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if frame_pad is None else ~frame_pad
        terms: Dict[str, torch.Tensor] = {}
        loss = x.new_zeros(())
        if self.sep_weight > 0:
            valid = ~sample_pad
            out_db = si_snr(net_output["est"], clean, valid)
            in_db = si_snr(source, clean, valid).detach()
            sep = -out_db.mean()
            terms.update(sep_loss=sep, si_snr=out_db.mean(), si_snr_in=in_db.mean(),
                         si_snri=(out_db.detach() - in_db).mean())
            loss = loss + self.sep_weight * sep
        if self.csc_weight > 0:
            csc = vmf_nll(x, net_output["mu"].float(), net_output["kappa"], keep.float())
            z = F.normalize(x, dim=-1)
            mu = F.normalize(net_output["mu"].float(), dim=-1)
            cos = (torch.einsum("ntd,nd->nt", z, mu) * keep).sum() / keep.sum().clamp(min=1)
            terms.update(csc_loss=csc, mean_cos=cos.detach(), kappa=net_output["kappa"].detach(),
                         attn_max=net_output["attn"].max(-1).values.mean().detach(),
                         spk_collapse_std=collapse_std(net_output["spk"]))
            loss = loss + self.csc_weight * csc
        terms["frame_collapse_std"] = collapse_std(x[keep])
        terms["collapse_ref"] = torch.tensor(healthy_std(x.size(-1)))
        return loss, terms

    def forward(self, model, sample, reduce: bool = True):
        views, net_input = sample["views"], sample["net_input"]
        clean = net_input.get("target_source")
        if self.sep_weight > 0 and clean is None:
            raise ValueError("criterion csc with sep_weight > 0 needs the clean target: set task.clean_target=true "
                             "(and task.aligned_views=true)")
        net_output = model(**net_input, num_views=views["num_views"], sep=self.sep_weight > 0,
                           csc=self.csc_weight > 0)
        loss, terms = self.compute_loss(net_output, net_input["source"], clean, net_input["padding_mask"])
        return self.frame_loss_result(loss, terms, net_output, views["batch_size"])
