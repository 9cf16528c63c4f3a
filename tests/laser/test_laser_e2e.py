"""End to end through fairseq-hydra-train: LASER on the tiny HuBERT (and on a tiny WavLM that fairseq pre-trains
and exports in the WavLM release format), export back to the release format, and the alignment report."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from fairseq_plugins.compat import load_checkpoint_state

pytestmark = pytest.mark.slow
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LASER_CONFIG = os.path.join(REPO, "examples", "laser", "config")


def _python(*args):
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


def _laser(hydra_train, manifest, backbone, run, extra=()):
    return hydra_train(LASER_CONFIG, "laser_hubert_tiny",
                       [f"task.data={manifest}", f"model.checkpoint={backbone}", f"checkpoint.save_dir={run}/ckpt",
                        "optimization.max_update=6", "optimization.update_freq=[1]", "lr_scheduler.warmup_updates=2",
                        "dataset.validate_interval_updates=6", "checkpoint.save_interval_updates=6", *extra], run)


def test_laser_hubert_trains_exports_and_reports(tiny_hubert, hydra_train, tmp_path):
    run = str(tmp_path / "laser")
    log = _laser(hydra_train, tiny_hubert["manifest"], tiny_hubert["ckpt"], run)
    assert "laser_finetune: hubert backbone, 4 layers, dim 128; training" in log
    assert "num_updates=5" in log or "num_updates 6" in log
    ckpt = os.path.join(run, "ckpt", "checkpoint_last.pt")
    out = str(tmp_path / "hubert_laser.pt")
    stdout = _python("-m", "fairseq_plugins.export_laser", ckpt, "--out", out)
    assert "exported 83 tuned hubert tensors" in stdout
    before = load_checkpoint_state(tiny_hubert["ckpt"])["model"]
    after = load_checkpoint_state(out)["model"]
    assert set(before) == set(after)
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("encoder.layers.2.", "encoder.layers.3.", "encoder.layer_norm."))
                           for k in changed), sorted(changed)
    png = str(tmp_path / "laser.png")
    _python("-m", "fairseq_plugins.laser_report", ckpt, "--manifest-dir", tiny_hubert["manifest"],
            "--log", os.path.join(run, "train.log"), "--out", png)
    assert os.path.getsize(png) > 10_000


def test_laser_wavlm_from_a_fairseq_trained_release(tiny_hubert, hydra_train, tmp_path):
    manifest = tiny_hubert["manifest"]
    pre = str(tmp_path / "wavlm_pre")
    hydra_train(os.path.join(REPO, "examples", "hubert", "config"), "hubert_tiny",
                [f"task.data={manifest}", f"task.label_dir={manifest}", f"checkpoint.save_dir={pre}/ckpt",
                 "model._name=wavlm", "optimization.max_update=4", "checkpoint.save_interval_updates=4",
                 "dataset.validate_interval_updates=4"], pre)
    release = str(tmp_path / "WavLM-tiny.pt")
    _python("-c", "import sys; from fairseq_plugins.inspect_checkpoint import load_fairseq_checkpoint; "
                  f"m, _, _ = load_fairseq_checkpoint({pre + '/ckpt/checkpoint_last.pt'!r}); "
                  f"m.export_release({release!r})")
    assert set(torch.load(release, weights_only=True)) == {"cfg", "model"}
    run = str(tmp_path / "laser_wavlm")
    log = _laser(hydra_train, manifest, release, run, ["criterion.alpha=0.15", "criterion.margin=1.0",
                                                       "task.speed_factors=[0.8,0.85,0.9,1.0,1.1,1.15,1.2]"])
    assert "laser_finetune: wavlm backbone, 4 layers, dim 128" in log
    out = str(tmp_path / "WavLM-tiny-laser.pt")
    _python("-m", "fairseq_plugins.export_laser", os.path.join(run, "ckpt", "checkpoint_last.pt"), "--out", out)
    from fairseq_plugins.modules.wavlm import load_wavlm_release

    tuned, _ = load_wavlm_release(out)
    orig, _ = load_wavlm_release(release)
    a, b = tuned.release_state_dict(), orig.release_state_dict()
    changed = {k for k in a if not torch.equal(a[k], b[k])}
    assert changed and all(k.startswith(("encoder.layers.2.", "encoder.layers.3.", "encoder.layer_norm."))
                           for k in changed), sorted(changed)


HALF = 10  # updates of each leg of the resume test (the straight run has 2 * HALF)


def _short(run, updates, extra=()):
    """laser_hubert_tiny overrides for ``updates`` updates of 1 pair (checkpoint and validation every HALF)."""
    return [f"checkpoint.save_dir={run}/ckpt", f"optimization.max_update={updates}", "optimization.update_freq=[1]",
            "lr_scheduler.warmup_updates=2", f"dataset.validate_interval_updates={HALF}", "dataset.max_valid_steps=2",
            f"checkpoint.save_interval_updates={HALF}", "common.log_interval=1",
            # one learning-rate schedule for the straight run and both legs of the resumed one (it defaults to
            # max_update, which the first leg sets to HALF)
            f"++lr_scheduler.total_num_update={2 * HALF}", *extra]


def _laser_run(hydra_train, tiny_hubert, run, updates, extra=()):
    return hydra_train(LASER_CONFIG, "laser_hubert_tiny", [f"task.data={tiny_hubert['manifest']}",
                                                           f"model.checkpoint={tiny_hubert['ckpt']}",
                                                           *_short(run, updates, extra)], run, threads=1)


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def laser_straight(tiny_hubert, hydra_train, tmp_path_factory):
    run = str(tmp_path_factory.mktemp("laser_straight"))
    log = _laser_run(hydra_train, tiny_hubert, run, 2 * HALF)
    return {"log": log, "ckpt": os.path.join(run, "ckpt", "checkpoint_last.pt")}


def test_laser_resume_from_checkpoint_last_continues_exactly(tiny_hubert, hydra_train, laser_straight, tmp_path):
    """HALF updates, stop, resume to 2 * HALF through fairseq's checkpoint_last == 2 * HALF straight, bit for bit
    (trainable and frozen weights, Adam moments): the views are seeded by (seed, epoch, index), dropout by
    fairseq's per-update torch seed."""
    run = str(tmp_path)
    _laser_run(hydra_train, tiny_hubert, run, HALF)
    log = _laser_run(hydra_train, tiny_hubert, run, 2 * HALF)
    assert "Loaded checkpoint" in log and f"num_updates {2 * HALF}" in log
    a, b = _state(laser_straight["ckpt"]), _state(os.path.join(run, "ckpt", "checkpoint_last.pt"))
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    moments_a, moments_b = a["last_optimizer_state"]["state"], b["last_optimizer_state"]["state"]
    assert moments_a.keys() == moments_b.keys() and moments_a
    for key in moments_a:
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(moments_a[key][name], moments_b[key][name]), (key, name)


def _inner_stats(log, key):
    return [float(v) for v in re.findall(rf"train_inner.*?{key}[ =]([-\d.e+]+)", log)]


def test_laser_two_process_gloo_run(tiny_hubert, hydra_train, laser_straight, tmp_path):
    """fairseq's own distributed init (tcp, gloo, one process per rank, legacy_ddp; fairseq checks every update
    that the workers' gradient norms agree): each update sees the pairs of both ranks."""
    run = str(tmp_path)
    logs = hydra_train.distributed(LASER_CONFIG, "laser_hubert_tiny", [
        f"task.data={tiny_hubert['manifest']}", f"model.checkpoint={tiny_hubert['ckpt']}", *_short(run, HALF)], run)
    assert "initialized host" in logs[0] and "as rank 1" in logs[1] and f"num_updates {HALF}" in logs[0]
    one, two = _inner_stats(laser_straight["log"], "bsz"), _inner_stats(logs[0], "bsz")
    assert one and len(two) == HALF and max(two) == 2 * max(one) and np.mean(two) > 1.5 * np.mean(one), (one, two)


def test_score_paper_config_runs_with_a_frozen_reference(tiny_hubert, hydra_train, tmp_path):
    """SCORE through fairseq-hydra-train with the paper-setting YAML (score_hubert_base.yaml) on the tiny
    HuBERT, shortened: view 2 goes through the frozen copy (its weights end as they started), no IDM term,
    and the tuned top layers move."""
    run = str(tmp_path)
    log = hydra_train(LASER_CONFIG, "score_hubert_base", [
        f"task.data={tiny_hubert['manifest']}", f"model.checkpoint={tiny_hubert['ckpt']}", "common.cpu=true",
        "dataset.num_workers=0", *_short(run, 4)], run, threads=1)
    assert "laser_finetune: hubert backbone, 4 layers, dim 128" in log and "num_updates 4" in log
    assert set(_inner_stats(log, "idm")) == {0.0}
    original = load_checkpoint_state(tiny_hubert["ckpt"])["model"]
    tuned = _state(os.path.join(run, "ckpt", "checkpoint_last.pt"))["model"]
    reference = {k[len("reference."):]: v for k, v in tuned.items() if k.startswith("reference.")}
    assert reference and all(torch.equal(v, original[k]) for k, v in reference.items())
    yaml = OmegaConf.load(os.path.join(LASER_CONFIG, "score_hubert_base.yaml")).model
    trained = ["encoder.layers.2", "encoder.layers.3", "encoder.layer_norm", *yaml.extra_trainable]
    assert re.search(r"backbone parameters \(([^)]*)\)", log).group(1).split(", ") == trained
    moved = {k[len("backbone."):] for k, v in tuned.items() if k.startswith("backbone.")
             and k[len("backbone."):] in original and not torch.equal(v, original[k[len("backbone."):]])}
    assert all(any(k.startswith(n + ".") for k in moved) for n in trained), sorted(moved)  # each one trains
    assert moved and all(k.startswith(tuple(n + "." for n in trained)) for k in moved), sorted(moved)
