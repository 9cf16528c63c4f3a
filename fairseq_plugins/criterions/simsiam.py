"""The ``simsiam`` criterion: the SimSiam term of the positive-sample contrast + masked reconstruction method
alone (Zhang et al., Journal on Communications 2022; SimSiam: Chen & He, CVPR 2021, arXiv 2011.10566). It is
:class:`~fairseq_plugins.criterions.simsiam_recon.SimsiamReconCriterion` with ``recon_weight = 0`` and
``simsiam_weight = 1`` (no masking, no reconstruction head); same logging.

Registers the criterion ``simsiam``.
"""
from dataclasses import dataclass, field

from fairseq.dataclass import FairseqDataclass

from fairseq_plugins.compat import register
from fairseq_plugins.criterions.simsiam_recon import SimsiamReconCriterion

CRITERION_NAME = "simsiam"


@dataclass
class SimsiamCriterionConfig(FairseqDataclass):
    frame_simsiam_weight: float = field(
        default=1.0, metadata={"help": "weight of the frame-level SimSiam term (used only when "
                                       "model.frame_simsiam=true)"})


@register("criterion", CRITERION_NAME, dataclass=SimsiamCriterionConfig)
class SimsiamCriterion(SimsiamReconCriterion):
    """``simsiam_recon`` with the reconstruction weight fixed at 0."""

    def __init__(self, task, frame_simsiam_weight: float = 1.0):
        super().__init__(task, recon_weight=0.0, simsiam_weight=1.0,
                         frame_simsiam_weight=frame_simsiam_weight)
