"""The ``mgf`` model and criterion on a tiny encoder: output shapes, the two kinds of seeded span masks (repeat
with the seed, differ across ranks and updates, frame spans short, phone spans long), stop-gradient and EMA
phoneme targets, the quantised (wav2vec 2.0 Gumbel quantiser) target with its diversity term, a scale's
weight 0 = no masks, no head, no gradient, logged terms, the distractor draw keyed by the masks, and removal
of the heads followed by a strict load (what fairseq's CTC fine-tuning does)."""
import tempfile

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from fairseq_plugins.criterions.mgf import MgfCriterion
from fairseq_plugins.models.mgf import MgfConfig, MgfModel
from fairseq_plugins.tasks.multiview_audio_pretraining import (
    MultiviewAudioPretrainingConfig,
    MultiviewAudioPretrainingTask,
)

TINY_MGF = dict(utt_proj_dim=24, utt_proj_hidden_dim=32, frame_layer=1, mask_length=5, mask_prob=0.4,
                frame_mask_prob=0.15, frame_mask_length=2)


def build(seed=1, **overrides):
    task = MultiviewAudioPretrainingTask.setup_task(OmegaConf.structured(MultiviewAudioPretrainingConfig(
        data=tempfile.gettempdir(), seed=seed, tpu=False, train_subset="train", augmentations=[])))
    return task, MgfModel.build_model(OmegaConf.structured(MgfConfig(**overrides)), task)


@pytest.fixture
def model_of(tiny):
    def make(seed=1, **overrides):
        return build(seed, **{**tiny.encoder, **TINY_MGF, **overrides})
    return make


def waves(rows=6, samples=8000, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((rows, samples)).astype(np.float32))


def sample_of(src, pad):
    B = src.size(0) // 2
    return {"net_input": {"source": src, "padding_mask": pad},
            "views": {"num_views": 2, "batch_size": B, "aligned": False}}


def test_forward_shapes_and_masks(model_of):
    _, model = model_of()
    model.train()
    src = waves()
    pad = torch.zeros_like(src, dtype=torch.bool)
    pad[2, 6000:] = pad[5, 6000:] = True
    out = model(src, pad)
    T = 1 + (8000 - 400) // 320
    assert out["x"].shape == (6, T, 32) and out["frame_pred"].shape == out["frame_target"].shape == (6, T, 80)
    assert out["phone_pred"].shape == out["phone_target"].shape == (6, T, 32)
    assert out["pooled"].shape == (2, 3, 32) and out["utt_z"].shape == (2, 3, 24)
    fm, pm = out["frame_mask"], out["phone_mask"]
    assert fm.any() and pm.any() and not (fm & pm).any()
    assert not fm[out["padding_mask"]].any() and not pm[out["padding_mask"]].any()
    assert torch.equal(out["mask_indices"] & ~out["padding_mask"], fm | pm)
    assert not out["phone_target"].requires_grad and out["phone_pred"].requires_grad

    def runs(m):  # span lengths of a mask row
        lengths, n = [], 0
        for v in m.tolist() + [False]:
            if v:
                n += 1
            elif n:
                lengths.append(n)
                n = 0
        return lengths
    assert max(max(runs(r), default=0) for r in fm) <= 2  # short frame-scale spans
    assert max(max(runs(r), default=0) for r in pm) >= 5  # phoneme-length spans
    with pytest.raises(ValueError, match="2 segments per utterance"):
        model(src[:4], num_views=4)


def test_masks_repeat_with_the_seed_and_differ_across_updates_and_ranks(model_of, monkeypatch):
    import fairseq_plugins.modules.span_mask as span_mask

    src = waves()
    masks = []
    for seed, update, rank in [(1, 5, 0), (1, 5, 0), (1, 6, 0), (2, 5, 0), (1, 5, 1)]:
        monkeypatch.setattr(span_mask, "data_parallel_rank", lambda r=rank: r)
        _, model = model_of(seed=seed)
        model.train()
        model.set_num_updates(update)
        out = model(src, None)
        masks.append((out["frame_mask"], out["phone_mask"]))
    same = [torch.equal(masks[0][k], masks[1][k]) for k in range(2)]
    assert all(same)
    for other in masks[2:]:
        assert not torch.equal(masks[0][0], other[0]) and not torch.equal(masks[0][1], other[1])


def grads(model):
    return {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("off", ["w_frame", "w_phone", "w_utt"])
def test_weight_zero_skips_the_scale_and_gives_no_gradient(model_of, off):
    task, model = model_of()
    model.train()
    weights = {"w_frame": 1.0, "w_phone": 1.0, "w_utt": 1.0, off: 0.0}
    crit = MgfCriterion(task, **weights, num_distractors=10)
    src = waves()
    calls = {name: 0 for name in ("recon_head", "phone_head", "utt_projector")}
    for name in calls:
        getattr(model, name).register_forward_hook(lambda *a, n=name: calls.__setitem__(n, calls[n] + 1))
    loss, n, log = crit(model, sample_of(src, torch.zeros_like(src, dtype=torch.bool)))
    loss.backward()
    head_of = {"w_frame": "recon_head", "w_phone": "phone_head", "w_utt": "utt_projector"}
    assert {k: v > 0 for k, v in calls.items()} == {h: w != off for w, h in head_of.items()}  # no compute
    g = grads(model)
    head = {"w_frame": "recon_head", "w_phone": "phone_head", "w_utt": "utt_projector"}
    for w, name in head.items():
        has = any(v is not None and v.abs().sum() > 0 for k, v in g.items() if k.startswith(name + "."))
        assert has == (w != off), (w, name)
    term = {"w_frame": "frame_loss", "w_phone": "phone_loss", "w_utt": "utt_loss"}
    assert term[off] not in log and all(term[w] in log for w in term if w != off)
    assert n == 3 and log["sample_size"] == 3
    # the switched-off scale draws no masks either
    out = model(src, None, frame=off != "w_frame", phone=off != "w_phone", utt=off != "w_utt")
    key = {"w_frame": "frame_mask", "w_phone": "phone_mask", "w_utt": "utt_z"}[off]
    assert key not in out
    if off != "w_utt":
        assert torch.equal(out["mask_indices"], out["frame_mask" if off == "w_phone" else "phone_mask"])


def test_criterion_logs_every_term_and_rejects_bad_weights(model_of):
    task, model = model_of()
    model.train()
    crit = MgfCriterion(task, num_distractors=10)
    src = waves()
    _, _, log = crit(model, sample_of(src, None))
    for key in ("loss", "frame_loss", "phone_loss", "phone_acc", "utt_loss", "utt_acc", "utt_collapse_std",
                "collapse_ref", "enc_collapse_std", "phone_collapse_std", "frame_mask_frac", "phone_mask_frac"):
        assert key in log and np.isfinite(log[key]), key
    assert 0 <= log["phone_acc"] / 3 <= 1 and 0 <= log["utt_acc"] / 3 <= 1
    with pytest.raises(ValueError, match="all 0"):
        MgfCriterion(task, w_frame=0, w_phone=0, w_utt=0)
    with pytest.raises(ValueError, match="non-negative"):
        MgfCriterion(task, w_utt=-1)


def test_distractor_draw_follows_the_mask_keys(model_of):
    """The same forward (same mask keys) gives the same loss; the next micro-batch draws other distractors."""
    task, model = model_of(dropout=0.0)
    model.train()
    crit = MgfCriterion(task, w_frame=0, w_utt=0, num_distractors=3)
    src = waves()
    model.set_num_updates(3)
    a = crit(model, sample_of(src, None))[2]["phone_loss"]
    model2 = model_of(dropout=0.0)[1]
    model2.load_state_dict(model.state_dict())
    model2.train()
    model2.set_num_updates(3)
    b = crit(model2, sample_of(src, None))[2]["phone_loss"]
    assert a == b


def test_ema_teacher_target_and_update(model_of):
    _, model = model_of(phone_target="ema", ema_decay=0.5)
    model.train()
    src = waves()
    out = model(src, None)
    enc = model.ema_teacher["encoder"]
    assert not any(p.requires_grad for p in model.ema_teacher.parameters())
    # teacher = student at the start: its last layer equals the unmasked student pass in eval mode
    model.eval()
    ref = model.extract_features(src)[0]
    model.train()
    assert torch.allclose(out["phone_target"], ref, atol=1e-5)
    before = [p.clone() for p in enc.parameters()]
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(1.0)
    model.set_num_updates(1)  # one update done: the teacher moves half way
    after = list(enc.parameters())
    student = list(model.encoder.parameters())
    assert all(torch.allclose(a, 0.5 * b + 0.5 * s) for a, b, s in zip(after, before, student))
    snapshot = [p.clone() for p in enc.parameters()]
    model.set_num_updates(10)  # a jump (checkpoint load): no step
    assert all(torch.equal(a, b) for a, b in zip(enc.parameters(), snapshot))
    assert "ema_teacher.encoder.layers.0.fc1.weight" in model.state_dict()
    from fairseq_plugins.evaluate.upstream import find_encoder

    assert find_encoder(model)[0] == "encoder"  # the probes read the student, not the teacher


def test_quantised_target_path_gradient_and_diversity_term(model_of):
    """phone_target=quantised: the targets of the masked frames are project_q of one codeword per group of
    fairseq's GumbelVectorQuantizer over the unmasked conv features (zeros elsewhere); the InfoNCE alone trains
    the quantiser; the diversity term enters the loss with its own weight; the heads go before fine-tuning."""
    task, model = model_of(phone_target="quantised", latent_vars=8, latent_groups=2, dropout=0.0,
                           dropout_features=0.0)
    src = waves()
    model.eval()  # hard (argmax) codewords, no dropout
    out = model(src, None, frame=False, utt=False)
    mask, target = out["phone_mask"], out["phone_target"]
    assert mask.any() and target.requires_grad
    assert not target[~mask].any()
    conv = model.encode_features(src)["conv"]
    codes = model.quantizer(conv[mask].unsqueeze(0), produce_targets=True)["targets"][0]  # N x groups
    vars_ = model.quantizer.vars[0]  # (groups * latent_vars) x (dim / groups)
    words = torch.cat([vars_[g * 8 + codes[:, g]] for g in range(2)], -1)
    assert torch.allclose(target[mask], model.project_q(words), atol=1e-5)
    assert out["num_vars"] == 16 and 1 <= float(out["prob_perplexity"].detach()) <= 16

    model.train()
    crit = MgfCriterion(task, w_frame=0, w_utt=0, num_distractors=10, w_diversity=0.0)
    loss, _, log = crit(model, sample_of(src, None))
    loss.backward()
    for name in ("quantizer.vars", "quantizer.weight_proj.weight", "project_q.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name  # trained by the InfoNCE alone
    assert 0 < log["diversity_loss"] / 3 < 1 and "prob_perplexity" in log and "quantizer_temp" in log
    out = model(src, None, frame=False, utt=False)
    out = {k: v.detach() if torch.is_tensor(v) else v for k, v in out.items()}
    base, terms = crit.compute_loss(out)
    with_div, _ = MgfCriterion(task, w_frame=0, w_utt=0, num_distractors=10, w_diversity=0.5).compute_loss(out)
    assert torch.allclose(with_div - base, 0.5 * terms["diversity_loss"])
    model.set_num_updates(1000)  # wav2vec 2.0's temperature schedule
    assert model.quantizer.curr_temp == pytest.approx(max(2 * 0.999995 ** 1000, 0.5))
    state = model.state_dict()
    _, fresh = model_of(phone_target="quantised", latent_vars=8, latent_groups=2)
    fresh.remove_pretraining_modules()
    fresh.load_state_dict(state, strict=True)
    assert fresh.quantizer is None and fresh.project_q is None
    with pytest.raises(ValueError, match="latent_groups=3"):
        model_of(phone_target="quantised", latent_groups=3)


def test_bad_layers_are_rejected(model_of):
    with pytest.raises(ValueError, match="frame_layer=5"):
        model_of(frame_layer=5)
    with pytest.raises(ValueError, match="phone_target_layer=3"):
        model_of(phone_target_layer=3)
    with pytest.raises(ValueError, match="encoder_layerdrop"):
        model_of(encoder_layerdrop=0.1)


def test_remove_pretraining_modules_then_strict_load(model_of):
    _, model = model_of(phone_target="ema")
    state = model.state_dict()
    _, fresh = model_of(phone_target="ema")
    fresh.remove_pretraining_modules()
    fresh.load_state_dict(state, strict=True)  # head keys skipped, encoder keys strict
    assert fresh.recon_head is None and fresh.ema_teacher is None
    feats, pad = fresh.extract_features(waves(2))
    assert feats.shape[-1] == 32 and pad is None
