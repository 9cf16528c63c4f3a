"""WavLM as a fairseq model that pre-trains with fairseq's stock HuBERT task and criterion.

WavLM ("WavLM: Large-Scale Self-Supervised Pre-Training for Full Stack Speech Processing", Chen et al.,
arXiv 2110.13900) is trained like HuBERT -- masked prediction of offline cluster labels -- with a Transformer
that has a gated relative position bias. This file registers the fairseq model ``wavlm``
(:class:`WavLMModel`, config :class:`WavLMPretrainConfig`): a fairseq ``HubertModel`` whose encoder is
:class:`~fairseq_plugins.modules.wavlm.WavLMTransformerEncoder`, so ``task=hubert_pretraining`` and
``criterion=hubert`` train it unchanged (same forward / get_logits / get_targets / get_extra_losses).
Its backbone parameters carry the release names, so :meth:`WavLMModel.export_release` writes a file the
authors' code and :func:`~fairseq_plugins.modules.wavlm.load_wavlm_release` load, and
``model.init_from_release`` starts pre-training from a released checkpoint. The WavLM-specific data
simulation of the paper (utterance mixing / denoising) is a data-side choice and is not part of this model.
"""
import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
from fairseq.data.dictionary import Dictionary
from fairseq.models.hubert.hubert import HubertConfig, HubertModel
from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig, HubertPretrainingTask

from fairseq_plugins.compat import register
from fairseq_plugins.modules.backbones import BackboneCheckpointError, strict_load
from fairseq_plugins.modules.wavlm import (
    ARCHITECTURE_KEYS,
    BACKBONE_PREFIXES,
    WavLMFeaturesMixin,
    WavLMRelativePositionConfig,
    WavLMTransformerEncoder,
    check_supported,
    load_wavlm_release,
    parse_conv_feature_layers,
    release_cfg_dict,
    save_wavlm_release,
)

logger = logging.getLogger(__name__)

MODEL_NAME = "wavlm"


@dataclass
class WavLMPretrainConfig(HubertConfig, WavLMRelativePositionConfig):
    """HuBERT's model config plus WavLM's relative position fields; defaults are WavLM-Base's."""

    # WavLM-Base's training values where HubertConfig's defaults differ (as stored in the released cfg)
    encoder_layerdrop: float = field(default=0.05, metadata={"help": "probability of skipping a layer"})
    dropout_input: float = field(default=0.1, metadata={"help": "dropout on the projected conv features"})
    dropout_features: float = field(default=0.1, metadata={"help": "dropout on the unmasked features"})
    feature_grad_mult: float = field(default=0.1, metadata={"help": "gradient scale for the conv extractor"})
    mask_prob: float = field(default=0.8, metadata={"help": "probability of a frame starting a mask span"})
    init_from_release: Optional[str] = field(
        default=None,
        metadata={"help": "absolute path of a released WavLM checkpoint whose weights initialise the "
                          "backbone; its architecture keys (and task.normalize) must equal this config's"},
    )


class WavLMModel(WavLMFeaturesMixin, HubertModel):
    """HuBERT pre-training model with the WavLM encoder.

    Parameters: the release names (``feature_extractor.*``, ``post_extract_proj.*``, ``mask_emb``,
    ``encoder.*``, ``layer_norm.*``) plus HuBERT's heads ``final_proj.*``, ``label_embs_concat`` (and
    ``target_glu.*``). ``extract_features`` is the backbone's (with ``ret_layer_results``).
    """

    def __init__(self, cfg: WavLMPretrainConfig, task_cfg: HubertPretrainingConfig,
                 dictionaries: List[Optional[Dictionary]]) -> None:
        if str(cfg.layer_type) != "transformer" or cfg.conv_pos_batch_norm:
            raise ValueError(
                "wavlm supports layer_type=transformer with the weight-normed positional conv only (got "
                f"layer_type={cfg.layer_type}, conv_pos_batch_norm={cfg.conv_pos_batch_norm})"
            )
        check_supported(cfg)
        # HubertModel builds fairseq's stock encoder; it is replaced (its init cost is the only waste)
        super().__init__(cfg, task_cfg, dictionaries)
        self.encoder = WavLMTransformerEncoder(cfg)
        self.cfg = cfg
        self.normalize = bool(task_cfg.normalize)

    @classmethod
    def build_model(cls, cfg: WavLMPretrainConfig, task: HubertPretrainingTask) -> "WavLMModel":
        """Build (HubertModel.build_model hard-codes HubertModel); load ``init_from_release`` if set."""
        model = cls(cfg, task.cfg, task.dictionaries)
        if cfg.init_from_release:
            model.load_release(cfg.init_from_release)
        return model

    def load_release(self, path: str) -> None:
        """Initialise the backbone from a released WavLM file (strict on every backbone key); the heads keep
        their initialisation. Raises :class:`BackboneCheckpointError` when the architectures differ."""
        backbone, release_cfg = load_wavlm_release(path)
        mine = release_cfg_dict(self.cfg, normalize=self.normalize)
        theirs = release_cfg_dict(release_cfg)
        mine["conv_feature_layers"] = parse_conv_feature_layers(mine["conv_feature_layers"])
        theirs["conv_feature_layers"] = parse_conv_feature_layers(theirs["conv_feature_layers"])
        diff = {k: (mine[k], theirs[k]) for k in (*ARCHITECTURE_KEYS, "normalize") if mine[k] != theirs[k]}
        if diff:
            fixes = " ".join(f"{'task' if k == 'normalize' else 'model'}.{k}={v[1]}" for k, v in diff.items())
            raise BackboneCheckpointError(
                f"{path}: architecture differs from the model config (key: (config, file)) {diff}; "
                f"set {fixes}"
            )
        strict_load(_BackboneView(self), backbone.state_dict(), path, what="the wavlm model's backbone")
        logger.info("initialised the wavlm backbone from %s", path)

    def release_state_dict(self) -> Dict[str, torch.Tensor]:
        """Backbone parameters under their release names (pre-training heads dropped)."""
        return {k: v.detach() for k, v in self.state_dict().items() if k.split(".")[0] in BACKBONE_PREFIXES}

    def release_cfg(self) -> Dict[str, Any]:
        """The release cfg dict of this model (``normalize`` from the task config)."""
        return release_cfg_dict(self.cfg, normalize=self.normalize)

    def export_release(self, path: str) -> None:
        """Write the backbone in the released WavLM format (see :func:`save_wavlm_release`)."""
        save_wavlm_release(self, self.release_cfg(), path)


class _BackboneView(torch.nn.Module):
    """The backbone part of a WavLMModel as a module, so release state dicts load strictly into it."""

    def __init__(self, model: WavLMModel) -> None:
        super().__init__()
        for name in BACKBONE_PREFIXES:
            value = getattr(model, name)
            if isinstance(value, torch.nn.Parameter):
                self.register_parameter(name, value)
            elif value is not None:
                self.add_module(name, value)


register("model", MODEL_NAME, dataclass=WavLMPretrainConfig)(WavLMModel)
