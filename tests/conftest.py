"""Shared fixtures: the plugin imported once, a tiny mini corpus, and a tiny HuBERT checkpoint made by a real
``fairseq-hydra-train`` run (session-scoped: built once, reused by every test that needs one)."""
import os
import subprocess
import sys
from typing import List

import pytest

import fairseq_plugins  # noqa: F401  (registers the plugin, installs the checkpoint allow-list)


def pytest_configure(config):
    """Under CI (CI=true) a skip other than "no GPU" fails the run: see tests/ci_skip_guard.py."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "ci_skip_guard", os.path.join(os.path.dirname(os.path.abspath(__file__)), "ci_skip_guard.py"))
    guard = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(guard)
    guard.register(config)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN_DIR = os.path.join(REPO, "fairseq_plugins")
BIN = os.path.dirname(sys.executable)


def run_hydra_train(config_dir: str, config_name: str, overrides: List[str], run_dir: str,
                    timeout: int = 600) -> str:
    """Run ``fairseq-hydra-train`` in a subprocess with the plugin as user dir; return its log text.

    Fails the test with the tail of the log when the run exits non-zero.
    """
    os.makedirs(run_dir, exist_ok=True)
    cmd = [
        os.path.join(BIN, "fairseq-hydra-train"), "--config-dir", config_dir, "--config-name", config_name,
        f"common.user_dir={PLUGIN_DIR}", f"hydra.run.dir={run_dir}", *overrides,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, cwd=run_dir, capture_output=True, text=True, timeout=timeout, env=env)
    log = proc.stdout + proc.stderr
    with open(os.path.join(run_dir, "train.log"), "w") as f:
        f.write(log)
    if proc.returncode != 0:
        pytest.fail(f"fairseq-hydra-train failed ({proc.returncode}):\n{' '.join(cmd)}\n{log[-6000:]}")
    return log


@pytest.fixture(scope="session")
def hydra_train():
    """:func:`run_hydra_train` as a fixture (test modules cannot import conftest under importlib mode)."""
    return run_hydra_train


@pytest.fixture(scope="session")
def mini_corpus(tmp_path_factory):
    """A small mini corpus (about a minute of TTS speech, 8 speakers) with manifests and k-means labels."""
    from manifests.hubert_labels import make_kmeans_labels
    from manifests.mini_corpus import build_mini_corpus

    out = str(tmp_path_factory.mktemp("mini_corpus"))
    build_mini_corpus(out, seed=0, minutes=1.0, num_speakers=8)
    make_kmeans_labels(os.path.join(out, "manifest"), splits=("train", "valid"), n_clusters=20)
    return out


@pytest.fixture(scope="session")
def tiny_hubert(mini_corpus, tmp_path_factory):
    """A tiny HuBERT pre-trained for 20 updates by fairseq's stock HuBERT task through fairseq-hydra-train."""
    run = str(tmp_path_factory.mktemp("tiny_hubert"))
    manifest = os.path.join(mini_corpus, "manifest")
    log = run_hydra_train(
        os.path.join(REPO, "examples", "hubert", "config"), "hubert_tiny",
        [f"task.data={manifest}", f"task.label_dir={manifest}", f"checkpoint.save_dir={run}/ckpt",
         "optimization.max_update=20", "checkpoint.save_interval_updates=10",
         "dataset.validate_interval_updates=10"],
        run,
    )
    return {"dir": run, "ckpt": os.path.join(run, "ckpt", "checkpoint_last.pt"), "log": log,
            "manifest": manifest}
