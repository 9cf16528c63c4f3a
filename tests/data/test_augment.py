"""Tests for fairseq_plugins.data.augment: seeded determinism, alignment, what each augmentation does, and the
spec parser / chain."""
import numpy as np
import pytest
import soundfile as sf

from fairseq_plugins.data.augment import (
    AUGMENTATIONS,
    AugmentationChain,
    Value,
    parse_spec,
    seeded_rng,
    split_specs,
    synthetic_rir,
)
from manifests.manifest_io import write_manifest

SR = 16000


def _speech_like(seconds=1.0, seed=0):
    """Harmonic tone bursts with silences: alignment and content are easy to check."""
    t = np.arange(int(seconds * SR)) / SR
    x = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((150, 300, 450, 900), start=1))
    env = (np.sin(2 * np.pi * 3 * t) > 0).astype(float)
    rng = np.random.default_rng(seed)
    return (0.3 * x * env + 0.001 * rng.standard_normal(len(t))).astype(np.float32)


def _chain(spec, **context):
    if spec == "interferer":  # the generic checks: its noise condition needs no speech manifest or speaker
        spec = "interferer(kind=noise)"  # (interfering speech is tested in tests/csc/test_mixtures.py)
    return AugmentationChain.from_specs([spec], SR, **context)


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_deterministic_for_a_seed_and_different_across_seeds(name):
    wav = _speech_like()
    chain = _chain(name)
    a = chain(wav, seeded_rng(1, 1, 7, 0))
    b = chain(wav, seeded_rng(1, 1, 7, 0))
    c = chain(wav, seeded_rng(1, 1, 7, 1))
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert a.shape != c.shape or not np.array_equal(a, c), f"{name}: another seed gave the same output"
    assert not np.array_equal(a, wav) or a.shape != wav.shape, f"{name} did nothing"


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_alignment_flag_matches_length(name):
    wav = _speech_like()
    chain = _chain(name)
    lengths = {len(chain(wav, seeded_rng(3, i))) for i in range(5)}
    if AUGMENTATIONS[name].keeps_alignment:
        assert lengths == {len(wav)}
    else:
        assert lengths != {len(wav)}, f"{name} claims to break alignment but never changed the length"
    assert chain.keeps_alignment == AUGMENTATIONS[name].keeps_alignment


def test_reverb_keeps_the_direct_path_at_lag_zero():
    wav = np.zeros(SR, dtype=np.float32)
    wav[4000] = 1.0
    for i in range(5):
        y = _chain("reverb(rt60=0.3:0.9,drr=0:3)")(wav, seeded_rng(i))
        assert int(np.argmax(np.abs(y))) == 4000
        assert np.abs(y[:4000]).max() < 1e-6  # causal: nothing before the click (up to FFT round-off)
        assert np.abs(y[4001:]).sum() > 0.1 * np.abs(y[4000])  # and a tail after it


def test_synthetic_rir_decay_and_drr():
    h = synthetic_rir(seeded_rng(0), SR, rt60=0.5, drr_db=6.0)
    assert h[0] == 1.0 and len(h) == int(0.5 * SR)
    assert np.sum(h[1:] ** 2) == pytest.approx(10 ** (-6 / 10), rel=1e-6)
    first, last = np.sum(h[1:SR // 20] ** 2), np.sum(h[-SR // 20:] ** 2)
    assert last < 1e-3 * first  # ~-60 dB by rt60


def test_noise_hits_the_snr():
    wav = _speech_like()
    y = _chain("noise(snr=10,kinds=pink)")(wav, seeded_rng(0))
    snr = 10 * np.log10(np.mean(wav.astype(np.float64) ** 2) / np.mean((y - wav).astype(np.float64) ** 2))
    assert snr == pytest.approx(10.0, abs=0.05)


def test_noise_from_a_manifest(tmp_path):
    noise = (0.1 * np.sign(np.sin(np.arange(3 * SR) * 0.05))).astype(np.float32)  # a recognisable square wave
    sf.write(tmp_path / "n.wav", noise, SR, subtype="FLOAT")
    write_manifest(str(tmp_path / "noise.tsv"), str(tmp_path), [("n.wav", len(noise))])
    wav = _speech_like()
    y = _chain("noise(snr=0)", noise_manifest=str(tmp_path / "noise.tsv"))(wav, seeded_rng(0))
    added = (y - wav) / np.max(np.abs(y - wav))
    assert set(np.round(np.unique(np.abs(added)), 4)) <= {0.0, 1.0}  # a scaled segment of the square wave


def test_band_reject_removes_the_band_and_keeps_the_rest():
    t = np.arange(SR) / SR
    inside, outside = np.sin(2 * np.pi * 1000 * t), np.sin(2 * np.pi * 4000 * t)
    chain = _chain("bandreject(freq=1000,octaves=1,order=2)")
    y_in = chain(inside.astype(np.float32), seeded_rng(0))
    y_out = chain(outside.astype(np.float32), seeded_rng(0))
    mid = slice(SR // 4, 3 * SR // 4)
    assert np.std(y_in[mid]) < 0.05 * np.std(inside[mid])  # < -26 dB
    assert np.std(y_out[mid]) > 0.9 * np.std(outside[mid])


def test_pitch_shift_moves_the_frequency_not_the_timing():
    t = np.arange(SR) / SR
    tone = np.where((t > 0.4) & (t < 0.7), np.sin(2 * np.pi * 440 * t), 0.0).astype(np.float32)
    y = _chain("pitch(semitones=12)")(tone, seeded_rng(0))
    seg = y[int(0.45 * SR):int(0.65 * SR)]
    freq = np.argmax(np.abs(np.fft.rfft(seg * np.hanning(len(seg))))) * SR / len(seg)
    assert freq == pytest.approx(880, rel=0.03)
    energy = np.convolve(y ** 2, np.ones(160) / 160, mode="same")
    onset = np.argmax(energy > 0.5 * energy.max()) / SR
    assert onset == pytest.approx(0.4, abs=0.02)


def test_speed_changes_the_length_by_the_factor():
    wav = _speech_like()
    assert len(_chain("speed(factor=1.25)")(wav, seeded_rng(0))) == pytest.approx(len(wav) / 1.25, abs=2)
    assert len(_chain("speed(factor=0.8)")(wav, seeded_rng(0))) == pytest.approx(len(wav) / 0.8, abs=2)


def test_timedrop_gain_crop():
    wav = np.ones(SR, dtype=np.float32)
    y = _chain("timedrop(count=2,width_ms=50)")(wav, seeded_rng(0))
    assert 800 <= np.sum(y == 0) <= 1600 and np.all((y == 0) | (y == 1))
    assert _chain("gain(db=6)")(wav, seeded_rng(0))[0] == pytest.approx(10 ** (6 / 20))
    crop = _chain("crop(fraction=0.5,min_seconds=0.1)")(np.arange(SR, dtype=np.float32), seeded_rng(0))
    assert len(crop) == SR // 2 and np.all(np.diff(crop) == 1)  # contiguous


def test_each_step_has_its_own_stream():
    """A step's randomness does not depend on whether earlier steps ran: with the gain step on, the noise
    step draws the same noise and SNR, so the output is exactly the gain times the output with gain off."""
    wav = _speech_like()
    on, ran_on = AugmentationChain.from_specs(["gain(db=6,p=1)", "noise"], SR).apply(wav, seeded_rng(5))
    off, ran_off = AugmentationChain.from_specs(["gain(db=6,p=0)", "noise"], SR).apply(wav, seeded_rng(5))
    assert ran_on == ["gain", "noise"] and ran_off == ["noise"]
    np.testing.assert_allclose(on, 10 ** (6 / 20) * off, rtol=1e-5, atol=1e-6)


def test_probability_zero_and_one():
    wav = _speech_like()
    assert np.array_equal(_chain("noise(p=0)")(wav, seeded_rng(0)), wav)
    chain = AugmentationChain.from_specs(["gain(p=0.5)"], SR)
    runs = [chain.apply(wav, seeded_rng(i))[1] for i in range(200)]
    assert 70 < sum(bool(r) for r in runs) < 130


def test_specs_parse_and_errors():
    assert split_specs(["noise(snr=5:20,p=0.8),reverb", "pitch(semitones=-2|2)"]) == [
        "noise(snr=5:20,p=0.8)", "reverb", "pitch(semitones=-2|2)"]
    assert parse_spec("speed(factor=0.9|1.0|1.1)") == ("speed", {"factor": "0.9|1.0|1.1"})
    chain = AugmentationChain.from_specs(["noise(snr=5:20,p=0.8),speed(factor=0.9|1.1)", "gain"], SR)
    assert [a.name for a, _ in chain.steps] == ["noise", "speed", "gain"]
    assert not chain.keeps_alignment and chain.non_aligned == ["speed"]
    assert chain.specs()[1] == "speed(factor=0.9|1.1,p=1)"
    assert AugmentationChain.from_specs(chain.specs(), SR).specs() == chain.specs()  # round trip
    with pytest.raises(ValueError, match="unknown augmentation 'echo'"):
        AugmentationChain.from_specs(["echo(p=1)"], SR)
    with pytest.raises(ValueError, match="noise: unknown parameter\\(s\\) snrr"):
        AugmentationChain.from_specs(["noise(snrr=3)"], SR)
    with pytest.raises(ValueError, match="p=1.5 must be in"):
        AugmentationChain.from_specs(["gain(p=1.5)"], SR)
    with pytest.raises(ValueError, match="unbalanced"):
        split_specs(["noise(snr=5"])
    with pytest.raises(ValueError, match="range 3.0:1.0 is empty"):
        Value.parse("3:1")
    with pytest.raises(ValueError, match="unknown kinds"):
        AugmentationChain.from_specs(["noise(kinds=white+purple)"], SR)


def test_value_sampling():
    rng = seeded_rng(0)
    assert Value.parse("4").sample(rng) == 4.0
    assert {Value.parse("0.9|1.1").sample(rng) for _ in range(50)} == {0.9, 1.1}
    draws = [Value.parse("100:10000").sample_log(rng) for _ in range(2000)]
    assert 100 <= min(draws) and max(draws) <= 10000
    assert np.median(draws) == pytest.approx(1000, rel=0.15)  # log-uniform: median at the geometric mean
    with pytest.raises(ValueError, match="non-negative"):
        seeded_rng(1, -1)
