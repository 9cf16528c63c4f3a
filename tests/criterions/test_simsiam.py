"""Tests for the SimSiam / masked-reconstruction losses and the simsiam, masked_reconstruction and
simsiam_recon criteria: stop-gradient, symmetry, the definition, the collapse monitor, masked-only
reconstruction, weights at 0 reducing to the single criteria, logging and registration."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fairseq.criterions import CRITERION_REGISTRY
from fairseq.logging import metrics
from fairseq.models import MODEL_REGISTRY
from fairseq.tasks import TASK_REGISTRY

from fairseq_plugins.criterions.masked_reconstruction import MaskedReconstructionCriterion
from fairseq_plugins.criterions.simsiam import SimsiamCriterion
from fairseq_plugins.criterions.simsiam_recon import SimsiamReconCriterion
from fairseq_plugins.losses.simsiam import collapse_std, healthy_std, masked_l1, negative_cosine, simsiam_loss
from fairseq_plugins.models.simsiam_recon import SimsiamReconModel
from fairseq_plugins.modules.span_mask import SpanMaskKeys
from fairseq_plugins.tasks.multiview_audio_pretraining import (
    MultiviewAudioPretrainingTask,
)


@pytest.fixture(scope="module")
def task_and_model(tiny):
    torch.manual_seed(0)
    return tiny.build_simsiam_recon(mask_prob=0.3)


def make_sample(B=3, samples=8000, seed=0, swap=False):
    src = torch.from_numpy(np.random.default_rng(seed).standard_normal((2 * B, samples)).astype(np.float32))
    pad = torch.zeros_like(src, dtype=torch.bool)
    pad[[1, B + 1], 6000:] = True
    if swap:  # exchange the two views
        src, pad = torch.cat([src[B:], src[:B]]), torch.cat([pad[B:], pad[:B]])
    return {"id": torch.arange(B), "net_input": {"source": src, "padding_mask": pad},
            "views": {"num_views": 2, "batch_size": B, "aligned": False}}


def run(criterion, model, sample, seed=0):
    """The criterion on a fresh mask-key counter: every call masks the same spans (same seed, update, rank
    and micro-batch), as the calls of one micro-batch position in a run do."""
    model.mask_keys = SpanMaskKeys(seed)
    torch.manual_seed(seed)
    return criterion(model, sample)


def rand_pz(V=2, N=5, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(V, N, D, generator=g), torch.randn(V, N, D, generator=g)


def test_stop_gradient_branch_gets_no_gradient():
    p, z = rand_pz()
    p.requires_grad_(True)
    z.requires_grad_(True)
    simsiam_loss(p, z).backward()
    assert z.grad is None and p.grad is not None and p.grad.abs().sum() > 0
    # with p = predictor(z), z gets exactly the gradient that flows through the predictor branch
    w = torch.randn(8, 8)
    z2 = z.detach().clone().requires_grad_(True)
    (g_full,) = torch.autograd.grad(simsiam_loss(z2 @ w, z2), z2)
    (g_pred_only,) = torch.autograd.grad(simsiam_loss(z2 @ w, z2.detach().clone()), z2)
    torch.testing.assert_close(g_full, g_pred_only)


def test_stop_gradient_in_the_model(task_and_model):
    _, model = task_and_model
    out = model(**make_sample()["net_input"], num_views=2, mask=False, recon=False)
    (g_full,) = torch.autograd.grad(simsiam_loss(out["p"], out["z"]), out["z"], retain_graph=True)
    (g_pred,) = torch.autograd.grad(simsiam_loss(out["p"], out["z"].detach()), out["z"])
    torch.testing.assert_close(g_full, g_pred)


def test_loss_matches_the_definition_and_is_symmetric():
    p, z = rand_pz()
    D = lambda a, b: -F.cosine_similarity(a, b, dim=-1).mean()  # noqa: E731
    expected = 0.5 * D(p[0], z[1]) + 0.5 * D(p[1], z[0])
    torch.testing.assert_close(simsiam_loss(p, z), expected)
    torch.testing.assert_close(simsiam_loss(p.flip(0), z.flip(0)), simsiam_loss(p, z))
    assert not torch.allclose(D(p[0], z[1]), D(p[1], z[0]))  # each direction alone is not symmetric
    same = z[:1].expand(2, -1, -1)
    assert simsiam_loss(same, same).item() == pytest.approx(-1.0)
    torch.testing.assert_close(negative_cosine(p[0], z[0]), -F.cosine_similarity(p[0], z[0], dim=-1))
    w = torch.tensor([1.0, 0, 0, 0, 0])
    torch.testing.assert_close(simsiam_loss(p, z, w), 0.5 * (D(p[0, :1], z[1, :1]) + D(p[1, :1], z[0, :1])))
    with pytest.raises(ValueError, match="at least two views"):
        simsiam_loss(p[:1], z[:1])


def test_criterion_symmetric_in_the_two_views(task_and_model):
    task, model = task_and_model
    crit = SimsiamCriterion(task)
    loss, _, _ = run(crit, model, make_sample())
    loss_swapped, _, _ = run(crit, model, make_sample(swap=True))
    torch.testing.assert_close(loss, loss_swapped)


def test_collapse_monitor():
    z = torch.randn(4096, 64)
    assert collapse_std(z).item() == pytest.approx(healthy_std(64), rel=0.05)
    assert healthy_std(64) == 1 / 8
    assert collapse_std(torch.ones(16, 64) * torch.randn(1, 64)).item() == pytest.approx(0.0, abs=1e-6)
    assert collapse_std(torch.randn(2, 4096, 64)).item() == pytest.approx(1 / math.sqrt(64), rel=0.05)


def test_only_masked_positions_are_reconstructed(task_and_model):
    torch.manual_seed(0)
    pred, target = torch.randn(2, 10, 4), torch.randn(2, 10, 4)
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, 2:5] = mask[1, 7:] = True
    loss, count = masked_l1(pred, target, mask)
    assert count == 6 and loss.item() == pytest.approx((pred[mask] - target[mask]).abs().mean().item())
    changed = target.clone()
    changed[~mask] = 100.0
    assert masked_l1(pred, changed, mask)[0].item() == loss.item()
    changed[0, 3] += 1.0
    assert masked_l1(pred, changed, mask)[0].item() != loss.item()
    zero, n = masked_l1(pred.requires_grad_(True), target, torch.zeros_like(mask))
    assert n == 0 and zero.item() == 0.0 and zero.requires_grad

    # through the model and the criterion: unmasked targets do not matter, masked ones do
    task, model = task_and_model
    crit = MaskedReconstructionCriterion(task)
    np.random.seed(1)
    out = model(**make_sample()["net_input"], num_views=2, simsiam=False)
    base = crit.compute_loss(out)[0]
    edited = dict(out, recon_target=out["recon_target"].masked_fill(~out["recon_mask"].unsqueeze(-1), 1e3))
    assert crit.compute_loss(edited)[0].item() == base.item()
    edited = dict(out, recon_target=out["recon_target"].masked_fill(out["recon_mask"].unsqueeze(-1), 1e3))
    assert crit.compute_loss(edited)[0].item() > base.item() + 100


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_simsiam_criterion_against_a_hand_computation(task_and_model):
    """``simsiam``: loss = B * (-(cos(p1, sg z2) + cos(p2, sg z1)) / 2), written out with cosine_similarity on
    the model's unmasked heads, and so are its gradients; nothing is masked or reconstructed."""
    task, model = task_and_model
    sample = make_sample()
    model.zero_grad()
    loss, size, log = run(SimsiamCriterion(task), model, sample)
    loss.backward()
    grads = _grads(model)
    model.zero_grad()
    out = model(**sample["net_input"], num_views=2, mask=False, recon=False)
    p, z = out["p"], out["z"].detach()
    cos = F.cosine_similarity(p[0], z[1], dim=-1).mean() + F.cosine_similarity(p[1], z[0], dim=-1).mean()
    expected = -cos / 2 * 3
    expected.backward()
    assert size == 3 and "recon_loss" not in log and "mask_frac" not in log
    torch.testing.assert_close(loss, expected)
    assert log["cos_sim"] == pytest.approx(cos.item() / 2 * 3, rel=1e-5)
    assert grads.keys() == _grads(model).keys() and not any(k.startswith("recon_head") for k in grads)
    for k, g in _grads(model).items():
        torch.testing.assert_close(grads[k], g)


def test_masked_reconstruction_criterion_against_a_hand_computation(task_and_model):
    """``masked_reconstruction``: loss = B * mean |recon_head(x) - log(mel(wav) + 1e-5)| over the masked,
    non-padding frames, with the mel computed by librosa; the SimSiam heads are not run."""
    import librosa

    task, model = task_and_model
    sample = make_sample()
    model.zero_grad()
    loss, size, log = run(MaskedReconstructionCriterion(task), model, sample)
    loss.backward()
    assert "simsiam_loss" not in log and not any(k.startswith(("projector", "predictor")) for k in _grads(model))
    model.mask_keys = SpanMaskKeys(0)  # the same masks as the criterion's forward
    with torch.no_grad():
        out = model(**sample["net_input"], num_views=2, simsiam=False)
        pred = model.recon_head(out["x"]).numpy()
    src = sample["net_input"]["source"].numpy()
    T = pred.shape[1]
    mel = librosa.feature.melspectrogram(y=np.pad(src, ((0, 0), (56, 0))), sr=16000, n_fft=512, win_length=400,
                                         hop_length=320, center=False, power=2.0, n_mels=80)
    target = np.log(mel + 1e-5).transpose(0, 2, 1)[:, :T]  # B x T x 80, frame t = samples [320t, 320t + 400)
    frame_pad = np.zeros((src.shape[0], T), dtype=bool)
    # rows 1 and 4 have 6000 real samples (see make_sample); HuBERT's frame padding: frame t covers samples
    # [t * (L // T), (t + 1) * (L // T)) and is padding when all of them are
    frame_pad[[1, 4], -(-6000 // (src.shape[1] // T)):] = True
    assert np.array_equal(out["padding_mask"].numpy(), frame_pad)
    keep = out["mask_indices"].numpy() & ~frame_pad
    expected = np.abs(pred - target)[keep].mean()
    assert loss.item() == pytest.approx(3 * expected, rel=1e-3)
    assert log["mask_frac"] / 3 == pytest.approx(keep.sum() / (~frame_pad).sum())


def test_combined_loss_is_the_weighted_sum(task_and_model):
    task, model = task_and_model
    loss, sample_size, log = run(SimsiamReconCriterion(task, recon_weight=0.5, simsiam_weight=2.0), model,
                                 make_sample())
    assert loss.item() == pytest.approx(0.5 * log["recon_loss"] + 2.0 * log["simsiam_loss"], rel=1e-5)
    assert log["loss"] == pytest.approx(loss.item(), rel=1e-6)
    assert log["cos_sim"] == pytest.approx(-log["simsiam_loss"], rel=1e-6)
    assert log["collapse_ref"] / sample_size == pytest.approx(1 / math.sqrt(48))
    assert 0 < log["mask_frac"] / sample_size < 1 and 0 < log["collapse_std"] / sample_size < 1
    with pytest.raises(ValueError, match="both 0"):
        SimsiamReconCriterion(task, recon_weight=0.0, simsiam_weight=0.0)


GRID = {  # row -> (criterion kwargs, model.simsiam_input, SimSiam input masked, reconstruction)
    "masked SimSiam + recon": ({}, "masked", True, True),
    "unmasked SimSiam + recon": ({}, "unmasked", False, True),
    "masked SimSiam only": ({"recon_weight": 0.0, "mask_without_recon": True}, "masked", True, False),
    "unmasked SimSiam only": ({"recon_weight": 0.0}, "unmasked", False, False),
}


@pytest.mark.parametrize("row", list(GRID))
def test_ablation_grid_rows(tiny, row):
    """The 2 x 2 grid of examples/simsiam_recon/README.md: SimSiam pools the masked or the unmasked encoder
    pass, independently of whether reconstruction is on."""
    kwargs, simsiam_input, masked, recon = GRID[row]
    task, model = tiny.build_simsiam_recon(mask_prob=0.3, simsiam_input=simsiam_input)
    model.train()
    passes, outputs = [], []
    run_transformer, forward = model.run_transformer, model.forward

    def spy_run(features, padding_mask, mask, output_layer=None):
        out = run_transformer(features, padding_mask, mask, output_layer)
        passes.append((mask, out["x"]))
        return out

    model.run_transformer = spy_run
    model.forward = lambda *a, **k: outputs.append(forward(*a, **k)) or outputs[-1]
    _, _, log = run(SimsiamReconCriterion(task, **kwargs), model, make_sample())
    out = outputs[0]
    (pooled_pass,) = [x for m, x in passes if m == masked]
    torch.testing.assert_close(out["pooled"], model.masked_mean(pooled_pass, out["padding_mask"]).view(2, 3, -1))
    assert [m for m, _ in passes] == ([True] if masked else [True, False] if recon else [False])
    assert ("recon_loss" in log) == recon and ("recon_pred" in out) == recon
    assert ("mask_frac" in log) == (masked or recon)


def test_mask_without_recon_rejects_an_unused_masked_pass(tiny):
    task, model = tiny.build_simsiam_recon(simsiam_input="unmasked")
    with pytest.raises(ValueError, match="mask_without_recon=true with recon_weight=0 masks a pass"):
        run(SimsiamReconCriterion(task, recon_weight=0.0, mask_without_recon=True), model, make_sample())


def test_frame_level_term(tiny):
    aligned, model = tiny.build_simsiam_recon(aligned=True, encoder_layers=1, projector_dim=16,
                                              projector_hidden_dim=16, predictor_hidden_dim=4, frame_simsiam=True)
    sample = make_sample()
    sample["views"]["aligned"] = True
    sample["net_input"]["padding_mask"][1 + 3, :] = sample["net_input"]["padding_mask"][1, :]  # same padding
    _, n, log = run(SimsiamCriterion(aligned, frame_simsiam_weight=0.5), model, sample)
    assert log["simsiam_loss"] == pytest.approx(log["simsiam_utt_loss"] + 0.5 * log["simsiam_frame_loss"],
                                                rel=1e-5)
    _, _, log0 = run(SimsiamCriterion(aligned, frame_simsiam_weight=0.0), model, sample)
    assert "simsiam_frame_loss" not in log0


def test_reduce_metrics_weights_by_sample_size():
    logs = [{"sample_size": 2, "nsentences": 2, "ntokens": 10, "loss": 2 * 1.0, "cos_sim": 2 * 0.5},
            {"sample_size": 6, "nsentences": 6, "ntokens": 30, "loss": 6 * 3.0, "cos_sim": 6 * 0.1}]
    with metrics.aggregate() as agg:
        SimsiamReconCriterion.reduce_metrics(logs)
    values = agg.get_smoothed_values()
    assert values["loss"] == pytest.approx(2.5) and values["cos_sim"] == pytest.approx(0.2)
    assert values["ntokens"] == 40 and values["sample_size"] == 8


def test_registered_names_map_to_our_classes():
    assert CRITERION_REGISTRY["simsiam"] is SimsiamCriterion
    assert CRITERION_REGISTRY["masked_reconstruction"] is MaskedReconstructionCriterion
    assert CRITERION_REGISTRY["simsiam_recon"] is SimsiamReconCriterion
    assert MODEL_REGISTRY["simsiam_recon"] is SimsiamReconModel
    assert TASK_REGISTRY["multiview_audio_pretraining"] is MultiviewAudioPretrainingTask
