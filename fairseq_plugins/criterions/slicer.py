"""The ``slicer`` criterion: SLICER's symmetric instance contrast + cluster contrast.

SLICER (Seth, Ghosh, Umesh, Manocha; ICASSP 2023, arXiv 2211.01519): ``loss = instance_weight *
(l(q1, k2) + l(q2, k1)) + cluster_weight * NT-Xent(cluster columns) + entropy_weight * (log K - H)``, the pure
terms in :mod:`fairseq_plugins.losses.slicer`. Every term is logged (per item, weighted by ``sample_size`` as
:mod:`fairseq_plugins.criterions.base` expects) together with the cluster usage (number of clusters that are
the arg-max of at least one item) as a collapse monitor. Registers the criterion ``slicer``.
"""
from dataclasses import dataclass, field

from fairseq.dataclass import FairseqDataclass

from fairseq_plugins.compat import register
from fairseq_plugins.criterions.base import PluginCriterion, weighted
from fairseq_plugins.losses.slicer import cluster_contrast, symmetric_info_nce

CRITERION_NAME = "slicer"


@dataclass
class SlicerCriterionConfig(FairseqDataclass):
    instance_weight: float = field(default=1.0, metadata={"help": "weight of the symmetric InfoNCE"})
    cluster_weight: float = field(default=1.0, metadata={"help": "weight of the cluster-column NT-Xent"})
    entropy_weight: float = field(
        default=1.0, metadata={"help": "weight of the cluster entropy regulariser (CC authors: 1; the SLICER "
                                         "authors leave it out: 0 in slicer_authors.yaml)"})
    instance_temperature: float = field(default=0.07, metadata={"help": "InfoNCE temperature"})
    cluster_temperature: float = field(default=1.0, metadata={"help": "cluster NT-Xent temperature"})


@register("criterion", CRITERION_NAME, dataclass=SlicerCriterionConfig)
class SlicerCriterion(PluginCriterion):
    def __init__(self, task, instance_weight: float = 1.0, cluster_weight: float = 1.0,
                 entropy_weight: float = 1.0, instance_temperature: float = 0.07, cluster_temperature: float = 1.0):
        super().__init__(task)
        self.instance_weight, self.cluster_weight, self.entropy_weight = instance_weight, cluster_weight, \
            entropy_weight
        self.instance_temperature, self.cluster_temperature = instance_temperature, cluster_temperature

    def forward(self, model, sample, reduce: bool = True):
        out = model(**sample["net_input"])
        out = {k: v.float() for k, v in out.items()}  # losses in float32 also under fp16/bf16 training
        inst = symmetric_info_nce(out["q1"], out["q2"], out["k1"], out["k2"], out["negatives"],
                                  self.instance_temperature)
        clus, ent = cluster_contrast(out["c1"], out["c2"], self.cluster_temperature)
        loss = self.instance_weight * inst + self.cluster_weight * clus + self.entropy_weight * ent
        b = out["q1"].size(0)
        # fairseq divides gradients by sample_size: return the batch mean times the batch size
        sample_size = b
        used = out["c1"].argmax(dim=1).unique().numel()
        logging_output = {
            "loss": weighted(loss, sample_size),
            "instance_loss": weighted(inst, sample_size),
            "cluster_loss": weighted(clus, sample_size),
            "cluster_entropy": weighted(ent, sample_size),
            "clusters_used": weighted(used, sample_size),
            "sample_size": sample_size, "nsentences": b, "ntokens": b,
        }
        return loss * sample_size, sample_size, logging_output
