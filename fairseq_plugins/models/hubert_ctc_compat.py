"""``hubert_ctc_compat``: fairseq's own HuBERT CTC fine-tuning model with its missing config field restored.

In fairseq main (and fairseq-fixed 0.12.3.1) ``HubertEncoder.__init__`` reads ``cfg.autoregressive``, which only
``HubertSeq2SeqConfig`` defines, so ``model._name=hubert_ctc`` dies with ``Key 'autoregressive' not in
'HubertCtcConfig'`` whatever the task. This registers the same model (fairseq's ``HubertCtc`` and
``HubertEncoder``, unchanged) under a config that adds the field (always False for CTC). Use it with fairseq's
``audio_finetuning`` task and ``ctc`` criterion (examples/hubert/config/hubert_tiny_ctc.yaml); the checkpoints it
writes are ordinary ``HubertCtc`` checkpoints.
"""
from dataclasses import dataclass, field

from fairseq.models.hubert.hubert_asr import HubertCtc, HubertCtcConfig

from fairseq_plugins.compat import register


@dataclass
class HubertCtcCompatConfig(HubertCtcConfig):
    autoregressive: bool = field(
        default=False, metadata={"help": "always False for CTC; read by fairseq's HubertEncoder"}
    )


@register("model", "hubert_ctc_compat", dataclass=HubertCtcCompatConfig)
class HubertCtcCompat(HubertCtc):
    """fairseq's ``HubertCtc``; only the config class differs (``HubertCtc.build_model`` builds ``cls``)."""
