"""Procedural, seeded background noise for the mini corpus and for noise augmentation: white, pink (1/f),
brown (1/f^2), speech-like babble (several synthetic talkers: pulse-train voicing through per-syllable formant
resonators, with syllabic envelopes and fricative bursts), mains hum (50/60 Hz and harmonics), clicks (sparse
decaying bursts) and band-limited noise. :func:`make_noise` returns float32 mono audio whose RMS is
:data:`TARGET_RMS` (lowered where the peak would pass :data:`MAX_PEAK`); all randomness comes from the
``rng`` argument, so the same generator state gives the same samples.
"""
import logging
from typing import Union

import numpy as np
from scipy import signal

logger = logging.getLogger(__name__)

NOISE_KINDS = ("white", "pink", "brown", "babble", "hum", "clicks", "bandlimited")
TARGET_RMS = 0.1  # about -20 dBFS
MAX_PEAK = 0.99

RngLike = Union[np.random.Generator, int, None]


def _as_rng(rng: RngLike) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean()
    rms = float(np.sqrt(np.mean(x ** 2)))
    if not np.isfinite(rms) or rms <= 0:
        raise ValueError("generated noise is silent or not finite")
    x = x * (TARGET_RMS / rms)
    peak = float(np.max(np.abs(x)))
    if peak > MAX_PEAK:
        x = x * (MAX_PEAK / peak)
    return x.astype(np.float32)


def _coloured(n: int, rng: np.random.Generator, sr: int, exponent: float, f_min: float = 20.0) -> np.ndarray:
    """Gaussian noise with power spectrum ~ 1/f**exponent above ``f_min`` (nothing below)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / sr)
    gain = np.zeros_like(f)
    keep = f >= f_min
    gain[keep] = f[keep] ** (-exponent / 2.0)
    return np.fft.irfft(spec * gain, n)


def _resonator(freq: float, bw: float, sr: int):
    """``(b, a)`` of a two-pole resonator at ``freq`` Hz with bandwidth ``bw`` Hz."""
    r = np.exp(-np.pi * bw / sr)
    theta = 2 * np.pi * freq / sr
    a = [1.0, -2 * r * np.cos(theta), r * r]
    b = [1.0 - r]
    return b, a


def _talker(n: int, rng: np.random.Generator, sr: int) -> np.ndarray:
    """One synthetic talker: syllable-sized voiced (or fricative) segments with formants, overlap-added."""
    out = np.zeros(n)
    f0 = rng.uniform(90, 240)
    t = int(rng.integers(0, int(0.2 * sr)))
    while t < n:
        length = int(rng.uniform(0.12, 0.32) * sr)
        if rng.random() < 0.15:  # a pause between "words"
            t += length
            continue
        seg_n = min(length, n - t)
        if seg_n < 16:
            break
        if rng.random() < 0.2:  # fricative: high-passed noise
            sos = signal.butter(4, rng.uniform(2500, 5000), btype="highpass", fs=sr, output="sos")
            seg = signal.sosfilt(sos, rng.standard_normal(seg_n)) * 0.3
        else:  # voiced: pulse train with a slowly moving f0 through two formant resonators
            pitch = f0 * (1 + 0.08 * np.sin(2 * np.pi * rng.uniform(1, 4) * np.arange(seg_n) / sr
                                            + rng.uniform(0, 2 * np.pi)))
            phase = np.cumsum(pitch / sr)
            pulses = np.diff(np.floor(phase), prepend=np.floor(phase[0])) + 0.01 * rng.standard_normal(seg_n)
            # glottal spectral tilt (about -12 dB/octave) before the vocal-tract resonances
            source = signal.lfilter([1.0], [1.0, -1.9, 0.9025], pulses)
            seg = np.zeros(seg_n)
            formants = ((300, 900, 80, 1.0), (900, 2600, 120, 0.5), (2400, 3500, 200, 0.25))
            for lo, hi, bw, amp in formants:
                b, a = _resonator(rng.uniform(lo, hi), bw, sr)
                y = signal.lfilter(b, a, source)
                seg += amp * y / (np.sqrt(np.mean(y ** 2)) + 1e-9)
        seg = seg * np.hanning(seg_n)
        out[t:t + seg_n] += seg / (np.sqrt(np.mean(seg ** 2)) + 1e-9)
        t += int(length * rng.uniform(0.6, 1.0))
    return out


def _babble(n: int, rng: np.random.Generator, sr: int) -> np.ndarray:
    talkers = int(rng.integers(4, 8))
    x = np.zeros(n)
    for _ in range(talkers):
        x += _talker(n, rng, sr) * rng.uniform(0.5, 1.0)
    return x + 1e-3 * rng.standard_normal(n)


def _hum(n: int, rng: np.random.Generator, sr: int) -> np.ndarray:
    mains = float(rng.choice([50.0, 60.0])) + rng.uniform(-0.3, 0.3)
    decay = rng.uniform(0.5, 1.5)
    t = np.arange(n) / sr
    x = np.zeros(n)
    for h in range(1, int(min(12, (sr / 2 - 100) // mains)) + 1):
        # odd harmonics dominate transformer buzz
        amp = h ** (-decay) * (1.0 if h % 2 else rng.uniform(0.2, 0.6))
        x += amp * np.sin(2 * np.pi * mains * h * t + rng.uniform(0, 2 * np.pi))
    return x + 10 ** (-40 / 20) * rng.standard_normal(n)


def _clicks(n: int, rng: np.random.Generator, sr: int) -> np.ndarray:
    rate = rng.uniform(3, 30)  # clicks per second
    count = max(1, int(rng.poisson(rate * n / sr)))
    x = 10 ** (-50 / 20) * rng.standard_normal(n)
    for pos in np.sort(rng.integers(0, n, size=count)):
        length = int(rng.uniform(0.001, 0.006) * sr)
        seg_n = min(length, n - pos)
        env = np.exp(-np.arange(seg_n) / max(1.0, seg_n / 4.0))
        x[pos:pos + seg_n] += rng.uniform(0.2, 1.0) * rng.choice([-1.0, 1.0]) * env * (
            1 + 0.5 * rng.standard_normal(seg_n))
    return x


def _bandlimited(n: int, rng: np.random.Generator, sr: int) -> np.ndarray:
    centre = float(np.exp(rng.uniform(np.log(200.0), np.log(min(6000.0, 0.35 * sr)))))
    octaves = rng.uniform(1 / 3, 2.0)
    lo = centre * 2 ** (-octaves / 2)
    hi = min(centre * 2 ** (octaves / 2), 0.45 * sr)
    sos = signal.butter(4, [lo, hi], btype="bandpass", fs=sr, output="sos")
    return signal.sosfilt(sos, rng.standard_normal(n + 2048))[2048:]  # drop the filter's start-up


def make_noise(kind: str, num_samples: int, rng: RngLike = None, sr: int = 16000) -> np.ndarray:
    """``num_samples`` of noise of ``kind`` (one of :data:`NOISE_KINDS`) at ``sr`` Hz as float32 with RMS
    :data:`TARGET_RMS` (peak at most :data:`MAX_PEAK`); ``rng`` is a numpy Generator or a seed."""
    if kind not in NOISE_KINDS:
        raise ValueError(f"unknown noise kind {kind!r}; choose one of {', '.join(NOISE_KINDS)}")
    n = int(num_samples)
    if n < 64:
        raise ValueError(f"num_samples={num_samples} is too short for noise (need at least 64)")
    if sr < 8000:
        raise ValueError(f"sr={sr} Hz is too low (need at least 8000)")
    g = _as_rng(rng)
    if kind == "white":
        x = g.standard_normal(n)
    elif kind == "pink":
        x = _coloured(n, g, sr, 1.0)
    elif kind == "brown":
        x = _coloured(n, g, sr, 2.0)
    elif kind == "babble":
        x = _babble(n, g, sr)
    elif kind == "hum":
        x = _hum(n, g, sr)
    elif kind == "clicks":
        x = _clicks(n, g, sr)
    else:
        x = _bandlimited(n, g, sr)
    return _normalise(x)
