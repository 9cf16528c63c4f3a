"""Tests for the simsiam_recon model: shapes, log-mel targets (frame count and values), HuBERT/wav2vec2-style
extract_features, frame-level heads, pre-training-module removal with strict loading, and (slow) a real
fairseq-hydra-train run of the tiny example config followed by a checkpoint reload."""
import os
import re
from argparse import Namespace

import librosa
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from fairseq_plugins.models.simsiam_recon import SimsiamReconConfig, SimsiamReconModel, conv_geometry
from fairseq_plugins.modules.heads import LogMelTarget
from fairseq_plugins.tasks.multiview_audio_pretraining import (
    MultiviewAudioPretrainingConfig,
    MultiviewAudioPretrainingTask,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = dict(conv_feature_layers="[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2", encoder_layers=2,
            encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=2, conv_pos=16,
            conv_pos_groups=4, projector_dim=48, projector_hidden_dim=48, predictor_hidden_dim=12,
            dropout=0.0, attention_dropout=0.0, dropout_input=0.0, dropout_features=0.0, mask_length=3)


def build(aligned=False, **overrides):
    task_cfg = OmegaConf.structured(MultiviewAudioPretrainingConfig(
        data="/nonexistent", seed=1, tpu=False, train_subset="train", augmentations=[],
        aligned_views=aligned))
    task = MultiviewAudioPretrainingTask.setup_task(task_cfg)
    cfg = OmegaConf.structured(SimsiamReconConfig(**{**TINY, **overrides}))
    return task, SimsiamReconModel.build_model(cfg, task)


def waves(rows=4, samples=8000, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((rows, samples)).astype(np.float32))


def test_forward_shapes_and_outputs():
    torch.manual_seed(0)
    np.random.seed(0)
    _, model = build(mask_prob=0.3)
    src = waves(6, 8000)
    pad = torch.zeros_like(src, dtype=torch.bool)
    pad[2, 6000:] = pad[5, 6000:] = True  # utterance 2 is shorter in both views
    out = model(src, pad, num_views=2)
    T = 1 + (8000 - 400) // 320
    assert out["x"].shape == (6, T, 32) and out["padding_mask"].shape == (6, T)
    assert out["z"].shape == out["p"].shape == (2, 3, 48) and out["pooled"].shape == (2, 3, 32)
    assert out["recon_pred"].shape == out["recon_target"].shape == (6, T, 80)
    assert torch.equal(out["recon_mask"], out["mask_indices"] & ~out["padding_mask"])
    assert out["recon_mask"].any() and not out["recon_mask"][out["padding_mask"]].any()
    assert "frame_z" not in out
    none = model(src, pad, num_views=2, mask=False, recon=False)
    assert none["mask_indices"] is None and "recon_pred" not in none
    with pytest.raises(ValueError, match="SimSiam needs >= 2 views"):
        model(src[:5], num_views=2)


def test_masking_repeats_with_numpy_seed_and_covers_mask_prob():
    _, model = build(mask_prob=0.15, mask_length=5)
    x = torch.zeros(64, 150, 32)
    pad = torch.zeros(64, 150, dtype=torch.bool)
    pad[:, 120:] = True
    np.random.seed(3)
    _, a = model.apply_mask(x.clone(), pad)
    np.random.seed(3)
    x_b, b = model.apply_mask(x.clone(), pad)
    assert torch.equal(a, b) and not a[pad].any()
    assert torch.equal(x_b[b], model.mask_emb.detach().expand(int(b.sum()), -1))
    frac = a[:, :120].float().mean().item()
    assert 0.10 < frac < 0.17  # ~mask_prob, a little less where spans overlap
    np.random.seed(4)
    assert not torch.equal(model.apply_mask(x.clone(), pad)[1], a)


def test_masked_mean_ignores_padding():
    x = torch.arange(12.0).view(1, 4, 3).repeat(2, 1, 1)
    pad = torch.tensor([[False, False, True, True], [False, False, False, False]])
    pooled = SimsiamReconModel.masked_mean(x, pad)
    assert torch.allclose(pooled[0], x[0, :2].mean(0)) and torch.allclose(pooled[1], x[1].mean(0))


@pytest.mark.parametrize("samples", [400, 719, 720, 8000, 16001, 48000])
def test_one_logmel_target_per_encoder_frame(samples):
    _, model = build()
    x, _ = model.extract_features(waves(1, samples))
    assert model.logmel(waves(1, samples)).shape[1] == x.shape[1] == model.logmel.num_frames(samples)
    assert conv_geometry(TINY["conv_feature_layers"]) == (400, 320)


def test_logmel_matches_librosa():
    wav = waves(1, 16000, seed=3)[0].numpy() * 0.1
    ours = LogMelTarget()(torch.from_numpy(wav)[None])[0].numpy()
    # librosa centres the 400-sample window in its 512-sample frame: shift by 56 samples to line up
    ref = librosa.feature.melspectrogram(y=np.pad(wav, (56, 0)), sr=16000, n_fft=512, win_length=400,
                                         hop_length=320, center=False, power=2.0, n_mels=80)
    ref = np.log(ref + 1e-5).T
    n = min(len(ref), len(ours))
    assert n >= len(ours) - 1
    np.testing.assert_allclose(ours[:n], ref[:n], atol=2e-3)


def test_extract_features_like_hubert_and_wav2vec2():
    _, model = build(encoder_layers=3)
    model.eval()
    src = waves(2, 8000)
    res = model.extract_features(src, padding_mask=None, mask=False)
    x, pad = res  # HuBERT style
    assert x.shape == (2, 24, 32) and pad is None
    assert res["x"] is x and len(res["layer_results"]) == 3  # wav2vec2 style (fairseq's Wav2VecEncoder)
    hidden = res.hidden_states
    assert len(hidden) == 4 and torch.allclose(hidden[-1], x)
    x2, _ = model.extract_features(src, output_layer=2)
    assert torch.allclose(x2, hidden[2], atol=1e-6)
    conv, _ = model.extract_features(src, ret_conv=True)
    assert conv.shape == (2, 24, 32)


def test_frame_level_heads_need_aligned_views():
    with pytest.raises(ValueError, match="frame_simsiam=true needs time-aligned views"):
        build(frame_simsiam=True)
    _, model = build(aligned=True, frame_simsiam=True)
    src = waves(4, 8000)
    pad = torch.zeros_like(src, dtype=torch.bool)
    pad[[1, 3], 7000:] = True
    out = model(src, pad, num_views=2, aligned=True)
    M = int((~out["padding_mask"][:2]).sum())
    assert out["frame_z"].shape == out["frame_p"].shape == (2, M, 48)
    with pytest.raises(ValueError, match="frame_simsiam needs time-aligned views"):
        model(src, pad, num_views=2, aligned=False)


def test_clean_target_source_is_used_for_targets():
    _, model = build(mask_prob=0.3)
    src, clean = waves(4, 8000, seed=1), waves(4, 8000, seed=2)
    out = model(src, num_views=2, target_source=clean, simsiam=False)
    assert torch.allclose(out["recon_target"], model.logmel(clean))


def test_remove_pretraining_modules_then_strict_load():
    _, model = build()
    state = model.state_dict()
    assert not any(k.startswith("logmel") for k in state)  # derived buffers are not stored
    _, fresh = build()
    fresh.remove_pretraining_modules()
    assert fresh.projector is None and fresh.recon_head is None and fresh.final_proj is None
    fresh.load_state_dict(state, strict=True)  # the heads' keys are skipped, everything else must match
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, state[k])
    with pytest.raises(RuntimeError, match="Unexpected key"):
        fresh.load_state_dict({**state, "encoder.extra": torch.zeros(1)}, strict=True)
    with pytest.raises(RuntimeError, match="Missing key"):
        fresh.load_state_dict({k: v for k, v in state.items() if k != "mask_emb"}, strict=True)


@pytest.mark.parametrize("name,encoder_params", [("simsiam_recon_tiny", None),
                                                  ("simsiam_recon_base", 94_371_712)])
def test_example_configs_build(name, encoder_params):
    """The example YAMLs' task and model sections fit the dataclasses; base = HuBERT-Base's encoder."""
    yaml = OmegaConf.load(os.path.join(REPO, "examples", "simsiam_recon", "config", f"{name}.yaml"))
    sections = {k: {f: v for f, v in OmegaConf.to_container(yaml[k]).items() if f != "_name"}
                for k in ("task", "model")}
    sections["task"].update(data="/nonexistent", seed=1, tpu=False, train_subset="train")
    task = MultiviewAudioPretrainingTask.setup_task(
        OmegaConf.structured(MultiviewAudioPretrainingConfig(**sections["task"])))
    model = SimsiamReconModel.build_model(OmegaConf.structured(SimsiamReconConfig(**sections["model"])), task)
    counts = model.num_parameters()
    if encoder_params:
        assert counts["encoder"] == encoder_params
        assert model.projector.out_dim == 2048 and model.cfg.encoder_embed_dim == 768


def _conftest(request):
    """tests/conftest.py's helpers (in importlib mode conftest is a pytest plugin, not a module to import)."""
    return request.config.pluginmanager.get_plugin(os.path.join(REPO, "tests", "conftest.py"))


@pytest.fixture(scope="module")
def tiny_run(mini_corpus, tmp_path_factory, request):
    """3 updates of the tiny example config through fairseq-hydra-train (noise from the corpus manifest)."""
    manifest = os.path.join(mini_corpus, "manifest")
    run = str(tmp_path_factory.mktemp("simsiam_recon_tiny"))
    log = _conftest(request).run_hydra_train(
        os.path.join(REPO, "examples", "simsiam_recon", "config"), "simsiam_recon_tiny",
        [f"task.data={manifest}", f"checkpoint.save_dir={run}/ckpt", "optimization.max_update=3",
         "common.log_interval=1", "dataset.max_tokens=160000", "dataset.validate_interval_updates=3",
         "checkpoint.save_interval_updates=3", f"task.noise_manifest={manifest}/noise.tsv"],
        run, timeout=300)
    return {"run": run, "log": log, "manifest": manifest, "ckpt": f"{run}/ckpt/checkpoint_last.pt"}


@pytest.mark.slow
def test_hydra_train_tiny_config_logs_every_term(tiny_run):
    log = tiny_run["log"]
    for key in ("cos_sim=", "collapse_std=", "collapse_ref=", "enc_collapse_std=", "recon_loss=",
                "simsiam_loss=", "mask_frac="):
        assert key in log, f"{key} not logged"
    assert "num_updates 3" in log and "valid on 'valid' subset" in log


@pytest.mark.slow
def test_checkpoint_reloads_through_import_user_module(tiny_run, request):
    from fairseq import checkpoint_utils, utils

    utils.import_user_module(Namespace(user_dir=_conftest(request).PLUGIN_DIR))
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([tiny_run["ckpt"]])
    model = models[0].eval()
    assert isinstance(model, SimsiamReconModel) and isinstance(task, MultiviewAudioPretrainingTask)
    state = torch.load(tiny_run["ckpt"], map_location="cpu", weights_only=True)["model"]
    assert set(model.state_dict()) == set(state)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    feats, pad = model.extract_features(waves(1, 16000))
    assert feats.shape == (1, 49, cfg.model.encoder_embed_dim) and torch.isfinite(feats).all()


@pytest.mark.slow
def test_fairseq_ctc_finetuning_starts_from_the_checkpoint(tiny_run, tmp_path, request):
    """fairseq's own audio_finetuning + wav2vec_ctc + ctc, through the example's ctc_tiny.yaml."""
    run = str(tmp_path)
    log = _conftest(request).run_hydra_train(
        os.path.join(REPO, "examples", "simsiam_recon", "config"), "ctc_tiny",
        [f"task.data={tiny_run['manifest']}", f"model.w2v_path={tiny_run['ckpt']}",
         f"checkpoint.save_dir={run}/ckpt", "optimization.max_update=2", "model.freeze_finetune_updates=1"],
        run, timeout=300)
    assert re.search(r"skipping \d+ keys of removed pre-training heads \(predictor, projector, recon_head\)",
                     log)
    assert "num_updates 2" in log and "wer" in log
    assert os.path.isfile(f"{run}/ckpt/checkpoint_last.pt")
