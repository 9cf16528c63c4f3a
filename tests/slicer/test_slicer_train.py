"""End-to-end SLICER runs through ``fairseq-hydra-train`` with the real tiny example config: a plain run, an
exact resume from checkpoint_last, a 2-process gloo run, and loading the checkpoint as an evaluation upstream."""
import os
import socket
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLUGIN_DIR = os.path.join(REPO, "fairseq_plugins")
CONFIG_DIR = os.path.join(REPO, "examples", "slicer", "config")
BIN = os.path.dirname(sys.executable)
TERMS = ("instance_loss", "cluster_loss", "cluster_entropy", "clusters_used")


@pytest.fixture(scope="module")
def data(mini_corpus, tmp_path_factory):
    from manifests.clips import build_clips

    clips = str(tmp_path_factory.mktemp("slicer_clips"))
    build_clips(clips, seed=0, per_class=(8, 2, 2))
    return [f"task.data={os.path.join(mini_corpus, 'manifest')}", f"task.extra_data=[{clips}]"]


def n_train(data_overrides) -> int:
    n = 0
    for d in (data_overrides[0].split("=", 1)[1], data_overrides[1].split("=[", 1)[1].rstrip("]")):
        with open(os.path.join(d, "train.tsv")) as f:
            n += sum(1 for line in f if line.strip()) - 1
    return n


def hydra_train(overrides, run_dir: str) -> str:
    """``fairseq-hydra-train`` of slicer_tiny with one intra-op thread (the conftest runner's two threads made
    these runs 10-25x slower when another job held one of the two cores). Returns the log."""
    os.makedirs(run_dir, exist_ok=True)
    cmd = [os.path.join(BIN, "fairseq-hydra-train"), "--config-dir", CONFIG_DIR, "--config-name", "slicer_tiny",
           f"common.user_dir={PLUGIN_DIR}", f"hydra.run.dir={run_dir}", "checkpoint.save_interval_updates=10",
           "dataset.validate_interval_updates=10", *overrides]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, cwd=run_dir, capture_output=True, text=True, timeout=300, env=env)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        pytest.fail(f"fairseq-hydra-train failed ({proc.returncode}):\n{' '.join(cmd)}\n{log[-6000:]}")
    return log


def state(path: str):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


@pytest.fixture(scope="module")
def straight_run(data, tmp_path_factory):
    run = str(tmp_path_factory.mktemp("slicer_straight"))
    log = hydra_train([*data, f"checkpoint.save_dir={run}/ckpt", "optimization.max_update=20"], run)
    return {"dir": run, "log": log, "ckpt": os.path.join(run, "ckpt", "checkpoint_last.pt")}


def test_tiny_config_trains_and_logs_every_term(straight_run):
    log = straight_run["log"]
    assert "k-mix: fitted 4 centroids" in log
    assert "done training" in log
    for term in TERMS:
        assert f"{term}=" in log, term
    sd = state(straight_run["ckpt"])
    assert bool(sd["kmix_ready"]) and int(sd["ema_updates"]) == 19 and float(sd["norm.count"]) > 0


def test_resume_from_checkpoint_last_continues_exactly(data, straight_run, tmp_path):
    """10 updates, stop, resume to 20 (mid-epoch, through fairseq's own checkpoint_last) == 20 straight."""
    run = str(tmp_path)
    common = [*data, f"checkpoint.save_dir={run}/ckpt"]
    hydra_train([*common, "optimization.max_update=10"], run)
    log = hydra_train([*common, "optimization.max_update=20"], run)
    assert "Loaded checkpoint" in log and "k-mix: fitted" not in log  # centroids came from the checkpoint
    a, b = state(straight_run["ckpt"]), state(os.path.join(run, "ckpt", "checkpoint_last.pt"))
    assert a.keys() == b.keys()
    for key in a:
        if key == "_extra_state":
            assert torch.equal(a[key]["bank_items"], b[key]["bank_items"])
        else:
            assert torch.equal(a[key], b[key]), key


def test_checkpoint_loads_as_an_evaluation_upstream(straight_run):
    from fairseq_plugins.evaluate.upstream import load_upstream, random_like

    torch.manual_seed(0)
    up = load_upstream(straight_run["ckpt"], "slicer")
    feats = up.extract(torch.randn(16000) * 0.1)
    assert feats.shape == (2, 101 // 8, 256)  # two 2048-d (here 256-d) states at 12.5 Hz
    assert random_like(up).extract(torch.randn(8000)).shape[0] == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("batches", ["even", "odd"])
def test_two_process_gloo_run_gathers_keys(data, tmp_path, batches):
    """fairseq's own distributed init (tcp, gloo, one process per rank): every worker enqueues the keys of all
    workers, so after one epoch the queue pointer has advanced by 2 keys x every training item. With an odd
    number of batches, one worker runs fairseq's placeholder (dummy) batch in the last step: it must still join
    the all-gather (else the run hangs) and add no keys."""
    n = n_train(data)
    parity = 0 if batches == "even" else 1
    bs = next(b for b in range(12, 40) if -(-n // b) % 2 == parity)
    port, run = _free_port(), str(tmp_path)
    procs = []
    for rank in range(2):
        cmd = [os.path.join(BIN, "fairseq-hydra-train"), "--config-dir", CONFIG_DIR, "--config-name", "slicer_tiny",
               *data, f"common.user_dir={PLUGIN_DIR}", f"hydra.run.dir={run}/rank{rank}",
               f"checkpoint.save_dir={run}/ckpt", "distributed_training.distributed_world_size=2",
               "++distributed_training.distributed_backend=gloo",
               f"++distributed_training.distributed_init_method=tcp://127.0.0.1:{port}",
               f"++distributed_training.distributed_rank={rank}", "++distributed_training.distributed_no_spawn=true",
               "optimization.max_update=0", "++optimization.max_epoch=1", f"dataset.batch_size={bs}",
               "model.queue_size=4096"]
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        procs.append(subprocess.Popen(cmd, cwd=run, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      env=env))
    logs = [p.communicate(timeout=300)[0] for p in procs]
    for rank, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"rank {rank} failed:\n{log[-4000:]}"
    assert "initialized host" in logs[0] and "as rank 1" in logs[1]
    sd = state(os.path.join(run, "ckpt", "checkpoint_last.pt"))
    assert int(sd["queue_ptr"]) == 2 * n  # 2 views x all items of both workers (1 worker alone: about half)
    torch.testing.assert_close(sd["queue"][: 2 * n].norm(dim=1), torch.ones(2 * n))


def test_bf16_run_keeps_statistics_in_float64(data, tmp_path):
    """fairseq's ``common.bf16`` casts the model (fp16 needs CUDA in fairseq; bf16 runs on CPU): training runs,
    and the normaliser's statistics are not rounded through bf16 (they would come back as float32)."""
    run = str(tmp_path)
    log = hydra_train([*data, f"checkpoint.save_dir={run}/ckpt", "optimization.max_update=10", "common.bf16=true"],
                      run)
    assert "num_updates 10" in log
    sd = state(os.path.join(run, "ckpt", "checkpoint_last.pt"))
    assert sd["norm.total"].dtype == torch.float64 and float(sd["norm.count"]) > 0
    assert torch.isfinite(sd["queue"]).all() and int(sd["ema_updates"]) == 9
