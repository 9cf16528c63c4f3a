"""CSC's on-the-fly mixtures: the ``interferer(...)`` augmentation spec and the per-view conditions of the
``multiview_audio_pretraining`` task (K conditions per target, the clean target travelling with the batch)."""
import os

import numpy as np
import pytest
import soundfile as sf
from omegaconf import OmegaConf

from fairseq_plugins.data.augment import AugmentationChain, Interferer, seeded_rng
from fairseq_plugins.data.manifest_io import write_lines, write_manifest
from fairseq_plugins.tasks.multiview_audio_pretraining import (
    MultiviewAudioPretrainingConfig,
    MultiviewAudioPretrainingTask,
)

SR = 16000
SPEAKERS = ["a", "a", "b", "b", "c", "c"]
CONDITIONS = ["interferer(kind=speech)", "interferer(kind=noise)", "interferer(kind=both)"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Six files of three 'speakers' (each speaker a different tone frequency, so an interferer's speaker can be
    read back from its spectrum), train/valid manifests with speaker side files, and a copy without one."""
    d = tmp_path_factory.mktemp("csc_mix")
    rows = []
    freqs = {"a": 200.0, "b": 700.0, "c": 1900.0}
    rng = np.random.default_rng(0)
    for i, s in enumerate(SPEAKERS):
        n = 16000 + 1000 * i
        t = np.arange(n) / SR
        x = 0.2 * np.sin(2 * np.pi * freqs[s] * t) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t))
        x += 0.001 * rng.standard_normal(n)
        sf.write(d / f"u{i}.wav", x.astype(np.float32), SR, subtype="FLOAT")
        rows.append((f"u{i}.wav", n))
    for split in ("train", "valid", "nospk"):
        write_manifest(str(d / f"{split}.tsv"), str(d), rows)
    for split in ("train", "valid"):
        write_lines(str(d / f"{split}.spk"), SPEAKERS)
    return str(d)


def target(n=12000, seed=5):
    r = np.random.default_rng(seed)
    return (0.1 * r.standard_normal(n)).astype(np.float32)


def db(a, b):
    return 10 * np.log10(np.sum(np.square(a, dtype=np.float64)) / np.sum(np.square(b, dtype=np.float64)))


@pytest.mark.parametrize("kind", ["speech", "noise", "both"])
def test_requested_sir_and_snr_within_0_1_db(corpus, kind):
    aug = Interferer(SR, speech_manifest=os.path.join(corpus, "train.tsv"), kind=kind, sir="-5:5", snr="-5:20",
                     cover="0.3:1")
    wav = target()
    for trial in range(20):
        mix, info = aug.mix(wav, seeded_rng(1, trial), speaker="a")
        assert mix.dtype == np.float32 and mix.shape == wav.shape
        np.testing.assert_allclose(mix, wav + info["speech"] + info["noise"], atol=1e-6)
        if kind in ("speech", "both"):
            start, m = info["speech_span"]
            assert -5 <= info["sir"] <= 5 and 0.3 * len(wav) - 1 <= m <= len(wav)
            assert not info["speech"][:start].any() and not info["speech"][start + m:].any()
            assert abs(db(wav[start:start + m], info["speech"][start:start + m]) - info["sir"]) < 0.1
        if kind in ("noise", "both"):
            start, m = info["noise_span"]
            assert -5 <= info["snr"] <= 20
            assert abs(db(wav[start:start + m], info["noise"][start:start + m]) - info["snr"]) < 0.1
        if kind == "speech":  # the float32 mixture itself: its residual is the interferer at the asked SIR
            start, m = info["speech_span"]
            resid = mix.astype(np.float64) - wav
            assert abs(db(wav[start:start + m], resid[start:start + m]) - info["sir"]) < 0.1


def test_fixed_sir_is_hit(corpus):
    aug = Interferer(SR, speech_manifest=os.path.join(corpus, "train.tsv"), kind="speech", sir="3", cover="1")
    wav = target()
    mix, info = aug.mix(wav, seeded_rng(9), speaker="b")
    assert info["speech_span"] == (0, len(wav))
    assert abs(db(wav, mix.astype(np.float64) - wav) - 3.0) < 0.1


def test_interferer_is_never_the_targets_speaker(corpus):
    aug = Interferer(SR, speech_manifest=os.path.join(corpus, "train.tsv"), kind="speech")
    freqs = {"a": 200.0, "b": 700.0, "c": 1900.0}
    seen = set()
    for trial in range(60):
        spk = SPEAKERS[trial % len(SPEAKERS)]
        _, info = aug.mix(target(), seeded_rng(2, trial), speaker=spk)
        assert info["interferer_speaker"] != spk
        # and the audio really is the other speaker's: its dominant frequency is that speaker's tone
        x = info["speech"]
        spec = np.abs(np.fft.rfft(x))
        peak = np.fft.rfftfreq(len(x), 1 / SR)[int(np.argmax(spec))]
        assert abs(peak - freqs[info["interferer_speaker"]]) < 20
        assert abs(peak - freqs[spk]) > 100
        seen.add((spk, info["interferer_speaker"]))
    assert len(seen) == 6  # every ordered pair of different speakers occurs


def test_same_seed_same_mixture(corpus):
    chain = AugmentationChain.from_specs(["interferer"], SR, speech_manifest=os.path.join(corpus, "train.tsv"))
    wav = target()
    a = chain.apply(wav, seeded_rng(1, 2, 3, 0), speaker="c")[0]
    b = chain.apply(wav, seeded_rng(1, 2, 3, 0), speaker="c")[0]
    c = chain.apply(wav, seeded_rng(1, 2, 3, 1), speaker="c")[0]
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_missing_speaker_file_is_refused_naming_it(corpus):
    with pytest.raises(FileNotFoundError, match=r"nospk\.spk is missing"):
        Interferer(SR, speech_manifest=os.path.join(corpus, "nospk.tsv"), kind="speech")
    task = make_task(corpus, train_subset="nospk")
    with pytest.raises(FileNotFoundError, match=r"nospk\.spk"):
        task.load_dataset("nospk")


def test_speaker_needed_and_bad_kind():
    aug = Interferer(SR, kind="noise")  # noise alone needs no speech manifest or speaker
    assert aug.mix(target(), seeded_rng(0))[1]["kind"] == "noise"
    with pytest.raises(ValueError, match="speech manifest"):
        Interferer(SR, kind="speech").mix(target(), seeded_rng(0), speaker="a")
    with pytest.raises(ValueError, match="unknown kind"):
        Interferer(SR, kind="music")
    with pytest.raises(ValueError, match=r"cover"):
        Interferer(SR, kind="noise", cover="0:1")


def make_task(data, **overrides):
    cfg = dict(data=data, seed=3, tpu=False, train_subset="train", max_sample_size=12000, num_views=3,
               aligned_views=True, clean_target=True, augmentations=[], view_augmentations=list(CONDITIONS))
    cfg.update(overrides)
    return MultiviewAudioPretrainingTask.setup_task(OmegaConf.structured(MultiviewAudioPretrainingConfig(**cfg)))


def test_task_makes_k_conditions_with_clean_target(corpus):
    task = make_task(corpus)
    task.load_dataset("train")
    ds = task.dataset("train")
    items = [ds[i] for i in range(3)]
    batch = ds.collater(items)
    K, B = 3, 3
    src, clean = batch["net_input"]["source"], batch["net_input"]["target_source"]
    assert src.shape == clean.shape and src.shape[0] == K * B
    assert batch["views"]["augmentations"][0] == [["interferer"]] * B
    assert batch["side_labels"]["spk"] == SPEAKERS[:3]
    for k in range(K):
        for b in range(B):
            assert not np.allclose(src[k * B + b].numpy(), clean[k * B + b].numpy())
            np.testing.assert_array_equal(clean[k * B + b].numpy(), clean[b].numpy())
    # condition k of item i is keyed by (seed, epoch, index, k): a second dataset gives the same mixtures
    again = make_task(corpus)
    again.load_dataset("train")
    np.testing.assert_array_equal(again.dataset("train")[1]["views"][2].numpy(), items[1]["views"][2].numpy())
    ds.set_epoch(2)
    assert not np.allclose(ds[1]["views"][2].numpy(), items[1]["views"][2].numpy())


class _Counting:
    """A numpy Generator that counts the calls of each of its methods."""

    def __init__(self, rng):
        self.rng, self.calls = rng, {"random": 0}

    def __getattr__(self, name):
        method = getattr(self.rng, name)

        def counted(*args, **kwargs):
            self.calls[name] = self.calls.get(name, 0) + 1
            return method(*args, **kwargs)

        return counted


def test_reverb_of_the_interferer_is_optional_seeded_and_keeps_the_ratio(corpus):
    speech = os.path.join(corpus, "train.tsv")
    wav = target()
    plain = Interferer(SR, speech_manifest=speech, kind="speech", sir="-5:5")
    dry = Interferer(SR, speech_manifest=speech, kind="speech", sir="-5:5", reverb="0")
    wet = Interferer(SR, speech_manifest=speech, kind="speech", sir="-5:5", reverb="1", rt60="0.4", drr="0")
    for trial in range(5):
        a, ia = plain.mix(wav, seeded_rng(4, trial), speaker="a")
        b, _ = dry.mix(wav, seeded_rng(4, trial), speaker="a")
        np.testing.assert_array_equal(a, b)
        counting = _Counting(seeded_rng(4, trial))  # reverb=0 draws nothing: mixtures of earlier specs stay
        np.testing.assert_array_equal(dry.mix(wav, counting, speaker="a")[0], b)
        assert counting.calls["random"] == 0 and sum(counting.calls.values()) > 0
        c, ic = wet.mix(wav, seeded_rng(4, trial), speaker="a")
        again, _ = wet.mix(wav, seeded_rng(4, trial), speaker="a")
        np.testing.assert_array_equal(c, again)
        assert (ic["interferer_file"], ic["speech_span"], ic["sir"]) == (ia["interferer_file"], ia["speech_span"],
                                                                         ia["sir"])
        start, m = ic["speech_span"]
        assert abs(db(wav[start:start + m], ic["speech"][start:start + m]) - ic["sir"]) < 0.1
        x, y = ia["speech"][start:start + m], ic["speech"][start:start + m]
        assert abs(np.dot(x, y)) / np.sqrt(np.dot(x, x) * np.dot(y, y)) < 0.99  # a reverberant copy, not a scaled one
    noisy = Interferer(SR, kind="noise", snr="5", reverb="1")
    _, info = noisy.mix(wav, seeded_rng(0), speaker="a")
    start, m = info["noise_span"]
    assert abs(db(wav[start:start + m], info["noise"][start:start + m]) - 5.0) < 0.1
    with pytest.raises(ValueError, match="reverb"):
        Interferer(SR, kind="noise", reverb="1.5")
    with pytest.raises(ValueError, match="rt60"):
        Interferer(SR, kind="noise", reverb="1", rt60="0")
    chain = AugmentationChain.from_specs(["interferer(kind=noise,reverb=0.5,rt60=0.2:0.6)"], SR)
    assert "reverb=0.5" in chain.specs()[0]
