"""The ``soft_dtw`` criterion on the laser_finetune model: the LASER loss is the divergence plus alpha times
both views' IDM, gradients reach only the trainable modules, SCORE uses the frozen reference and length
normalisation, and bad input raises instead of producing a NaN loss."""
import pytest
import torch

from fairseq_plugins.criterions.soft_dtw import SoftDTWCriterion, SoftDTWCriterionConfig
from fairseq_plugins.losses.idm import contrastive_idm
from fairseq_plugins.losses.soft_dtw import soft_dtw_divergence
from fairseq_plugins.models.laser_finetune import LaserFinetuneModel, LaserFinetuneModelConfig

pytestmark = pytest.mark.slow  # needs the session's fairseq-trained tiny HuBERT


def _model(ckpt, **kw):
    torch.manual_seed(0)
    return LaserFinetuneModel.build_model(LaserFinetuneModelConfig(checkpoint=ckpt, projection_dim=32, **kw))


def _sample(lengths1=(9000, 12000), lengths2=(10000, 11000)):
    g = torch.Generator().manual_seed(1)

    def net(lengths):
        src = torch.randn(len(lengths), max(lengths), generator=g) * 0.1
        pad = torch.zeros_like(src, dtype=torch.bool)
        for i, n in enumerate(lengths):
            pad[i, n:] = True
            src[i, n:] = 0
        return {"source": src, "padding_mask": pad}

    return {"id": torch.arange(len(lengths1)), "net_input": net(lengths1), "net_input_2": net(lengths2),
            "nsentences": len(lengths1)}


def test_laser_loss_is_divergence_plus_idm_and_grads_stay_in_trainable_modules(tiny_hubert):
    model = _model(tiny_hubert["ckpt"]).eval()
    crit = SoftDTWCriterion(SoftDTWCriterionConfig(), task=None)
    sample = _sample()
    loss, n, log = crit(model, sample)
    a, b = model(**sample["net_input"]), model(**sample["net_input_2"])
    div = soft_dtw_divergence(a["x"], b["x"], 0.1, a["lengths"], b["lengths"])
    idm = contrastive_idm(a["x"], a["lengths"], 0.0, 1.1) + contrastive_idm(b["x"], b["lengths"], 0.0, 1.1)
    torch.testing.assert_close(loss, (div + 0.4 * idm).sum())
    assert n == 2 and log["sample_size"] == 2 and abs(log["idm"] / 2 - float(idm.mean())) < 1e-4
    loss.backward()
    for name, p in model.named_parameters():
        trainable = name.startswith(("backbone.encoder.layers.2.", "backbone.encoder.layers.3.",
                                     "backbone.encoder.layer_norm.", "proj."))
        assert (p.grad is not None) == trainable, name
        assert p.requires_grad == trainable, name


def test_projection_is_unit_norm_and_lengths_follow_padding(tiny_hubert):
    model = _model(tiny_hubert["ckpt"]).eval()
    out = model(**_sample()["net_input"])
    torch.testing.assert_close(out["x"].norm(dim=-1), torch.ones(out["x"].shape[:2]))
    # model.encode_per_item: each item goes through the conv stack (receptive field 400, stride 320) unpadded
    assert out["lengths"].tolist() == [(n - 400) // 320 + 1 for n in (9000, 12000)]


def test_score_variant_uses_the_frozen_reference(tiny_hubert):
    model = _model(tiny_hubert["ckpt"], frozen_reference=True)
    crit = SoftDTWCriterion(SoftDTWCriterionConfig(variant="score"), task=None)
    sample = _sample()
    model.train()
    assert not model.reference.training
    loss, _, log = crit(model, sample)
    model.eval()
    a = model(**sample["net_input"])
    b = model(**sample["net_input_2"], reference=True)
    div = soft_dtw_divergence(a["x"], b["x"], 0.1, a["lengths"], b["lengths"]) / (a["lengths"] + b["lengths"])
    assert log["idm"] == 0.0
    loss.backward()
    assert all(p.grad is None for p in model.reference.parameters())
    # tuned and reference start equal: with dropout off the loss is the normalised divergence
    model.eval()
    loss_eval, _, _ = crit(model, sample)
    torch.testing.assert_close(loss_eval, div.sum())


def test_score_without_reference_is_refused(tiny_hubert):
    crit = SoftDTWCriterion(SoftDTWCriterionConfig(variant="score"), task=None)
    with pytest.raises(ValueError, match="criterion.variant=score needs model.frozen_reference=true"):
        crit(_model(tiny_hubert["ckpt"]), _sample())


@pytest.mark.parametrize("gamma", [0.0, -1.0])
def test_gamma_must_be_positive(gamma):
    with pytest.raises(ValueError, match=f"criterion.gamma={gamma}: soft-DTW needs gamma > 0"):
        SoftDTWCriterion(SoftDTWCriterionConfig(gamma=gamma), task=None)


def test_nan_audio_raises_instead_of_a_nan_loss(tiny_hubert):
    sample = _sample()
    sample["net_input"]["source"][0, 100] = float("nan")
    crit = SoftDTWCriterion(SoftDTWCriterionConfig(), task=None)
    with pytest.raises(ValueError, match="non-finite"):
        crit(_model(tiny_hubert["ckpt"]).eval(), sample)


def test_all_padding_item_is_named(tiny_hubert):
    sample = _sample()
    sample["net_input"]["padding_mask"][1, :] = True
    crit = SoftDTWCriterion(SoftDTWCriterionConfig(), task=None)
    with pytest.raises(ValueError, match=r"view 1 of sample ids \[1\] has no frame \(all padding\)"):
        crit(_model(tiny_hubert["ckpt"]).eval(), sample)
