"""The ``masked_reconstruction`` criterion: the masked log-mel L1 reconstruction term of the positive-sample
contrast + masked reconstruction method alone (Zhang et al., Journal on Communications 2022). It is
:class:`~fairseq_plugins.criterions.simsiam_recon.SimsiamReconCriterion` with ``simsiam_weight = 0`` and
``recon_weight = 1`` (the SimSiam heads are not run); same logging. Works with ``task.num_views=1``.

Registers the criterion ``masked_reconstruction``.
"""
from dataclasses import dataclass

from fairseq.dataclass import FairseqDataclass

from fairseq_plugins.compat import register
from fairseq_plugins.criterions.simsiam_recon import SimsiamReconCriterion

CRITERION_NAME = "masked_reconstruction"


@dataclass
class MaskedReconstructionCriterionConfig(FairseqDataclass):
    pass


@register("criterion", CRITERION_NAME, dataclass=MaskedReconstructionCriterionConfig)
class MaskedReconstructionCriterion(SimsiamReconCriterion):
    """``simsiam_recon`` with the SimSiam weight fixed at 0."""

    def __init__(self, task):
        super().__init__(task, recon_weight=1.0, simsiam_weight=0.0)
