"""End-to-end SLICER runs through ``fairseq-hydra-train`` with the real tiny example config: a plain run, an
exact resume from checkpoint_last, a 2-process gloo run, and loading the checkpoint as an evaluation upstream."""
import os

import pytest
import torch

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_DIR = os.path.join(REPO, "examples", "slicer", "config")
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


def slicer_train(hydra_train, overrides, run_dir: str) -> str:
    """``fairseq-hydra-train`` of slicer_tiny with one intra-op thread (two threads made these runs 10-25x
    slower when another job held one of the two cores). Returns the log."""
    return hydra_train(CONFIG_DIR, "slicer_tiny", ["checkpoint.save_interval_updates=10",
                                                   "dataset.validate_interval_updates=10", *overrides],
                       run_dir, timeout=300, threads=1)


def state(path: str):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


@pytest.fixture(scope="module")
def straight_run(data, tmp_path_factory, hydra_train):
    run = str(tmp_path_factory.mktemp("slicer_straight"))
    log = slicer_train(hydra_train, [*data, f"checkpoint.save_dir={run}/ckpt", "optimization.max_update=20"], run)
    return {"dir": run, "log": log, "ckpt": os.path.join(run, "ckpt", "checkpoint_last.pt")}


def test_tiny_config_trains_and_logs_every_term(straight_run):
    log = straight_run["log"]
    assert "k-mix: fitted 4 centroids" in log
    assert "done training" in log
    for term in TERMS:
        assert f"{term}=" in log, term
    sd = state(straight_run["ckpt"])
    assert bool(sd["kmix_ready"]) and int(sd["ema_updates"]) == 19 and float(sd["norm.count"]) > 0


def test_resume_from_checkpoint_last_continues_exactly(data, straight_run, tmp_path, hydra_train):
    """10 updates, stop, resume to 20 (mid-epoch, through fairseq's own checkpoint_last) == 20 straight."""
    run = str(tmp_path)
    common = [*data, f"checkpoint.save_dir={run}/ckpt"]
    slicer_train(hydra_train, [*common, "optimization.max_update=10"], run)
    log = slicer_train(hydra_train, [*common, "optimization.max_update=20"], run)
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


@pytest.mark.parametrize("batches", ["even", "odd"])
def test_two_process_gloo_run_gathers_keys(data, tmp_path, batches, hydra_train):
    """fairseq's own distributed init (tcp, gloo, one process per rank): every worker enqueues the keys of all
    workers, so after one epoch the queue pointer has advanced by 2 keys x every training item. With an odd
    number of batches, one worker runs fairseq's placeholder (dummy) batch in the last step: it must still join
    the all-gather (else the run hangs) and add no keys."""
    n = n_train(data)
    parity = 0 if batches == "even" else 1
    bs = next(b for b in range(12, 40) if -(-n // b) % 2 == parity)
    run = str(tmp_path)
    logs = hydra_train.distributed(CONFIG_DIR, "slicer_tiny", [
        *data, f"checkpoint.save_dir={run}/ckpt", "optimization.max_update=0", "++optimization.max_epoch=1",
        f"dataset.batch_size={bs}", "model.queue_size=4096"], run, timeout=300)
    assert "initialized host" in logs[0] and "as rank 1" in logs[1]
    sd = state(os.path.join(run, "ckpt", "checkpoint_last.pt"))
    assert int(sd["queue_ptr"]) == 2 * n  # 2 views x all items of both workers (1 worker alone: about half)
    torch.testing.assert_close(sd["queue"][: 2 * n].norm(dim=1), torch.ones(2 * n))


def test_bf16_run_keeps_statistics_in_float64(data, tmp_path, hydra_train):
    """fairseq's ``common.bf16`` casts the model (fp16 needs CUDA in fairseq; bf16 runs on CPU): training runs,
    and the normaliser's statistics are not rounded through bf16 (they would come back as float32)."""
    run = str(tmp_path)
    log = slicer_train(hydra_train, [*data, f"checkpoint.save_dir={run}/ckpt", "optimization.max_update=10",
                                     "common.bf16=true"], run)
    assert "num_updates 10" in log
    sd = state(os.path.join(run, "ckpt", "checkpoint_last.pt"))
    assert sd["norm.total"].dtype == torch.float64 and float(sd["norm.count"]) > 0
    assert torch.isfinite(sd["queue"]).all() and int(sd["ema_updates"]) == 9
