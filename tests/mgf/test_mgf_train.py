"""Real fairseq-hydra-train runs of examples/mgf/config/mgf_tiny.yaml (slow): every scale's terms are logged,
a run resumed from checkpoint_last continues exactly (HALF + HALF updates == 2 * HALF, also with the EMA
teacher, whose weights live in the checkpoint, and with the quantised target, whose Gumbel noise and temperature
follow the update number), two gloo processes train together, fairseq's CTC fine-tuning
starts from the checkpoint, and ``python -m fairseq_plugins.evaluate``'s loader (``load_upstream``) loads it."""
import os
import re

import numpy as np
import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_DIR = os.path.join(REPO, "examples", "mgf", "config")
HALF = 5  # updates of each leg of the resume test (the straight run has 2 * HALF)


def _pretrain(manifest, run, extra=(), updates=2 * HALF):
    return [f"task.data={manifest}", f"checkpoint.save_dir={run}/ckpt", f"optimization.max_update={updates}",
            "common.log_interval=1", "dataset.max_tokens=160000", f"dataset.validate_interval_updates={HALF}",
            f"checkpoint.save_interval_updates={HALF}", "optimization.clip_norm=0",
            f"++lr_scheduler.total_num_update={2 * HALF}", *extra]


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def _inner_stats(log, key):
    return [float(v) for v in re.findall(rf"train_inner.*?\b{key}[ =]([-\d.e+]+)", log)]


@pytest.fixture(scope="module")
def tiny_run(mini_corpus, tmp_path_factory, hydra_train):
    manifest = os.path.join(mini_corpus, "manifest")
    run = str(tmp_path_factory.mktemp("mgf_tiny"))
    log = hydra_train(CONFIG_DIR, "mgf_tiny", _pretrain(manifest, run), run, timeout=300, threads=1)
    return {"run": run, "log": log, "manifest": manifest, "ckpt": f"{run}/ckpt/checkpoint_last.pt"}


@pytest.mark.slow
def test_hydra_train_tiny_config_logs_every_scale(tiny_run):
    log = tiny_run["log"]
    assert f"num_updates {2 * HALF}" in log and "valid on 'valid' subset" in log
    for key in ("loss", "frame_loss", "phone_loss", "phone_acc", "utt_loss", "utt_acc", "utt_collapse_std",
                "enc_collapse_std", "phone_collapse_std", "frame_mask_frac", "phone_mask_frac"):
        values = _inner_stats(log, key)
        assert len(values) == 2 * HALF and np.isfinite(values).all(), (key, values)
    assert 0 < np.mean(_inner_stats(log, "phone_mask_frac")) < 0.6
    assert 0 < np.mean(_inner_stats(log, "frame_mask_frac")) < 0.2


def _assert_same_checkpoints(a_path, b_path):
    a, b = _state(a_path), _state(b_path)
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    moments_a, moments_b = a["last_optimizer_state"]["state"], b["last_optimizer_state"]["state"]
    assert moments_a.keys() == moments_b.keys()
    for key in moments_a:
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(moments_a[key][name], moments_b[key][name]), (key, name)


@pytest.mark.slow
def test_resume_from_checkpoint_last_continues_exactly(tiny_run, hydra_train, tmp_path):
    """HALF updates, stop, resume to 2 * HALF == 2 * HALF straight, bit for bit (weights, BatchNorm statistics,
    Adam moments): masks, distractors, dropout and segments repeat after a resume."""
    run = str(tmp_path)
    hydra_train(CONFIG_DIR, "mgf_tiny", _pretrain(tiny_run["manifest"], run, updates=HALF), run, timeout=300,
                threads=1)
    log = hydra_train(CONFIG_DIR, "mgf_tiny", _pretrain(tiny_run["manifest"], run), run, timeout=300, threads=1)
    assert "Loaded checkpoint" in log and f"num_updates {2 * HALF}" in log
    _assert_same_checkpoints(tiny_run["ckpt"], os.path.join(run, "ckpt", "checkpoint_last.pt"))


@pytest.mark.slow
def test_ema_teacher_resumes_exactly(tiny_run, hydra_train, tmp_path):
    """phone_target=ema: the teacher moves during training, is saved, and a resumed run equals a straight one."""
    ema = ["model.phone_target=ema", "model.ema_decay=0.9"]
    straight, legs = str(tmp_path / "straight"), str(tmp_path / "legs")
    hydra_train(CONFIG_DIR, "mgf_tiny", _pretrain(tiny_run["manifest"], straight, ema), straight, timeout=300,
                threads=1)
    hydra_train(CONFIG_DIR, "mgf_tiny", _pretrain(tiny_run["manifest"], legs, ema, updates=HALF), legs,
                timeout=300, threads=1)
    hydra_train(CONFIG_DIR, "mgf_tiny", _pretrain(tiny_run["manifest"], legs, ema), legs, timeout=300, threads=1)
    a = os.path.join(straight, "ckpt", "checkpoint_last.pt")
    _assert_same_checkpoints(a, os.path.join(legs, "ckpt", "checkpoint_last.pt"))
    weights = _state(a)["model"]
    teacher, student = weights["ema_teacher.encoder.layers.0.fc1.weight"], weights["encoder.layers.0.fc1.weight"]
    assert not torch.equal(teacher, student)  # a lagging copy, not the student itself


@pytest.mark.slow
def test_quantised_target_resumes_exactly(tiny_run, hydra_train, tmp_path):
    """phone_target=quantised: the run logs the diversity term, and a resumed run equals a straight one (Gumbel
    noise from fairseq's per-update seed, temperature from the update number)."""
    quant = ["model.phone_target=quantised"]
    straight, legs = str(tmp_path / "straight"), str(tmp_path / "legs")
    log = hydra_train(CONFIG_DIR, "mgf_tiny", _pretrain(tiny_run["manifest"], straight, quant), straight,
                      timeout=300, threads=1)
    for key in ("diversity_loss", "prob_perplexity", "code_perplexity", "phone_loss"):
        values = _inner_stats(log, key)
        assert len(values) == 2 * HALF and np.isfinite(values).all(), (key, values)
    hydra_train(CONFIG_DIR, "mgf_tiny", _pretrain(tiny_run["manifest"], legs, quant, updates=HALF), legs,
                timeout=300, threads=1)
    hydra_train(CONFIG_DIR, "mgf_tiny", _pretrain(tiny_run["manifest"], legs, quant), legs, timeout=300, threads=1)
    a = os.path.join(straight, "ckpt", "checkpoint_last.pt")
    _assert_same_checkpoints(a, os.path.join(legs, "ckpt", "checkpoint_last.pt"))
    assert "quantizer.vars" in _state(a)["model"]


@pytest.mark.slow
def test_two_process_gloo_run(tiny_run, hydra_train, tmp_path):
    """fairseq's own distributed init (gloo, one process per rank): both ranks train, each update sees both
    ranks' batches, the utterance-scale negatives are gathered across them."""
    run = str(tmp_path)
    logs = hydra_train.distributed(CONFIG_DIR, "mgf_tiny", _pretrain(tiny_run["manifest"], run, updates=HALF),
                                   run)
    assert "initialized host" in logs[0] and "as rank 1" in logs[1]
    assert f"num_updates {HALF}" in logs[0]
    one, two = _inner_stats(tiny_run["log"], "bsz"), _inner_stats(logs[0], "bsz")
    assert len(two) == HALF and np.mean(two) > 1.5 * np.mean(one[:HALF]), (one, two)
    for key, value in _state(os.path.join(run, "ckpt", "checkpoint_last.pt"))["model"].items():
        assert torch.isfinite(value.float()).all(), key


@pytest.mark.slow
def test_fairseq_ctc_finetuning_starts_from_the_checkpoint(tiny_run, tmp_path, hydra_train):
    """fairseq's audio_finetuning + wav2vec_ctc + ctc (the simsiam_recon example's ctc_tiny.yaml, which only
    names fairseq components) on the mgf checkpoint."""
    run = str(tmp_path)
    log = hydra_train(
        os.path.join(REPO, "examples", "simsiam_recon", "config"), "ctc_tiny",
        [f"task.data={tiny_run['manifest']}", f"model.w2v_path={tiny_run['ckpt']}",
         f"checkpoint.save_dir={run}/ckpt", "optimization.max_update=2", "model.freeze_finetune_updates=1"],
        run, timeout=300, threads=1)
    assert re.search(r"skipping \d+ keys of removed pre-training heads \(phone_head, recon_head, utt_projector\)",
                     log)
    assert "num_updates 2" in log and "wer" in log


@pytest.mark.slow
def test_evaluate_loader_loads_the_checkpoint(tiny_run, hydra_train):
    from argparse import Namespace

    from fairseq import utils

    from fairseq_plugins.evaluate.upstream import load_upstream
    from fairseq_plugins.models.mgf import MgfModel

    utils.import_user_module(Namespace(user_dir=hydra_train.plugin_dir))
    up = load_upstream(tiny_run["ckpt"], "mgf", manifest_dir=tiny_run["manifest"])
    model = up.model
    assert isinstance(model, MgfModel)
    state = _state(tiny_run["ckpt"])["model"]
    encoder_keys = [k for k in state if k.startswith("encoder.")]
    own = model.state_dict()
    assert encoder_keys and all(torch.equal(own[k], state[k]) for k in encoder_keys)
    wav = torch.randn(1, 16000)
    states, _ = up(wav)
    assert len(states) == up.num_layers == model.cfg.encoder_layers + 1
    assert torch.allclose(states[-1], model.extract_features(wav)[0])
