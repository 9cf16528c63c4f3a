"""The probes under interference (``fairseq_plugins.evaluate.interference``): the mixtures hit the requested
SIR/SNR, the interferer is never a trial speaker, every mixture is determined by (seed, condition, names), the
interfered EER is scored on the clean trial list with the clean row's weights, and the SI-SNR improvement of
a separation head matches a naive SI-SNR computed here."""
import os
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

from fairseq_plugins.data.manifest_io import write_lines, write_manifest
from fairseq_plugins.evaluate import interference as itf
from fairseq_plugins.evaluate.data import FeatureStore, Split
from fairseq_plugins.evaluate.pipeline import EvalConfig, load_task, run_task
from fairseq_plugins.evaluate.probes import ProbeConfig
from fairseq_plugins.evaluate.upstream import LogMelUpstream

SR = 16000
FREQS = {"a": 220.0, "b": 550.0, "c": 1300.0, "d": 2900.0}  # one tone per 'speaker': the interferer is audible
PER_SPEAKER = 3


def tone(freq, n, seed):
    r = np.random.default_rng(seed)
    t = np.arange(n) / SR
    x = 0.2 * np.sin(2 * np.pi * freq * t + r.uniform(0, 6)) * (1 + 0.4 * np.sin(2 * np.pi * r.uniform(2, 5) * t))
    return (x + 0.002 * r.standard_normal(n)).astype(np.float32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """``train``/``test`` manifests of tone 'speakers' (.spk, .utt, test.trials), a noise manifest, and a
    two-speaker split ``two``."""
    d = tmp_path_factory.mktemp("interference")
    rows, spk, utt = [], [], []
    for s, f in FREQS.items():
        for k in range(PER_SPEAKER):
            n = 12000 + 1500 * k + 700 * len(rows)
            sf.write(d / f"{s}{k}.wav", tone(f, n, len(rows)), SR, subtype="FLOAT")
            rows.append((f"{s}{k}.wav", n))
            spk.append(s)
            utt.append(f"{s}{k}")
    for split in ("train", "test"):
        write_manifest(str(d / f"{split}.tsv"), str(d), rows)
        write_lines(str(d / f"{split}.spk"), spk)
        write_lines(str(d / f"{split}.utt"), utt)
    trials = [f"{int(spk[i] == spk[j])} {utt[i]} {utt[j]}" for i in range(len(utt)) for j in range(len(utt))
              if i < j and (spk[i] == spk[j] or (i + j) % 3 == 0)]
    write_lines(str(d / "test.trials"), trials)
    two = [i for i, s in enumerate(spk) if s in ("a", "b")]
    write_manifest(str(d / "two.tsv"), str(d), [rows[i] for i in two])
    write_lines(str(d / "two.spk"), [spk[i] for i in two])
    r = np.random.default_rng(7)
    noise_rows = []
    for k in range(3):
        sf.write(d / f"noise{k}.wav", (0.1 * r.standard_normal(9000 + 2000 * k)).astype(np.float32), SR,
                 subtype="FLOAT")
        noise_rows.append((f"noise{k}.wav", 9000 + 2000 * k))
    write_manifest(str(d / "noise.tsv"), str(d), noise_rows)
    return str(d)


def db(a, b):
    return 10 * np.log10(np.sum(np.square(a, dtype=np.float64)) / np.sum(np.square(b, dtype=np.float64)))


def dominant_speaker(x):
    spec = np.abs(np.fft.rfft(x))
    peak = np.fft.rfftfreq(len(x), 1 / SR)[int(np.argmax(spec))]
    return min(FREQS, key=lambda s: abs(FREQS[s] - peak))


def test_conditions_parse_and_refuse_bad_items():
    conds = itf.parse_conditions("speech:0, noise:5,both:-2.5:10")
    assert [c.name for c in conds] == ["speech:0", "noise:5", "both:-2.5:10"]
    assert (conds[2].sir, conds[2].snr) == (-2.5, 10.0) and conds[0].snr is None and conds[1].sir is None
    for bad in ("music:0", "speech", "speech:x", "noise:1:2", "both:0", "speech:inf", "speech:0,speech:0"):
        with pytest.raises(ValueError, match="--interference"):
            itf.parse_conditions(bad)


@pytest.mark.parametrize("spec", ["speech:0", "speech:-5", "noise:5", "noise:20", "both:3:10"])
def test_mixtures_hit_the_requested_ratio_within_0_1_db(corpus, spec):
    cond = itf.parse_conditions(spec)[0]
    split = Split(corpus, "test")
    maker = itf.MixtureMaker(split, cond, seed=0, noise_manifest=os.path.join(corpus, "noise.tsv"))
    for i in range(len(split)):
        clean, mixture, info = maker.mix(i, f"utt{i}")
        assert mixture.dtype == np.float32 and mixture.shape == clean.shape
        np.testing.assert_array_equal(clean, split.read(i))
        if cond.needs_speech:
            assert info["speech_span"] == (0, len(clean))  # the whole target is covered
            assert abs(db(clean, info["speech"]) - cond.sir) < 0.1
        if cond.needs_noise:
            assert abs(db(clean, info["noise"]) - cond.snr) < 0.1
        if cond.kind != "both":  # the float32 mixture itself: the residual is the interferer at the asked ratio
            assert abs(db(clean, mixture.astype(np.float64) - clean) - (cond.sir if cond.needs_speech
                                                                        else cond.snr)) < 0.1


def test_the_interferer_is_never_a_trial_speaker(corpus):
    split = Split(corpus, "test")
    spk = split.side("spk")
    maker = itf.MixtureMaker(split, itf.parse_conditions("speech:0")[0], seed=3, noise_manifest=None)
    used = set()
    for a in range(len(split)):
        for b in range(len(split)):
            _, _, info = maker.mix(b, f"{a}|{b}", exclude=(spk[a],))
            other = info["interferer_speaker"]
            assert other not in (spk[a], spk[b])
            assert dominant_speaker(info["speech"]) == other  # and the audio is that speaker's
            used.add(other)
    assert used == set(FREQS)
    two = Split(corpus, "two")
    two_maker = itf.MixtureMaker(two, itf.parse_conditions("speech:0")[0], seed=0, noise_manifest=None)
    with pytest.raises(ValueError, match="no speaker outside"):
        two_maker.mix(0, "k", exclude=("b",))


def test_mixtures_are_determined_by_seed_condition_and_names(corpus):
    split = Split(corpus, "test")
    noise = os.path.join(corpus, "noise.tsv")
    cond, other = itf.parse_conditions("both:0:5,both:0:6")

    def mixes(seed, c=cond, order=range(len(split))):
        m = itf.MixtureMaker(split, c, seed, noise)
        return {i: m.mix(i, f"key{i}")[1] for i in order}

    first = mixes(0)
    again = mixes(0, order=reversed(range(len(split))))  # a fresh maker, the other order
    for i in first:
        np.testing.assert_array_equal(first[i], again[i])
    shifted = mixes(1)
    assert all(not np.allclose(first[i], shifted[i]) for i in first)
    assert not np.allclose(first[0], mixes(0, c=other)[0])


def test_checks_refuse_what_cannot_run(corpus, tmp_path):
    cfg = EvalConfig(manifest_dir=corpus, out_dir=str(tmp_path), interference=["speech:0"])
    with pytest.raises(ValueError, match="needs the task speaker_ver"):
        itf.check(cfg, ["speaker_id"])
    itf.check(cfg, ["speaker_ver", "separation"])
    cfg.splits = dict(cfg.splits, speaker_ver=("train", "", "two"))
    with pytest.raises(ValueError, match=r"at least 3 speakers in .*two\.spk .* found 2: a, b"):
        itf.check(cfg, ["speaker_ver"])
    cfg = EvalConfig(manifest_dir=corpus, out_dir=str(tmp_path), interference=["noise:5"],
                     noise_manifest=str(tmp_path / "none.tsv"))
    with pytest.raises(FileNotFoundError, match=r"none\.tsv not found; pass --noise-manifest"):
        itf.check(cfg, ["speaker_ver"])
    assert itf.report_tasks(["speaker_id", "speaker_ver", "separation"], EvalConfig(
        manifest_dir=corpus, out_dir="x", interference=["speech:0", "noise:5"])) == [
        "speaker_id", "speaker_ver", "speaker_ver@speech:0", "speaker_ver@noise:5", "separation@speech:0",
        "separation@noise:5"]


def test_interfered_trials_reuse_the_clean_trials_and_weights(corpus, tmp_path):
    cfg = EvalConfig(manifest_dir=corpus, out_dir=str(tmp_path), tasks=["speaker_ver"])
    data = load_task("speaker_ver", cfg)
    store = FeatureStore(LogMelUpstream())
    clean = {}
    for seed in (0, 1):
        row = run_task(data, store, ProbeConfig(), seed, sv_weights=torch.ones(1))
        clean[seed] = dict(row, upstream="logmel", upstream_kind="logmel", task="speaker_ver", seed=seed,
                           value=row.pop("test"))
    assert clean[0]["value"] == 0.0  # tone 'speakers': clean trials are trivial
    noise = os.path.join(corpus, "noise.tsv")
    strong = itf.interfered_verification(store, data, clean, itf.parse_conditions("speech:-10")[0], 0, noise)
    assert [r["task"] for r in strong] == ["speaker_ver@speech:-10"] * 2 and [r["seed"] for r in strong] == [0, 1]
    assert strong[0]["layer_weights"] == clean[0]["layer_weights"]
    info = strong[0]["interference"]
    assert info["mixtures"] == len({(a, b) for _, a, b in data.extra["trials"]})
    assert all(abs(x + 10) < 0.1 for x in info["achieved_sir_db"])
    assert strong[0]["value"] > 0.2  # the other speaker dominates the test side: the mixtures are scored
    again = itf.interfered_verification(store, data, clean, itf.parse_conditions("speech:-10")[0], 0, noise)
    assert [r["value"] for r in again] == [r["value"] for r in strong]


class _Model(torch.nn.Module):
    """A stand-in separation head: a 9-tap moving average of the mixture (any function of the mixture)."""

    has_separation_head = True

    def separate(self, x):
        return torch.nn.functional.avg_pool1d(x.unsqueeze(1), 9, stride=1, padding=4,
                                              count_include_pad=False).squeeze(1)


def naive_si_snr(est, ref):
    """SI-SNR (dB) written out in numpy, independently of the plugin's torch version."""
    est = est.astype(np.float64) - est.mean()
    ref = ref.astype(np.float64) - ref.mean()
    target = np.dot(est, ref) / np.dot(ref, ref) * ref
    return 10 * np.log10(np.sum(target ** 2) / np.sum((est - target) ** 2))


def test_si_snr_improvement_matches_a_naive_si_snr(corpus):
    split = Split(corpus, "test")
    cond = itf.parse_conditions("both:0:5")[0]
    noise = os.path.join(corpus, "noise.tsv")
    up = SimpleNamespace(model=_Model(), normalize=False, device=torch.device("cpu"), name="fake")
    q = itf.separation_quality(up, split, cond, seed=4, noise=noise)
    maker = itf.MixtureMaker(split, cond, 4, noise)
    gains, ins = [], []
    for i, u in enumerate(split.utt_ids()):
        clean, mixture, _ = maker.mix(i, u)
        kernel = np.convolve(np.ones(len(mixture)), np.ones(9), mode="same")
        est = np.convolve(mixture.astype(np.float64), np.ones(9), mode="same") / kernel
        ins.append(naive_si_snr(mixture, clean))
        gains.append(naive_si_snr(est, clean) - ins[-1])
    assert q["utterances"] == len(split)
    assert q["si_snri"] == pytest.approx(np.mean(gains), abs=1e-3)
    assert q["si_snr_in"] == pytest.approx(np.mean(ins), abs=1e-3)
    assert abs(q["si_snri"]) > 0.01  # the stand-in does change the SI-SNR: the check above is not 0 == 0

    class Identity(_Model):
        def separate(self, x):
            return x.clone()

    unchanged = itf.separation_quality(SimpleNamespace(model=Identity(), normalize=False, device="cpu",
                                                       name="identity"), split, cond, seed=4, noise=noise)
    assert abs(unchanged["si_snri"]) < 1e-4  # the unprocessed mixture scores 0 dB


def test_only_models_with_a_separation_head_are_scored(tiny, tmp_path):
    from omegaconf import OmegaConf

    from fairseq_plugins.models.csc import CscConfig, CscModel
    from fairseq_plugins.tasks.multiview_audio_pretraining import (
        MultiviewAudioPretrainingConfig,
        MultiviewAudioPretrainingTask,
    )

    task = MultiviewAudioPretrainingTask.setup_task(OmegaConf.structured(MultiviewAudioPretrainingConfig(
        data=str(tmp_path), seed=1, tpu=False, train_subset="train", augmentations=[], num_views=3, aligned_views=True,
        clean_target=True)))
    model = CscModel.build_model(OmegaConf.structured(CscConfig(**tiny.encoder, sep_n_fft=256,
                                                                sep_hop_length=80)), task).eval()
    x = torch.randn(2, 6400) * 0.1
    with torch.no_grad():
        est = model.separate(x)
        torch.testing.assert_close(est, model(x, num_views=1, csc=False)["est"])
    assert est.shape == x.shape and itf.separator(SimpleNamespace(model=model)) is not None
    assert itf.separator(LogMelUpstream()) is None
    assert itf.separator(SimpleNamespace(model=torch.nn.Linear(2, 2))) is None
    model.remove_pretraining_modules()
    assert itf.separator(SimpleNamespace(model=model)) is None
    with pytest.raises(ValueError, match="no separation head"):
        model.separate(x)
