"""A LASER fairseq-hydra-train run starts from the 2021-shaped HuBERT release (no task_state, label directories
absent) and its tuned encoder exports back into that release's shape, to transformers and to safetensors."""
import os
import subprocess
import sys

import pytest
import torch

from fairseq_plugins.compat import load_checkpoint_state
from fairseq_plugins.modules.backbones import load_backbone

pytestmark = pytest.mark.slow
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAINED = ("encoder.layers.2.", "encoder.layers.3.", "encoder.layer_norm.")


@pytest.fixture(scope="module")
def laser_run(hubert_2021, tiny_hubert, hydra_train, tmp_path_factory):
    run = str(tmp_path_factory.mktemp("laser_2021"))
    log = hydra_train(os.path.join(REPO, "examples", "laser", "config"), "laser_hubert_tiny",
                      [f"task.data={tiny_hubert['manifest']}", f"model.checkpoint={hubert_2021['path']}",
                       f"checkpoint.save_dir={run}/ckpt", "optimization.max_update=4", "optimization.update_freq=[1]",
                       "lr_scheduler.warmup_updates=2", "dataset.validate_interval_updates=4",
                       "checkpoint.save_interval_updates=4"], run)
    return {"log": log, "ckpt": os.path.join(run, "ckpt", "checkpoint_last.pt")}


def _cli(*args):
    proc = subprocess.run([sys.executable, "-m", "fairseq_plugins.export_laser", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def test_laser_trains_from_the_2021_release(laser_run, hubert_2021):
    log = laser_run["log"]
    assert "dropped 3 head key(s) that are not part of the encoder: final_proj.bias, final_proj.weight, " \
           "label_embs_concat" in log
    assert "laser_finetune: hubert backbone, 4 layers, dim 128" in log
    assert load_checkpoint_state(laser_run["ckpt"])["optimizer_history"][-1]["num_updates"] == 4


def test_tuned_encoder_exports_in_the_release_shape(laser_run, hubert_2021, tmp_path):
    out = str(tmp_path / "hubert_2021_laser.pt")
    assert "exported 83 tuned hubert tensors" in _cli(laser_run["ckpt"], "--out", out)  # old command, unchanged
    before, after = load_checkpoint_state(hubert_2021["path"]), load_checkpoint_state(out)
    # export drops last_optimizer_state (it belongs to the original weights); the rest is the release's shape
    assert set(after) == set(before) - {"last_optimizer_state"} and "task_state" not in after
    assert after["cfg"] == before["cfg"]
    changed = {k for k in after["model"] if not torch.equal(before["model"][k], after["model"][k])}
    assert changed and all(k.startswith(TRAINED) for k in changed), sorted(changed)
    assert load_backbone(out).dropped == ["final_proj.bias", "final_proj.weight", "label_embs_concat"]


def test_tuned_encoder_exports_to_transformers_and_safetensors(laser_run, tmp_path):
    from fairseq_plugins.export_laser import load_tuned

    hf = str(tmp_path / "hf")
    stdout = _cli(laser_run["ckpt"], "--format", "hf", "--out", hf)
    assert "as transformers HubertModel" in stdout
    st = str(tmp_path / "st")
    _cli(laser_run["ckpt"], "--format", "safetensors", "--out", st)
    tuned, _ = load_tuned(laser_run["ckpt"])
    back = load_backbone(st).model.state_dict()
    assert all(torch.equal(back[k], v) for k, v in tuned.model.state_dict().items())
