"""Tests for the simsiam_recon model: shapes, log-mel targets (frame count and values), HuBERT/wav2vec2-style
extract_features, frame-level heads, pre-training-module removal with strict loading, and (slow) a real
fairseq-hydra-train run of the tiny example config followed by a checkpoint reload."""
import os
import re
import tempfile
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
def waves(rows=4, samples=8000, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((rows, samples)).astype(np.float32))


def test_forward_shapes_and_outputs(tiny):
    torch.manual_seed(0)
    np.random.seed(0)
    _, model = tiny.build_simsiam_recon(mask_prob=0.3)
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


def _masks(model, x, pad, n=1):
    return [model.apply_mask(x.clone(), pad)[1] for _ in range(n)]


def test_masks_are_keyed_by_seed_update_rank_and_micro_batch(monkeypatch, tiny):
    """Masks repeat with (seed, update, rank, micro-batch), differ across ranks, updates and micro-batches,
    ignore numpy's global generator, and a model resumed at update 10 masks as one that trained through it."""
    import fairseq_plugins.modules.span_mask as span_mask

    _, model = tiny.build_simsiam_recon(mask_prob=0.15, mask_length=5)
    model.train()
    x = torch.zeros(64, 150, 32)
    pad = torch.zeros(64, 150, dtype=torch.bool)
    pad[:, 120:] = True
    np.random.seed(3)
    model.set_num_updates(10)
    a1, a2 = _masks(model, x, pad, 2)  # two micro-batches of update 10
    assert not a1[pad].any() and not torch.equal(a1, a2)
    frac = a1[:, :120].float().mean().item()
    assert 0.10 < frac < 0.17  # ~mask_prob, a little less where spans overlap

    # a fresh model (same seed) that resumes at update 10, with another numpy global state: same masks
    _, resumed = tiny.build_simsiam_recon(mask_prob=0.15, mask_length=5)
    resumed.train()
    np.random.seed(4)
    resumed.set_num_updates(10)
    b1, b2 = _masks(resumed, x, pad, 2)
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    resumed.set_num_updates(11)
    assert not torch.equal(_masks(resumed, x, pad)[0], a1)  # next update, new masks
    # another seed, another rank: other masks
    _, other_seed = tiny.build_simsiam_recon(mask_prob=0.15, mask_length=5)
    other_seed.mask_keys.seed = 2
    other_seed.train()
    other_seed.set_num_updates(10)
    assert not torch.equal(_masks(other_seed, x, pad)[0], a1)
    monkeypatch.setattr(span_mask, "data_parallel_rank", lambda: 1)
    _, rank1 = tiny.build_simsiam_recon(mask_prob=0.15, mask_length=5)
    rank1.train()
    rank1.set_num_updates(10)
    assert not torch.equal(_masks(rank1, x, pad)[0], a1)


RANK_SCRIPT = """
import sys, torch, torch.distributed as dist
from fairseq_plugins.modules.span_mask import TIME, SpanMaskKeys, seeded_span_mask
rank, port = int(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
keys = SpanMaskKeys(1).next(True, 5)
mask = seeded_span_mask((4, 100), None, 0.3, 5, keys + (TIME,), min_masks=2).to(torch.uint8)
masks = [torch.zeros_like(mask) for _ in range(2)]
dist.all_gather(masks, mask)
print("rank", keys[2], "same" if torch.equal(masks[0], masks[1]) else "different", flush=True)
dist.barrier()  # leave together: a rank exiting while the other still holds the connection can abort gloo
dist.destroy_process_group()
"""


@pytest.mark.slow  # two fresh processes importing fairseq: about 20 s on 2 cores
def test_ranks_of_a_real_gloo_group_mask_differently():
    """Two processes joined by torch.distributed (gloo): the rank in the mask keys is the process's real rank,
    so the same seed, update and micro-batch give different masks on the two ranks."""
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, str(r), port], cwd=REPO, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert "rank 0 different" in outs[0] and "rank 1 different" in outs[1], outs


def test_masked_positions_get_mask_emb_and_validation_masks_repeat(tiny):
    _, model = tiny.build_simsiam_recon(mask_prob=0.3, mask_length=3)
    x = torch.randn(4, 40, 32)
    model.train()
    model.set_num_updates(5)
    out, m = model.apply_mask(x.clone(), None)
    assert torch.equal(out[m], model.mask_emb.detach().expand(int(m.sum()), -1))
    assert torch.equal(out[~m], x[~m])
    model.eval()  # every validation pass masks its k-th batch the same way, whatever the update
    first = _masks(model, x, None, 3)
    model.train()
    model.set_num_updates(6)
    _masks(model, x, None)
    model.eval()
    again = _masks(model, x, None, 3)
    assert all(torch.equal(u, v) for u, v in zip(first, again))
    assert not torch.equal(first[0], first[1])


def test_bf16_cast_keeps_the_logmel_target_in_float32(tiny):
    """``model.to(torch.bfloat16)`` (what fairseq's common.bf16 does) leaves the target front end in float32:
    the bf16 model's targets equal the float32 model's on the same input."""
    _, model = tiny.build_simsiam_recon(mask_prob=0.3)
    src = waves(4, 8000).to(torch.bfloat16)
    ref = model(src.float(), num_views=2, simsiam=False)["recon_target"]
    model.to(torch.bfloat16)
    assert model.logmel.fbank.dtype == torch.float32 and model.mask_emb.dtype == torch.bfloat16
    out = model(src, num_views=2, simsiam=False)
    assert out["recon_pred"].dtype == torch.bfloat16 and out["recon_target"].dtype == torch.float32
    torch.testing.assert_close(out["recon_target"], ref)


def test_masked_mean_ignores_padding():
    x = torch.arange(12.0).view(1, 4, 3).repeat(2, 1, 1)
    pad = torch.tensor([[False, False, True, True], [False, False, False, False]])
    pooled = SimsiamReconModel.masked_mean(x, pad)
    assert torch.allclose(pooled[0], x[0, :2].mean(0)) and torch.allclose(pooled[1], x[1].mean(0))


@pytest.mark.parametrize("samples", [400, 719, 720, 8000, 16001, 48000])
def test_one_logmel_target_per_encoder_frame(samples, tiny):
    _, model = tiny.build_simsiam_recon()
    x, _ = model.extract_features(waves(1, samples))
    assert model.logmel(waves(1, samples)).shape[1] == x.shape[1] == model.logmel.num_frames(samples)
    assert conv_geometry(tiny.encoder["conv_feature_layers"]) == (400, 320)


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


def test_extract_features_like_hubert_and_wav2vec2(tiny):
    _, model = tiny.build_simsiam_recon(encoder_layers=3)
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


def test_frame_level_heads_need_aligned_views(tiny):
    with pytest.raises(ValueError, match="frame_simsiam=true needs time-aligned views"):
        tiny.build_simsiam_recon(frame_simsiam=True)
    _, model = tiny.build_simsiam_recon(aligned=True, frame_simsiam=True)
    src = waves(4, 8000)
    pad = torch.zeros_like(src, dtype=torch.bool)
    pad[[1, 3], 7000:] = True
    out = model(src, pad, num_views=2, aligned=True)
    M = int((~out["padding_mask"][:2]).sum())
    assert out["frame_z"].shape == out["frame_p"].shape == (2, M, 48)
    with pytest.raises(ValueError, match="frame_simsiam needs time-aligned views"):
        model(src, pad, num_views=2, aligned=False)


def test_clean_target_source_is_used_for_targets(tiny):
    _, model = tiny.build_simsiam_recon(mask_prob=0.3)
    src, clean = waves(4, 8000, seed=1), waves(4, 8000, seed=2)
    out = model(src, num_views=2, target_source=clean, simsiam=False)
    assert torch.allclose(out["recon_target"], model.logmel(clean))


def test_remove_pretraining_modules_then_strict_load(tiny):
    _, model = tiny.build_simsiam_recon()
    state = model.state_dict()
    assert not any(k.startswith("logmel") for k in state)  # derived buffers are not stored
    _, fresh = tiny.build_simsiam_recon()
    fresh.remove_pretraining_modules()
    assert fresh.projector is None and fresh.recon_head is None and fresh.final_proj is None
    fresh.load_state_dict(state, strict=True)  # the heads' keys are skipped, everything else must match
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, state[k])
    with pytest.raises(RuntimeError, match="Unexpected key"):
        fresh.load_state_dict({**state, "encoder.extra": torch.zeros(1)}, strict=True)
    with pytest.raises(RuntimeError, match="Missing key"):
        fresh.load_state_dict({k: v for k, v in state.items() if k != "mask_emb"}, strict=True)


def hubert_encoder_params(cfg) -> int:
    """The parameter count of a HuBERT encoder counted by hand from its config: conv feature extractor (no
    bias; group norm on the first layer in ``default`` mode, layer norm on every layer in ``layer_norm`` mode),
    feature layer norm, projection to the model dim, ``mask_emb``, the weight-normed grouped positional
    convolution (``weight_g`` has one value per kernel tap), the encoder layer norm and per layer: attention
    (4 biased projections), two layer norms and the biased feed-forward pair."""
    conv, in_ch = 0, 1
    for i, (ch, k, _) in enumerate(conv_spec(cfg.conv_feature_layers)):
        conv += ch * in_ch * k
        if cfg.extractor_mode == "layer_norm" or i == 0:
            conv += 2 * ch
        in_ch = ch
    d, ffn = cfg.encoder_embed_dim, cfg.encoder_ffn_embed_dim
    front = 2 * in_ch + (in_ch * d + d if in_ch != d else 0) + d
    pos = d * (d // cfg.conv_pos_groups) * cfg.conv_pos + cfg.conv_pos + d
    layer = 4 * (d * d + d) + 2 * (2 * d) + (d * ffn + ffn) + (ffn * d + d)
    return conv + front + pos + 2 * d + cfg.encoder_layers * layer


def conv_spec(text):
    return eval(text)  # noqa: S307  (the example YAMLs' own conv spec strings)


@pytest.mark.parametrize("name", ["simsiam_recon_tiny", "simsiam_recon_base"])
def test_example_configs_build(name):
    """The example YAMLs' task and model sections fit the dataclasses; the encoder has the parameter count
    counted by hand, which for the base config is HuBERT-Base's 94.4 M (its paper's "95 M" includes the
    label projection and embeddings)."""
    yaml = OmegaConf.load(os.path.join(REPO, "examples", "simsiam_recon", "config", f"{name}.yaml"))
    sections = {k: {f: v for f, v in OmegaConf.to_container(yaml[k]).items() if f != "_name"}
                for k in ("task", "model")}
    sections["task"].update(data=tempfile.gettempdir(), seed=1, tpu=False, train_subset="train")
    task = MultiviewAudioPretrainingTask.setup_task(
        OmegaConf.structured(MultiviewAudioPretrainingConfig(**sections["task"])))
    model = SimsiamReconModel.build_model(OmegaConf.structured(SimsiamReconConfig(**sections["model"])), task)
    counts = model.num_parameters()
    assert counts["encoder"] == hubert_encoder_params(model.cfg)
    heads = {n: sum(p.numel() for p in getattr(model, n).parameters()) for n in ("projector", "recon_head")}
    assert heads["recon_head"] == model.cfg.encoder_embed_dim * 80 + 80  # one linear layer to 80 log-mels
    assert counts["total"] == sum(p.numel() for p in model.parameters()) > counts["encoder"] + heads["projector"]
    if name == "simsiam_recon_base":
        assert counts["encoder"] == 94_371_712  # = the count above for HuBERT-Base's sizes
        assert model.projector.out_dim == 2048 and model.cfg.encoder_embed_dim == 768


CONFIG_DIR = os.path.join(REPO, "examples", "simsiam_recon", "config")
HALF = 10  # updates of each leg of the resume test (the straight run has 2 * HALF)


def _pretrain(manifest, run, extra=(), updates=2 * HALF):
    """The tiny example config for ``updates`` updates (checkpoints and validation every ``HALF``)."""
    return [f"task.data={manifest}", f"checkpoint.save_dir={run}/ckpt", f"optimization.max_update={updates}",
            "common.log_interval=1", "dataset.max_tokens=160000", f"dataset.validate_interval_updates={HALF}",
            f"checkpoint.save_interval_updates={HALF}", f"task.noise_manifest={manifest}/noise.tsv",
            f"++lr_scheduler.total_num_update={2 * HALF}", *extra]  # one schedule for the straight run and both legs


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def tiny_run(mini_corpus, tmp_path_factory, hydra_train):
    """2 * HALF updates of the tiny example config through fairseq-hydra-train (noise from the corpus
    manifest)."""
    manifest = os.path.join(mini_corpus, "manifest")
    run = str(tmp_path_factory.mktemp("simsiam_recon_tiny"))
    log = hydra_train(CONFIG_DIR, "simsiam_recon_tiny", _pretrain(manifest, run), run, timeout=300,
                      threads=1)
    return {"run": run, "log": log, "manifest": manifest, "ckpt": f"{run}/ckpt/checkpoint_last.pt"}


@pytest.mark.slow
def test_hydra_train_tiny_config_logs_every_term(tiny_run):
    log = tiny_run["log"]
    for key in ("cos_sim=", "collapse_std=", "collapse_ref=", "enc_collapse_std=", "recon_loss=",
                "simsiam_loss=", "mask_frac="):
        assert key in log, f"{key} not logged"
    assert f"num_updates {2 * HALF}" in log and "valid on 'valid' subset" in log


@pytest.mark.slow
def test_resume_from_checkpoint_last_continues_exactly(tiny_run, hydra_train, tmp_path):
    """HALF updates, stop, resume to 2 * HALF through fairseq's checkpoint_last == 2 * HALF straight, bit for bit
    (weights, BatchNorm statistics and Adam moments): masks, dropout and views all repeat after a resume."""
    run = str(tmp_path)
    hydra_train(CONFIG_DIR, "simsiam_recon_tiny", _pretrain(tiny_run["manifest"], run, updates=HALF),
                run, timeout=300, threads=1)
    log = hydra_train(CONFIG_DIR, "simsiam_recon_tiny", _pretrain(tiny_run["manifest"], run), run,
                      timeout=300, threads=1)
    assert "Loaded checkpoint" in log and f"num_updates {2 * HALF}" in log
    a, b = _state(tiny_run["ckpt"]), _state(os.path.join(run, "ckpt", "checkpoint_last.pt"))
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    moments_a, moments_b = a["last_optimizer_state"]["state"], b["last_optimizer_state"]["state"]
    assert moments_a.keys() == moments_b.keys()
    for key in moments_a:
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(moments_a[key][name], moments_b[key][name]), (key, name)


def _inner_stats(log, key):
    """The per-update values of ``key`` in fairseq's ``train_inner`` log lines (``common.log_interval=1``)."""
    return [float(v) for v in re.findall(rf"train_inner.*?{key}[ =]([-\d.e+]+)", log)]


@pytest.mark.slow
def test_two_process_gloo_run(tiny_run, hydra_train, tmp_path):
    """fairseq's own distributed init (tcp, gloo, one process per rank, ``no_c10d`` = legacy DDP gradient sync;
    fairseq checks every update that the workers' gradient norms agree): both ranks train, and each update
    sees the batches of both ranks (twice the sentences of a single worker's update)."""
    run = str(tmp_path)
    logs = hydra_train.distributed(CONFIG_DIR, "simsiam_recon_tiny",
                                   _pretrain(tiny_run["manifest"], run, updates=HALF), run)
    assert "initialized host" in logs[0] and "as rank 1" in logs[1]
    assert f"num_updates {HALF}" in logs[0]
    one, two = _inner_stats(tiny_run["log"], "bsz"), _inner_stats(logs[0], "bsz")
    assert len(two) == HALF and np.mean(two) > 1.5 * np.mean(one[:HALF]), (one, two)
    for key, value in _state(os.path.join(run, "ckpt", "checkpoint_last.pt"))["model"].items():
        assert torch.isfinite(value.float()).all(), key


@pytest.mark.slow
def test_bf16_run(tiny_run, hydra_train, tmp_path):
    """fairseq's ``common.bf16`` (the model cast to bfloat16; fp16 needs CUDA in fairseq) trains with finite
    losses; the log-mel target front end stays float32 (a bf16 filterbank broke the first forward)."""
    run = str(tmp_path)
    log = hydra_train(CONFIG_DIR, "simsiam_recon_tiny", _pretrain(
        tiny_run["manifest"], run, ["common.bf16=true"], updates=HALF), run, timeout=300, threads=1)
    assert f"num_updates {HALF}" in log
    for key in ("loss", "recon_loss", "simsiam_loss"):
        values = _inner_stats(log, key)
        assert len(values) == HALF and np.isfinite(values).all(), (key, values)
    assert _state(os.path.join(run, "ckpt", "checkpoint_last.pt"))["cfg"]["common"]["bf16"] is True


@pytest.mark.slow
def test_checkpoint_reloads_through_import_user_module(tiny_run, hydra_train):
    from fairseq import checkpoint_utils, utils

    utils.import_user_module(Namespace(user_dir=hydra_train.plugin_dir))
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
def test_fairseq_ctc_finetuning_starts_from_the_checkpoint(tiny_run, tmp_path, hydra_train):
    """fairseq's own audio_finetuning + wav2vec_ctc + ctc, through the example's ctc_tiny.yaml."""
    run = str(tmp_path)
    log = hydra_train(
        CONFIG_DIR, "ctc_tiny",
        [f"task.data={tiny_run['manifest']}", f"model.w2v_path={tiny_run['ckpt']}",
         f"checkpoint.save_dir={run}/ckpt", "optimization.max_update=2", "model.freeze_finetune_updates=1"],
        run, timeout=300, threads=1)
    assert re.search(r"skipping \d+ keys of removed pre-training heads \(predictor, projector, recon_head\)",
                     log)
    assert "num_updates 2" in log and "wer" in log
    assert os.path.isfile(f"{run}/ckpt/checkpoint_last.pt")
