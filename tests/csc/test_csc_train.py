"""End-to-end CSC runs through ``fairseq-hydra-train`` with the real tiny example config on the mini corpus (its
manifests have speaker side files): a plain run that logs every term, an exact resume from checkpoint_last, and
the checkpoint loaded by the probes' loader (frames and the pooled speaker embedding)."""
import os

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_DIR = os.path.join(REPO, "examples", "csc", "config")
TRACE_PLUGIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "trace_plugin")
TERMS = ("sep_loss", "si_snri", "csc_loss", "kappa", "attn_max", "frame_collapse_std", "spk_collapse_std")
SMALL = ["model.encoder_layers=2", "model.encoder_embed_dim=64", "model.encoder_ffn_embed_dim=128",
         "model.conv_feature_layers='[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2'", "task.max_sample_size=16000",
         "dataset.max_tokens=150000", "checkpoint.save_interval_updates=4", "dataset.validate_interval_updates=4"]


def csc_train(hydra_train, mini_corpus, overrides, run_dir: str) -> str:
    return hydra_train(CONFIG_DIR, "csc_tiny", [f"task.data={os.path.join(mini_corpus, 'manifest')}", *SMALL,
                                                *overrides], run_dir, timeout=300, threads=1)


def state(path: str):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


@pytest.fixture(scope="module")
def straight_run(mini_corpus, tmp_path_factory, hydra_train):
    run = str(tmp_path_factory.mktemp("csc_straight"))
    log = csc_train(hydra_train, mini_corpus, [f"checkpoint.save_dir={run}/ckpt", "optimization.max_update=8"], run)
    return {"dir": run, "log": log, "ckpt": os.path.join(run, "ckpt", "checkpoint_last.pt")}


def test_tiny_config_trains_and_logs_every_term(straight_run):
    log = straight_run["log"]
    assert "done training" in log and "num_updates 8" in log
    for term in TERMS:
        assert f"| {term} " in log, term  # the simple log format: "| name value |"
    sd = state(straight_run["ckpt"])
    assert "csc_head.log_kappa" in sd and "sep_head.proj.weight" in sd


def test_resume_from_checkpoint_last_continues_exactly(mini_corpus, straight_run, tmp_path, hydra_train):
    """4 updates, stop, resume to 8 (through fairseq's own checkpoint_last) == 8 straight: the mixtures are
    keyed by (seed, epoch, index, condition), so the resumed run sees the same conditions."""
    run = str(tmp_path)
    csc_train(hydra_train, mini_corpus, [f"checkpoint.save_dir={run}/ckpt", "optimization.max_update=4"], run)
    log = csc_train(hydra_train, mini_corpus, [f"checkpoint.save_dir={run}/ckpt", "optimization.max_update=8"], run)
    assert "Loaded checkpoint" in log
    a, b = state(straight_run["ckpt"]), state(os.path.join(run, "ckpt", "checkpoint_last.pt"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_checkpoint_loads_in_the_probes_loader(straight_run, mini_corpus):
    from fairseq_plugins.evaluate.upstream import load_upstream

    up = load_upstream(straight_run["ckpt"], "csc", manifest_dir=os.path.join(mini_corpus, "manifest"))
    assert up.num_layers == 3 and up.info["model"] == "CscModel"
    wav = torch.randn(2, 16000) * 0.1
    states, _ = up(wav)
    assert len(states) == 3 and states[-1].shape == (2, 49, 64)
    feats = up.model.extract_features(wav, padding_mask=None, mask=False)
    assert feats["speaker"].shape == (2, 64) and torch.isfinite(feats["speaker"]).all()


def test_cli_reports_interfered_verification_and_separation(straight_run, tmp_path, hydra_train):
    """``python -m fairseq_plugins.evaluate`` on the tiny csc checkpoint with interfered trials and the
    separation task, on a mini corpus with 3 held-out speakers (the interferer must be neither trial speaker):
    the table and results.jsonl have the clean and interfered EER rows and SI-SNRi for csc, n/a for log-mel."""
    import json
    import subprocess
    import sys

    from manifests.mini_corpus import build_mini_corpus

    corpus = str(tmp_path / "corpus")
    build_mini_corpus(corpus, seed=0, minutes=1.0, num_speakers=12)
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "fairseq_plugins.evaluate", "--checkpoints", f"csc={straight_run['ckpt']}",
           "--manifest-dir", os.path.join(corpus, "manifest"), "--out", str(out), "--baselines", "logmel",
           "--tasks", "speaker_ver,separation", "--interference", "speech:0,noise:5", "--sv-weights", "uniform",
           "--seeds", "0", "1", "--user-dir", hydra_train.plugin_dir]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = {line.split("|")[1].strip(): [c.strip().strip("*") for c in line.strip("|").split("|")[1:]]
            for line in proc.stdout.splitlines() if line.startswith("| ") and "|---" not in line}
    tasks = ["speaker_ver", "speaker_ver@speech:0", "speaker_ver@noise:5", "separation@speech:0",
             "separation@noise:5"]
    assert [t for t in rows if t != "task"] == tasks
    for t in tasks:  # cells: metric, csc, logmel; log-mel has no separation head (– = not applicable)
        assert rows[t][0] == ("SI-SNRi (dB) ↑" if t.startswith("separation") else "EER ↓")
        assert (rows[t][2] == "–") == t.startswith("separation")
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    got = {(r["upstream"], r["task"], r["seed"]): r for r in results}
    assert set(got) == {(u, t, s) for u in ("csc", "logmel") for t in tasks for s in (0, 1)
                        if not (u == "logmel" and t.startswith("separation"))}
    for (u, t, s), r in got.items():
        assert np.isfinite(r["value"])
        if t.startswith("speaker_ver@"):
            clean = got[(u, "speaker_ver", s)]
            assert r["layer_weights"] == clean["layer_weights"] and 0 <= r["value"] <= 1
            assert r["sizes"] == clean["sizes"]  # the same trial list
        if t.startswith("separation@"):
            assert r["unit"] == "dB" and r["value"] == pytest.approx(r["si_snr_out"] - r["si_snr_in"], abs=1e-6)
            assert rows[t][1] == f"{r['value']:.1f} ± 0.0"
    assert abs(got[("csc", "separation@speech:0", 0)]["si_snr_in"]) < 1.0  # 0 dB SIR: the mixture is near 0 dB


def test_two_process_gloo_run_mixes_different_utterances_per_rank(mini_corpus, tmp_path, hydra_train, monkeypatch):
    """fairseq's own distributed init (tcp, gloo, one process per rank, no_c10d): the run finishes, and the
    ranks built different mixtures: a test user dir (tests/csc/trace_plugin: the plugin plus a trace) records
    every training item's (epoch, index, digest of its K conditions) per rank; the ranks' items are disjoint,
    and each digest is the one this process gets from the checkpoint's task for that (epoch, index)."""
    import hashlib

    from omegaconf import OmegaConf

    from fairseq_plugins.tasks.multiview_audio_pretraining import (
        MultiviewAudioPretrainingConfig,
        MultiviewAudioPretrainingTask,
    )

    run, trace = str(tmp_path / "run"), tmp_path / "trace"
    trace.mkdir()
    monkeypatch.setenv("CSC_TRACE_DIR", str(trace))
    logs = hydra_train.distributed(CONFIG_DIR, "csc_tiny", [
        f"task.data={os.path.join(mini_corpus, 'manifest')}", *SMALL, f"checkpoint.save_dir={run}/ckpt",
        "optimization.max_update=4", f"common.user_dir={TRACE_PLUGIN}"], run, timeout=300)
    assert "initialized host" in logs[0] and "as rank 1" in logs[1]
    assert "done training" in logs[0] and "num_updates 4" in logs[0]
    ranks, dummies = [], []
    for r in (0, 1):
        rows = [line.split("\t") for line in (trace / f"rank{r}.tsv").read_text().splitlines()]
        # batch 0 is fairseq's dummy batch (Trainer.get_train_iterator -> reset_dummy_batch(first_batch)): every
        # rank collates the unsharded first batch, used only with zero weight when a rank runs out of batches
        dummies.append({(int(e), int(i)): d for b, e, i, d in rows if b == "0"})
        ranks.append({(int(e), int(i)): d for b, e, i, d in rows if b != "0"})
    assert dummies[0] == dummies[1] and ranks[0] and ranks[1]
    assert not set(ranks[0]) & set(ranks[1])  # no item is mixed by both ranks
    assert not set(ranks[0].values()) & set(ranks[1].values())  # and no mixture is shared
    ckpt = torch.load(os.path.join(run, "ckpt", "checkpoint_last.pt"), map_location="cpu", weights_only=True)
    fields = MultiviewAudioPretrainingConfig.__dataclass_fields__
    task_cfg = {k: v for k, v in OmegaConf.to_container(OmegaConf.create(ckpt["cfg"]["task"])).items()
                if k in fields}
    task = MultiviewAudioPretrainingTask.setup_task(OmegaConf.structured(MultiviewAudioPretrainingConfig(
        **task_cfg)))
    task.load_dataset("train")
    ds = task.dataset("train")
    for r, items in enumerate(ranks):
        for (epoch, index), digest in sorted(items.items())[:3]:
            ds.set_epoch(epoch)
            h = hashlib.sha1()  # trace_plugin.mixture_digest (the user dir is not importable here)
            for view in ds[index]["views"]:
                h.update(view.numpy().tobytes())
            assert h.hexdigest() == digest, (r, epoch, index)
