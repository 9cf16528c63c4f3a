"""LASER / SCORE against the authors' code (github.com/Trikaldarshi/LASER, .../SCORE_Finetuning): padded batches
encode like single items, SCORE's frozen copy in train mode, the two-layer WavLM projection, and the paper
configs composed against the plugin's dataclasses with the authors' optimiser (s3prl AdamW: eps 1e-7, wd 0)."""
import os

import pytest
import torch
from fairseq.optim.adam import FairseqAdamConfig
from omegaconf import OmegaConf

from fairseq_plugins.criterions.soft_dtw import SoftDTWCriterionConfig
from fairseq_plugins.models.laser_finetune import LaserFinetuneModel, LaserFinetuneModelConfig
from fairseq_plugins.tasks.laser_finetune import LaserFinetuneConfig

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _spec(dropout: float = 0.0):
    """A small fairseq HuBERT (the Base extractor: extractor_mode 'default', GroupNorm in the first conv layer)."""
    model = {"_name": "hubert", "extractor_mode": "default", "encoder_layers": 2, "encoder_embed_dim": 32,
             "encoder_ffn_embed_dim": 64, "encoder_attention_heads": 2, "final_dim": 16, "conv_pos": 16,
             "conv_pos_groups": 4, "conv_feature_layers": "[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2",
             "dropout": dropout, "attention_dropout": dropout, "activation_dropout": dropout, "layerdrop": 0.3}
    task = {"_name": "hubert_pretraining", "data": "/nonexistent", "labels": ["km"], "label_rate": 50.0,
            "sample_rate": 16000, "normalize": False}
    return {"kind": "hubert", "model": model, "task": task}


def _model(**kw) -> LaserFinetuneModel:
    torch.manual_seed(0)
    cfg = LaserFinetuneModelConfig(checkpoint="unused", projection_dim=8, num_trainable_layers=1,
                                   backbone_spec=_spec(kw.pop("dropout", 0.0)), **kw)
    return LaserFinetuneModel.build_model(cfg)


def _batch():
    g = torch.Generator().manual_seed(1)
    lengths = [16000, 9000, 12345]
    source = torch.zeros(3, max(lengths))
    pad = torch.ones(3, max(lengths), dtype=torch.bool)
    for i, n in enumerate(lengths):
        source[i, :n] = torch.randn(n, generator=g)
        pad[i, :n] = False
    return source, pad, lengths


def _alone(model, source, lengths):
    return [model(source[i:i + 1, :n])["x"][0] for i, n in enumerate(lengths)]


def test_padded_batch_encodes_like_single_items():
    model = _model().eval()
    source, pad, lengths = _batch()
    with torch.no_grad():
        out = model(source, pad)
        alone = _alone(model, source, lengths)
    for i, ref in enumerate(alone):
        assert int(out["lengths"][i]) == ref.size(0)
        assert (out["x"][i, : ref.size(0)] - ref).abs().max() < 1e-5
        assert bool(out["padding_mask"][i, ref.size(0):].all()) and not bool(out["padding_mask"][i, :ref.size(0)].any())


def test_one_padded_forward_differs_which_is_why_items_are_encoded_alone():
    """The GroupNorm of fairseq's 'default' extractor sees the padding: a padded item changes (the option is
    kept for speed, and this test documents what it costs)."""
    model = _model(encode_per_item=False).eval()
    source, pad, lengths = _batch()
    with torch.no_grad():
        out = model(source, pad)
        alone = _alone(model, source, lengths)
    assert torch.allclose(out["x"][0], alone[0], atol=1e-5)  # the longest item has no padding
    assert (out["x"][1, : alone[1].size(0)] - alone[1]).abs().max() > 1e-3


def test_score_reference_in_train_mode_only_when_asked():
    src = torch.randn(1, 8000)
    authors = _model(frozen_reference=True, reference_dropout=True, dropout=0.2).train()
    assert authors.reference.training and authors.reference.encoder.layerdrop == 0.0
    with torch.no_grad():
        a, b = authors(src, reference=True)["x"], authors(src, reference=True)["x"]
    assert not torch.allclose(a, b)  # dropout on in the frozen copy
    assert not any(p.requires_grad for p in authors.reference.parameters())
    authors.eval()
    assert not authors.reference.training
    ours = _model(frozen_reference=True, dropout=0.2).train()
    assert not ours.reference.training
    with torch.no_grad():
        assert torch.equal(ours(src, reference=True)["x"], ours(src, reference=True)["x"])


def test_two_layer_projection_and_cnn_layer_norm_training():
    model = _model(projection_layers=2, extra_trainable=["layer_norm"])
    linears = [m for m in model.proj.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 2 and any(isinstance(m, torch.nn.ReLU) for m in model.proj.modules())
    assert model(torch.randn(1, 8000))["x"].shape[-1] == 8
    assert "layer_norm.weight" in model.trainable and "feature_extractor.conv_layers.0.0.weight" not in model.trainable
    with pytest.raises(ValueError, match="projection_layers"):
        _model(projection_layers=3)


def _compose(name):
    cfg = OmegaConf.load(os.path.join(REPO, "examples", "laser", "config", name))
    out = {}
    for group, dc in (("model", LaserFinetuneModelConfig), ("criterion", SoftDTWCriterionConfig),
                      ("task", LaserFinetuneConfig), ("optimizer", FairseqAdamConfig)):
        section = OmegaConf.to_container(cfg[group])
        section.pop("_name")
        out[group] = OmegaConf.merge(OmegaConf.structured(dc), section)  # a misspelt field raises here
    return cfg, out


@pytest.mark.parametrize("name", ["laser_hubert_base.yaml", "laser_wavlm_base.yaml", "score_hubert_base.yaml",
                                  "score_wavlm_base.yaml"])
def test_paper_configs_use_the_authors_optimiser(name):
    cfg, c = _compose(name)
    assert c["optimizer"].adam_eps == 1e-7 and c["optimizer"].weight_decay == 0.0
    assert cfg.optimization.max_update == 3600 and list(cfg.optimization.update_freq) == [8]
    assert c["model"].encode_per_item


def test_score_configs_follow_the_score_code():
    _, hub = _compose("score_hubert_base.yaml")
    _, wav = _compose("score_wavlm_base.yaml")
    for c in (hub, wav):
        assert c["model"].frozen_reference and c["model"].reference_dropout
        assert list(c["model"].extra_trainable) == ["layer_norm"] and c["criterion"].variant == "score"
    assert hub["model"].projection_layers == 1 and wav["model"].projection_layers == 2
    assert list(hub["task"].speed_factors) == [0.9, 1.0, 1.1]
    assert list(wav["task"].speed_factors) == [0.85, 0.9, 1.0, 1.1, 1.15]
