"""One shared ``reduce_metrics`` for every plugin criterion.

Convention: a criterion's ``logging_output`` holds the counts ``sample_size``, ``nsentences``, ``ntokens`` and
any number of float metrics, each already multiplied by ``sample_size`` (a batch-level statistic such as a
collapse monitor is weighted the same way). :meth:`PluginCriterion.reduce_metrics` sums them over workers and
batches and logs ``metric = sum / sample_size`` through fairseq's metrics, so every loss term appears in the
training log, TensorBoard and the validation summary without a per-criterion reduce block.
"""
from typing import Any, Dict, List, Tuple

import torch
from fairseq.criterions import FairseqCriterion
from fairseq.logging import metrics

COUNT_KEYS = ("sample_size", "nsentences", "ntokens")


def weighted(value: Any, sample_size: float) -> float:
    """``value * sample_size`` as a python float (detached), the form every metric is logged in."""
    if isinstance(value, torch.Tensor):
        value = value.detach().float().item()
    return float(value) * float(sample_size)


class PluginCriterion(FairseqCriterion):
    """Base class: subclasses implement ``forward`` and fill logging outputs by the convention above."""

    @classmethod
    def reduce_metrics(cls, logging_outputs: List[Dict[str, Any]]) -> None:
        sample_size = sum(log.get("sample_size", 0) for log in logging_outputs)
        for key in ("nsentences", "ntokens"):
            metrics.log_scalar(key, sum(log.get(key, 0) for log in logging_outputs), round=0)
        metrics.log_scalar("sample_size", sample_size, round=0)
        if sample_size == 0:
            return
        keys = sorted({k for log in logging_outputs for k in log if k not in COUNT_KEYS})
        for key in keys:
            total = sum(float(log.get(key, 0.0)) for log in logging_outputs)
            metrics.log_scalar(key, total / sample_size, sample_size, round=4)

    @staticmethod
    def float32_outputs(net_output: Dict[str, Any]) -> Dict[str, Any]:
        """The model's floating-point outputs in float32, so losses are computed in float32 under bf16/fp16."""
        return {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in net_output.items()}

    @staticmethod
    def frame_loss_result(loss: torch.Tensor, terms: Dict[str, Any], net_output: Dict[str, Any],
                          sample_size: int) -> Tuple[torch.Tensor, int, Dict[str, Any]]:
        """fairseq's ``(loss, sample_size, logging_output)`` for a per-utterance mean ``loss`` and its ``terms``;
        ``ntokens`` counts the unpadded frames of ``net_output["x"]`` (``B x T x C``, ``padding_mask`` B x T)."""
        x, pad = net_output["x"], net_output["padding_mask"]
        ntokens = x.shape[0] * x.shape[1] if pad is None else int((~pad).sum())
        logging_output = {"sample_size": sample_size, "nsentences": sample_size, "ntokens": ntokens,
                          "loss": weighted(loss, sample_size)}
        for key, value in terms.items():
            logging_output[key] = weighted(value, sample_size)
        return loss * sample_size, sample_size, logging_output

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
