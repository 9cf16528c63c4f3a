"""Issue 16 items 4 and 6: a kill during fairseq's copy onto checkpoint_last.pt cannot truncate it (the copy
goes to a temporary name, then a rename), and resuming from a truncated checkpoint_last.pt stops naming the
file, listing the intact checkpoints with their update numbers and the exact ``checkpoint.restore_file=...``
override, which then resumes. The runs go through ``python -m fairseq_plugins.hydra_train`` (the
``fairseq-plugins-train`` console script) without ``common.user_dir``."""
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from fairseq import checkpoint_utils
from fairseq.file_io import PathManager

from fairseq_plugins.compat import AtomicCopyPathManager, checkpoint_file_problem, checkpoint_num_updates

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Killed(BaseException):
    """Stands for SIGKILL arriving in the middle of a copy."""


def _half_copy(src, dst, *args, **kwargs):
    with open(src, "rb") as f:
        data = f.read()
    with open(dst, "wb") as f:
        f.write(data[: len(data) // 2])
    raise Killed()


def _save(path, updates):
    torch.save({"model": {"w": torch.randn(64, 64)}, "optimizer_history": [{"num_updates": updates}]}, path)


def test_fairseq_copy_can_truncate_checkpoint_last_and_the_plugin_copy_cannot(tmp_path, monkeypatch):
    new, last = str(tmp_path / "checkpoint_1_20.pt"), str(tmp_path / "checkpoint_last.pt")
    _save(last, 10)
    _save(new, 20)
    monkeypatch.setattr(shutil, "copyfile", _half_copy)
    assert isinstance(checkpoint_utils.PathManager, AtomicCopyPathManager)  # installed by importing the plugin
    with pytest.raises(Killed):
        checkpoint_utils.PathManager.copy(new, last, overwrite=True)
    assert checkpoint_file_problem(last) is None and checkpoint_num_updates(last) == (10, None)
    with pytest.raises(Killed):  # fairseq's own PathManager.copy: the gap the plugin closes
        PathManager.copy(new, last, overwrite=True)
    assert "truncated" in checkpoint_file_problem(last)
    monkeypatch.undo()
    _save(last, 10)
    checkpoint_utils.PathManager.copy(new, last, overwrite=True)
    assert checkpoint_num_updates(last) == (20, None) and not os.path.exists(last + ".tmp")


def test_checkpoint_file_problems(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "text.pt").write_text("not a checkpoint\n")
    assert checkpoint_file_problem(str(tmp_path / "empty.pt")) == "empty file (0 bytes)"
    assert checkpoint_file_problem(str(tmp_path / "text.pt")).startswith("not a torch checkpoint (17 bytes")


def _train(cmd_args, run_dir):
    cmd = [sys.executable, "-m", "fairseq_plugins.hydra_train", "--config-dir",
           os.path.join(REPO, "examples", "slicer", "config"), "--config-name", "slicer_tiny", *cmd_args,
           f"hydra.run.dir={run_dir}"]
    return subprocess.run(cmd, cwd=run_dir, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1"))


@pytest.mark.slow
def test_truncated_checkpoint_last_says_how_to_resume(tmp_path):
    from fairseq_plugins.data.manifest_io import write_manifest

    data = tmp_path / "data"
    data.mkdir()
    rows = []
    for i in range(48):  # 6 updates of 8 per epoch: updates 2, 4 and 6 fall in epoch 1
        sf.write(data / f"u{i}.wav", (0.1 * np.random.default_rng(i).standard_normal(16000)).astype("float32"),
                 16000, subtype="FLOAT")
        rows.append((f"u{i}.wav", 16000))
    for split in ("train", "valid"):
        write_manifest(str(data / f"{split}.tsv"), str(data), rows)
    ckpt, run = tmp_path / "ckpt", tmp_path / "run"
    run.mkdir()
    common = [f"task.data={data}", f"checkpoint.save_dir={ckpt}", "dataset.batch_size=8",
              "checkpoint.save_interval_updates=2", "checkpoint.keep_interval_updates=3",
              "dataset.validate_interval_updates=2", "dataset.max_valid_steps=1", "task.kmix_min_items=8"]
    proc = _train([*common, "optimization.max_update=4"], str(run))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    assert {"checkpoint_1_2.pt", "checkpoint_1_4.pt", "checkpoint_last.pt"} <= set(os.listdir(ckpt))
    last = ckpt / "checkpoint_last.pt"
    data_bytes = last.read_bytes()
    last.write_bytes(data_bytes[: len(data_bytes) // 2])

    proc = _train([*common, "optimization.max_update=6"], str(run))
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"cannot resume from {last}: truncated or corrupted" in log, log[-5000:]
    assert "checkpoint_1_4.pt  (update 4)" in log and "checkpoint_1_2.pt  (update 2)" in log
    m = re.search(r"rerun the same command with: (checkpoint\.restore_file=\S+)", log)
    assert m and m.group(1) == f"checkpoint.restore_file={ckpt / 'checkpoint_1_4.pt'}", log[-3000:]
    assert "PytorchStreamReader" not in log

    proc = _train([*common, "optimization.max_update=6", m.group(1)], str(run))
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    assert re.search(r"Loaded checkpoint \S*checkpoint_1_4\.pt \(epoch \d+ @ 4 updates\)", log), log[-3000:]
    assert checkpoint_num_updates(str(last)) == (6, None)


def test_console_script_sets_the_plugin_user_dir():
    from fairseq_plugins.hydra_train import PLUGIN_DIR, with_user_dir

    assert PLUGIN_DIR == os.path.join(REPO, "fairseq_plugins")
    assert with_user_dir(["task.data=/d"]) == ["task.data=/d", f"common.user_dir={PLUGIN_DIR}"]
    assert with_user_dir(["common.user_dir=/other"]) == ["common.user_dir=/other"]  # kept (with a warning)
    with open(os.path.join(REPO, "setup.py")) as f:
        setup = re.sub(r"\s", "", f.read())
    assert '"fairseq-plugins-train=fairseq_plugins.hydra_train:main"' in setup
