"""Shared fixtures: the plugin imported once, a tiny mini corpus, and a tiny HuBERT checkpoint made by a real
``fairseq-hydra-train`` run (session-scoped: built once, reused by every test that needs one)."""
import os
import socket
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


# The one tiny wav2vec2/HuBERT-style encoder of the unit tests (8000 samples -> 24 frames of 32 dims): models
# built in tests take these sizes and override what they test.
TINY_ENCODER = dict(conv_feature_layers="[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2", encoder_layers=2,
                    encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=2, conv_pos=16,
                    conv_pos_groups=4, dropout=0.0, attention_dropout=0.0, dropout_input=0.0, dropout_features=0.0)
# ... and the simsiam_recon heads on top of it
TINY_SIMSIAM_RECON = dict(TINY_ENCODER, projector_dim=48, projector_hidden_dim=48, predictor_hidden_dim=12,
                          mask_length=3)


def short_run(updates: int) -> List[str]:
    """Overrides for a run of ``updates`` updates that validates and saves ``checkpoint_last`` at its end."""
    return [f"optimization.max_update={updates}", f"checkpoint.save_interval_updates={updates}",
            f"dataset.validate_interval_updates={updates}"]


def hydra_train_cmd(config_dir: str, config_name: str, overrides: List[str], run_dir: str) -> List[str]:
    """The ``fairseq-hydra-train`` command line of one run with the plugin as user dir."""
    return [os.path.join(BIN, "fairseq-hydra-train"), "--config-dir", config_dir, "--config-name", config_name,
            f"common.user_dir={PLUGIN_DIR}", f"hydra.run.dir={run_dir}", *overrides]


def _env(threads: int) -> dict:
    return dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")


def run_hydra_train(config_dir: str, config_name: str, overrides: List[str], run_dir: str,
                    timeout: int = 600, threads: int = 2) -> str:
    """Run ``fairseq-hydra-train`` in a subprocess with the plugin as user dir; return its log text (also
    written to ``run_dir/train.log``). ``threads``: intra-op threads (1 keeps a run's speed predictable on a
    machine whose other core is busy). Fails the test with the tail of the log when the run exits non-zero."""
    os.makedirs(run_dir, exist_ok=True)
    cmd = hydra_train_cmd(config_dir, config_name, overrides, run_dir)
    proc = subprocess.run(cmd, cwd=run_dir, capture_output=True, text=True, timeout=timeout, env=_env(threads))
    log = proc.stdout + proc.stderr
    with open(os.path.join(run_dir, "train.log"), "w") as f:
        f.write(log)
    if proc.returncode != 0:
        pytest.fail(f"fairseq-hydra-train failed ({proc.returncode}):\n{' '.join(cmd)}\n{log[-6000:]}")
    return log


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_hydra_train_distributed(config_dir: str, config_name: str, overrides: List[str], run_dir: str,
                                world_size: int = 2, timeout: int = 600) -> List[str]:
    """``world_size`` ``fairseq-hydra-train`` processes, one per rank, joined by fairseq's own distributed init
    (tcp, gloo, ``distributed_no_spawn``) on CPU; one intra-op thread each. The config must use
    ``ddp_backend=legacy_ddp`` or ``no_c10d`` (fairseq's c10d wrapper needs CUDA). Returns the logs in rank
    order (also written to ``run_dir/rank{r}/train.log``); fails the test when a rank exits non-zero."""
    port = _free_port()
    procs, cmds = [], []
    for rank in range(world_size):
        rank_dir = os.path.join(run_dir, f"rank{rank}")
        os.makedirs(rank_dir, exist_ok=True)
        cmd = hydra_train_cmd(config_dir, config_name, [
            *overrides, f"distributed_training.distributed_world_size={world_size}",
            "++distributed_training.distributed_backend=gloo",
            f"++distributed_training.distributed_init_method=tcp://127.0.0.1:{port}",
            f"++distributed_training.distributed_rank={rank}", "++distributed_training.distributed_no_spawn=true",
        ], rank_dir)
        cmds.append(cmd)
        procs.append(subprocess.Popen(cmd, cwd=rank_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, env=_env(1)))
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rank, (p, log) in enumerate(zip(procs, logs)):
        with open(os.path.join(run_dir, f"rank{rank}", "train.log"), "w") as f:
            f.write(log)
        if p.returncode != 0:
            pytest.fail(f"rank {rank} of fairseq-hydra-train failed ({p.returncode}):\n{' '.join(cmds[rank])}\n"
                        f"{log[-6000:]}")
    return logs


class HydraTrain:
    """What the ``hydra_train`` fixture hands out: call it like :func:`run_hydra_train`; ``.distributed`` is
    :func:`run_hydra_train_distributed`, ``.short_run`` :func:`short_run`, ``.plugin_dir`` the user dir."""

    plugin_dir = PLUGIN_DIR
    repo = REPO

    def __call__(self, *args, **kwargs) -> str:
        return run_hydra_train(*args, **kwargs)

    distributed = staticmethod(run_hydra_train_distributed)
    short_run = staticmethod(short_run)


@pytest.fixture(scope="session")
def hydra_train() -> HydraTrain:
    """The one way tests launch ``fairseq-hydra-train`` (test modules cannot import conftest under importlib
    mode): see :class:`HydraTrain`."""
    return HydraTrain()


def build_simsiam_recon(aligned: bool = False, seed: int = 1, **overrides):
    """``(task, model)``: a ``multiview_audio_pretraining`` task that loads no data (its ``data`` is the
    temporary directory) and a ``simsiam_recon`` model of :data:`TINY_SIMSIAM_RECON` sizes with ``overrides``."""
    import tempfile

    from omegaconf import OmegaConf

    from fairseq_plugins.models.simsiam_recon import SimsiamReconConfig, SimsiamReconModel
    from fairseq_plugins.tasks.multiview_audio_pretraining import (
        MultiviewAudioPretrainingConfig,
        MultiviewAudioPretrainingTask,
    )

    task = MultiviewAudioPretrainingTask.setup_task(OmegaConf.structured(MultiviewAudioPretrainingConfig(
        data=tempfile.gettempdir(), seed=seed, tpu=False, train_subset="train", augmentations=[],
        aligned_views=aligned)))
    cfg = OmegaConf.structured(SimsiamReconConfig(**{**TINY_SIMSIAM_RECON, **overrides}))
    return task, SimsiamReconModel.build_model(cfg, task)


@pytest.fixture(scope="session")
def tiny():
    """The shared tiny sizes and builders: ``.encoder`` (:data:`TINY_ENCODER`), ``.simsiam_recon``
    (:data:`TINY_SIMSIAM_RECON`), ``.build_simsiam_recon`` (:func:`build_simsiam_recon`)."""
    from types import SimpleNamespace

    return SimpleNamespace(encoder=dict(TINY_ENCODER), simsiam_recon=dict(TINY_SIMSIAM_RECON),
                           build_simsiam_recon=build_simsiam_recon)


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
