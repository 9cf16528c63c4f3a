"""End-to-end CSC runs through ``fairseq-hydra-train`` with the real tiny example config on the mini corpus (its
manifests have speaker side files): a plain run that logs every term, an exact resume from checkpoint_last, and
the checkpoint loaded by the probes' loader (frames and the pooled speaker embedding)."""
import os

import pytest
import torch

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_DIR = os.path.join(REPO, "examples", "csc", "config")
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
