"""End to end through fairseq-hydra-train: LASER on the tiny HuBERT (and on a tiny WavLM that fairseq pre-trains
and exports in the WavLM release format), export back to the release format, and the alignment report."""
import os
import subprocess
import sys

import pytest
import torch

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
