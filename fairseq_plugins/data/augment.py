"""Seeded waveform augmentations for multi-view self-supervised pre-training.

Every augmentation is a small class with one interface, ``aug(wav, rng) -> wav``: ``wav`` is a 1-D float32
numpy array at the augmentation's sample rate and ``rng`` a ``numpy.random.Generator`` that supplies all of
its randomness (the same generator state gives the same output, in any process). The class attribute
``keeps_alignment`` says whether sample ``i`` of the output still belongs to sample ``i`` of the input
(same length, no time warping): additive noise, reverberation (direct path kept at lag 0), pitch shift
(length kept), band-reject (zero-phase), time-drop and gain do; speed change and random crop do not. An
:class:`AugmentationChain` applies a list of them, each with its own probability ``p``. Written for the
positive-sample contrast + masked reconstruction method (Zhang, Liu, Niu, Chen, Qu; Journal on Communications
2022, 43(7):163-171) and used by every method through the ``multiview_audio_pretraining`` task.

Specs are short strings, one augmentation each (a config holds a ``List[str]``; one string may also hold
several, separated by commas outside parentheses): ``name(key=value,...)``. A value is a number ``5``, a
uniform range ``5:20``, a choice ``0.9|1.0|1.1``, or for ``kinds`` names joined by ``+``. Every augmentation
takes ``p`` (probability of applying it, default 1). Example::

    noise(snr=5:20,p=0.8)  reverb(rt60=0.2:0.8,p=0.3)  pitch(semitones=-2:2,p=0.5)  speed(factor=0.9|1.0|1.1)

``interferer(kind=speech+noise+both,sir=-5:5,snr=-5:20,cover=0.5:1)`` mixes in another speaker of the
training manifest (speaker side file ``train.spk``) and/or noise (CSC's mixtures, :class:`Interferer`);
``reverb=0.3`` reverberates 30 % of the interferers with a synthetic RIR (``rt60``, ``drr`` as ``reverb(...)``).

``python -m fairseq_plugins.data.augment --bench`` measures each augmentation's cost per second of audio.
Nothing here imports fairseq, so the module is safe in data-loader workers.
"""
import argparse
import logging
import math
import os
import re
import sys
import time
from typing import ClassVar, Dict, List, Optional, Sequence, Tuple, Type

import numpy as np

logger = logging.getLogger(__name__)

MAX_SEED = 2 ** 63 - 1


def seeded_rng(*keys: int) -> np.random.Generator:
    """A generator seeded by a tuple of non-negative ints, e.g. ``(seed, epoch, index, view)``.

    numpy hashes the whole tuple (SeedSequence), so neighbouring keys give independent streams and the same
    keys give the same stream in every process (data-loader workers included).
    """
    ints = [int(k) for k in keys]
    if any(k < 0 for k in ints):
        raise ValueError(f"seed keys must be non-negative integers, got {keys}")
    return np.random.default_rng(ints)


class Value:
    """A parameter drawn per call: a constant ``5``, a uniform range ``lo:hi`` or a choice ``a|b|c``."""

    def __init__(self, lo: float, hi: Optional[float] = None, choices: Optional[Sequence[float]] = None):
        self.lo = float(lo)
        self.hi = float(lo if hi is None else hi)
        self.choices = tuple(float(c) for c in choices) if choices else None
        if self.hi < self.lo:
            raise ValueError(f"range {self.lo}:{self.hi} is empty (low > high)")

    @classmethod
    def parse(cls, text: str, name: str = "value") -> "Value":
        text = str(text).strip()
        try:
            if "|" in text:
                return cls(0.0, choices=[float(t) for t in text.split("|")])
            if ":" in text:
                lo, hi = text.split(":")
                return cls(float(lo), float(hi))
            return cls(float(text))
        except ValueError as e:
            raise ValueError(
                f"{name}={text!r}: expected a number, a range lo:hi or a choice a|b|c ({e})") from None

    @property
    def bounds(self) -> Tuple[float, float]:
        return (min(self.choices), max(self.choices)) if self.choices else (self.lo, self.hi)

    def sample(self, rng: np.random.Generator) -> float:
        if self.choices:
            return self.choices[int(rng.integers(len(self.choices)))]
        if self.hi == self.lo:
            return self.lo
        return float(rng.uniform(self.lo, self.hi))

    def sample_log(self, rng: np.random.Generator) -> float:
        """Like :meth:`sample`, but a range is sampled log-uniformly (for frequencies)."""
        if self.choices or self.hi == self.lo:
            return self.sample(rng)
        if self.lo <= 0:
            raise ValueError(f"log-uniform range {self} needs a positive lower bound")
        return float(math.exp(rng.uniform(math.log(self.lo), math.log(self.hi))))

    def __repr__(self) -> str:
        if self.choices:
            return "|".join(f"{c:g}" for c in self.choices)
        return f"{self.lo:g}" if self.lo == self.hi else f"{self.lo:g}:{self.hi:g}"


class Augmentation:
    """Base class. Subclasses set ``name``, ``keeps_alignment``, ``defaults`` (numeric parameters as spec
    text) and implement ``__call__(wav, rng)``. ``context`` names the keyword arguments a subclass takes from
    the chain's context (e.g. a noise manifest) rather than from its spec."""

    name: ClassVar[str] = ""
    keeps_alignment: ClassVar[bool] = True
    defaults: ClassVar[Dict[str, str]] = {}
    text_params: ClassVar[Tuple[str, ...]] = ()
    context: ClassVar[Tuple[str, ...]] = ()
    needs_speaker: ClassVar[bool] = False  # True: called as aug(wav, rng, speaker=<the target's speaker id>)

    def __init__(self, sample_rate: int = 16000, **params):
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise ValueError(f"{self.name}: unknown parameter(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(self.defaults)) or 'none'}, p")
        self.sample_rate = int(sample_rate)
        merged = {**self.defaults, **params}
        self.params: Dict[str, Value] = {}
        self.text: Dict[str, str] = {}
        for key, val in merged.items():
            if key in self.text_params:
                self.text[key] = str(val)
            else:
                self.params[key] = val if isinstance(val, Value) else Value.parse(val, f"{self.name}.{key}")

    def __call__(self, wav: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def spec(self) -> str:
        items = [f"{k}={v!r}" for k, v in self.params.items()] + [f"{k}={v}" for k, v in self.text.items()]
        return f"{self.name}({','.join(items)})"

    def __repr__(self) -> str:
        return self.spec()


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


class _Manifest:
    """The audio files of a fairseq manifest (root line, then ``relpath<TAB>num_samples``), read with the
    shared checked reader (:func:`fairseq_plugins.data.audio.read_audio`: errors name the manifest line)."""

    def __init__(self, path: str, sample_rate: int):
        from fairseq_plugins.data.manifest_io import read_manifest_entries

        root, rows = read_manifest_entries(path)
        if not rows:
            raise ValueError(f"{path}: the manifest lists no files")
        self.path = os.path.abspath(path)
        self.files = [os.path.join(root, rel) for rel, _, _ in rows]
        self.sizes = [int(n) for _, n, _ in rows]
        self.lines = [line for _, _, line in rows]
        self.sample_rate = sample_rate

    def read(self, i: int, start: int = 0, frames: int = -1) -> np.ndarray:
        from fairseq_plugins.data.audio import read_audio

        return read_audio(self.files[i], self.sample_rate, expected_samples=self.sizes[i], manifest=self.path,
                          line=self.lines[i], start=start, frames=frames)

    def random_segment(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` samples from a random file at a random offset (looped when the file is shorter)."""
        return self.segment(int(rng.integers(len(self.files))), n, rng)

    def segment(self, i: int, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` samples of file ``i`` at a random offset (looped when the file is shorter)."""
        size = self.sizes[i]
        if size >= n:
            start = int(rng.integers(0, size - n + 1))
            x = self.read(i, start=start, frames=n)
        else:
            x = self.read(i)
            x = np.roll(np.tile(x, n // max(1, len(x)) + 1), -int(rng.integers(0, max(1, len(x)))))
        return x[:n]

    def random_file(self, rng: np.random.Generator) -> np.ndarray:
        return self.read(int(rng.integers(len(self.files))))


class AdditiveNoise(Augmentation):
    """Add noise at an SNR (dB) drawn from ``snr``. The noise is a random segment of a file of the noise
    manifest when the chain has one (``noise_manifest``), else procedural noise of a random kind from
    ``kinds`` (:func:`fairseq_plugins.data.noise.make_noise`). SNR is measured over the whole input; a silent input
    stays unchanged."""

    name = "noise"
    defaults = {"snr": "5:20", "kinds": "white+pink+brown+babble+hum+clicks+bandlimited"}
    text_params = ("kinds",)
    context = ("noise_manifest",)

    def __init__(self, sample_rate: int = 16000, noise_manifest: Optional[str] = None, **params):
        super().__init__(sample_rate, **params)
        from fairseq_plugins.data.noise import NOISE_KINDS

        self.kinds = [k for k in self.text["kinds"].split("+") if k]
        bad = [k for k in self.kinds if k not in NOISE_KINDS]
        if bad or not self.kinds:
            raise ValueError(f"noise: unknown kinds {bad or self.kinds}; choose from {'+'.join(NOISE_KINDS)}")
        self.manifest = _Manifest(noise_manifest, sample_rate) if noise_manifest else None

    def noise(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if self.manifest is not None:
            return self.manifest.random_segment(n, rng)
        from fairseq_plugins.data.noise import make_noise

        kind = self.kinds[int(rng.integers(len(self.kinds)))]
        return make_noise(kind, max(n, 64), rng, self.sample_rate)[:n]

    def __call__(self, wav, rng):
        noise = self.noise(len(wav), rng)
        snr = self.params["snr"].sample(rng)
        signal_rms, noise_rms = _rms(wav), _rms(noise)
        if signal_rms <= 0 or noise_rms <= 0:
            return wav.copy()
        scale = signal_rms / (noise_rms * 10 ** (snr / 20))
        return (wav + scale * noise).astype(np.float32)


def synthetic_rir(rng: np.random.Generator, sample_rate: int, rt60: float, drr_db: float) -> np.ndarray:
    """A synthetic room impulse response: a unit direct path at lag 0, a few sparse early reflections in the
    first 3-30 ms, and a Gaussian tail decaying by 60 dB over ``rt60`` seconds that darkens with time
    (air absorption); the reflections and tail together hold ``10**(-drr_db/10)`` of the direct energy."""
    n = max(32, int(rt60 * sample_rate))
    t = np.arange(n) / sample_rate
    tail = rng.standard_normal(n) * np.exp(-3.0 * math.log(10.0) * t / rt60)
    onset = int(rng.uniform(0.003, 0.010) * sample_rate)  # the diffuse tail starts after the first echoes
    tail[: onset] *= np.linspace(0.0, 1.0, onset, endpoint=False) if onset else 1.0
    # high frequencies die out faster: cross-fade from the white tail to a low-passed copy over rt60
    from scipy.signal import lfilter

    darker = lfilter([0.25], [1.0, -0.75], tail)
    fade = np.clip(t / rt60, 0.0, 1.0)
    tail = (1.0 - fade) * tail + fade * darker * 2.0
    for _ in range(int(rng.integers(3, 9))):  # early reflections
        lag = int(rng.uniform(0.003, 0.030) * sample_rate)
        if lag < n:
            tail[lag] += rng.choice([-1.0, 1.0]) * rng.uniform(0.2, 0.7)
    tail[0] = 0.0
    energy = float(np.sum(tail ** 2))
    if energy > 0:
        tail *= math.sqrt(10 ** (-drr_db / 10.0) / energy)
    tail[0] = 1.0
    return tail


class Reverb(Augmentation):
    """Convolve with a room impulse response, keeping the direct path at lag 0 (so alignment is kept) and the
    input's RMS. RIRs are read from ``rir_manifest`` when the chain has one (each file is shifted so that
    its peak is the direct path), else made by :func:`synthetic_rir` with ``rt60`` (s) and ``drr`` (dB)."""

    name = "reverb"
    defaults = {"rt60": "0.2:0.8", "drr": "0:10"}
    context = ("rir_manifest",)

    def __init__(self, sample_rate: int = 16000, rir_manifest: Optional[str] = None, **params):
        super().__init__(sample_rate, **params)
        self.manifest = _Manifest(rir_manifest, sample_rate) if rir_manifest else None

    def rir(self, rng: np.random.Generator) -> np.ndarray:
        if self.manifest is not None:
            h = self.manifest.random_file(rng).astype(np.float64)
            peak = int(np.argmax(np.abs(h)))
            h = h[peak:]
            return h / h[0]
        rt60 = max(0.05, self.params["rt60"].sample(rng))
        return synthetic_rir(rng, self.sample_rate, rt60, self.params["drr"].sample(rng))

    def __call__(self, wav, rng):
        from scipy.signal import oaconvolve

        h = self.rir(rng)
        y = oaconvolve(wav.astype(np.float64), h)[: len(wav)]
        before, after = _rms(wav), _rms(y)
        if after > 0:
            y *= before / after
        return y.astype(np.float32)


class PitchShift(Augmentation):
    """Shift the pitch by ``semitones`` keeping the length and the timing (librosa's phase vocoder + soxr
    resampling, ``n_fft`` 512 / hop 128 at 16 kHz)."""

    name = "pitch"
    defaults = {"semitones": "-2:2"}

    def __call__(self, wav, rng):
        import librosa

        steps = self.params["semitones"].sample(rng)
        n_fft = 512 * max(1, self.sample_rate // 16000)
        if abs(steps) < 1e-3 or len(wav) < 2 * n_fft:
            return wav.copy()
        y = librosa.effects.pitch_shift(wav, sr=self.sample_rate, n_steps=steps, res_type="soxr_hq",
                                        n_fft=n_fft, hop_length=n_fft // 4)
        return librosa.util.fix_length(y, size=len(wav)).astype(np.float32)


class Speed(Augmentation):
    """Play ``factor`` times faster (tempo and pitch together, like sox ``speed``) by soxr resampling; the
    output has ``len / factor`` samples, so it does NOT keep alignment."""

    name = "speed"
    keeps_alignment = False
    defaults = {"factor": "0.9:1.1"}

    def __call__(self, wav, rng):
        import soxr

        factor = self.params["factor"].sample(rng)
        if factor <= 0:
            raise ValueError(f"speed: factor must be positive, got {factor}")
        if abs(factor - 1.0) < 1e-6:
            return wav.copy()
        y = soxr.resample(wav, self.sample_rate, self.sample_rate / factor, quality="HQ")
        return y.astype(np.float32)


class BandReject(Augmentation):
    """Remove a band: a Butterworth band-stop (``order``) around a centre ``freq`` (Hz, log-uniform over a
    range) ``octaves`` wide, applied forwards and backwards (zero phase, so alignment is kept)."""

    name = "bandreject"
    defaults = {"freq": "200:4000", "octaves": "0.25:1", "order": "2"}

    def __call__(self, wav, rng):
        from scipy.signal import butter, sosfiltfilt

        centre = self.params["freq"].sample_log(rng)
        octaves = self.params["octaves"].sample(rng)
        lo = centre * 2 ** (-octaves / 2)
        hi = min(centre * 2 ** (octaves / 2), 0.45 * self.sample_rate)
        order = max(1, int(round(self.params["order"].sample(rng))))
        if not 0 < lo < hi:
            return wav.copy()
        sos = butter(order, [lo, hi], btype="bandstop", fs=self.sample_rate, output="sos")
        if len(wav) <= 3 * (2 * len(sos) + 1):
            return wav.copy()
        return sosfiltfilt(sos, wav.astype(np.float64)).astype(np.float32)


class TimeDrop(Augmentation):
    """Zero ``count`` spans of ``width_ms`` milliseconds each at random positions (length kept)."""

    name = "timedrop"
    defaults = {"count": "1:4", "width_ms": "20:80"}

    def __call__(self, wav, rng):
        y = wav.copy()
        n = len(y)
        for _ in range(int(round(self.params["count"].sample(rng)))):
            width = min(n, int(self.params["width_ms"].sample(rng) * self.sample_rate / 1000))
            start = int(rng.integers(0, n - width + 1))
            y[start:start + width] = 0.0
        return y


class Gain(Augmentation):
    """Scale by ``db`` decibels."""

    name = "gain"
    defaults = {"db": "-6:6"}

    def __call__(self, wav, rng):
        return (wav * 10 ** (self.params["db"].sample(rng) / 20)).astype(np.float32)


class RandomCrop(Augmentation):
    """Keep a random contiguous ``fraction`` of the input (at least ``min_seconds``); does NOT keep
    alignment."""

    name = "crop"
    keeps_alignment = False
    defaults = {"fraction": "0.5:1", "min_seconds": "0.5"}

    def __call__(self, wav, rng):
        n = len(wav)
        keep = int(round(self.params["fraction"].sample(rng) * n))
        keep = min(n, max(keep, int(self.params["min_seconds"].sample(rng) * self.sample_rate), 1))
        start = int(rng.integers(0, n - keep + 1))
        return wav[start:start + keep].copy()


INTERFERER_KINDS = ("speech", "noise", "both")


class Interferer(Augmentation):
    """Mix an interferer into the target (CSC's on-the-fly mixtures; Wang et al., ICASSP 2021): ``kind`` is
    ``speech`` (a segment of a file of ANOTHER speaker of ``speech_manifest``, at an SIR in dB drawn from
    ``sir``), ``noise`` (noise as :class:`AdditiveNoise` makes it, at an SNR drawn from ``snr``) or ``both``;
    ``kind=speech+noise+both`` draws one per call. Each interferer covers a random span of ``cover`` (a
    fraction in (0, 1]) of the target at a random offset; its SIR/SNR is measured against the target over that
    span (the whole target when the span is silent; a silent target stays unchanged). With ``both`` the
    noise's SNR is measured against the target alone, not the target plus interfering speech.

    Reverberation (optional, off by default): with probability ``reverb`` each interferer is convolved with
    a synthetic room impulse response (:func:`synthetic_rir`, ``rt60`` s, ``drr`` dB, seeded by the same
    ``rng``) BEFORE it is scaled, so the requested SIR/SNR still holds for the reverberant interferer; the
    target stays dry (it is the separation reference). With ``reverb=0`` no random number is drawn for it, so
    the mixtures are those of a spec without the parameter.

    The interfering speaker is read from the speaker side file next to ``speech_manifest`` (``train.tsv`` ->
    ``train.spk``, one speaker per manifest line); a manifest without one is refused. The target's speaker is
    given per call (``speaker=``, :class:`AugmentationChain` passes it; the ``multiview_audio_pretraining``
    dataset takes it from ``{split}.spk``). Keeps alignment. :meth:`mix` also returns the components."""

    name = "interferer"
    needs_speaker: ClassVar[bool] = True
    defaults = {"kind": "speech+noise+both", "sir": "-5:5", "snr": "-5:20", "cover": "0.5:1",
                "kinds": AdditiveNoise.defaults["kinds"], "reverb": "0", **Reverb.defaults}
    text_params = ("kind", "kinds")
    context = ("speech_manifest", "noise_manifest")

    def __init__(self, sample_rate: int = 16000, speech_manifest: Optional[str] = None,
                 noise_manifest: Optional[str] = None, **params):
        super().__init__(sample_rate, **params)
        self.kinds = [k for k in self.text["kind"].split("+") if k]
        bad = [k for k in self.kinds if k not in INTERFERER_KINDS]
        if bad or not self.kinds:
            raise ValueError(f"interferer: unknown kind {bad or self.kinds}; choose from "
                             f"{'+'.join(INTERFERER_KINDS)}")
        lo, hi = self.params["cover"].bounds
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"interferer: cover={self.params['cover']!r} must lie in (0, 1]")
        lo, hi = self.params["reverb"].bounds
        if not 0 <= lo <= hi <= 1:
            raise ValueError(f"interferer: reverb={self.params['reverb']!r} is a probability and must lie in [0, 1]")
        if self.params["rt60"].bounds[0] <= 0:
            raise ValueError(f"interferer: rt60={self.params['rt60']!r} must be positive (seconds)")
        self.noise_source = AdditiveNoise(sample_rate, noise_manifest=noise_manifest, snr="0",
                                          kinds=self.text["kinds"])
        self.manifest: Optional[_Manifest] = None
        self.speakers: List[str] = []
        self.by_speaker: Dict[str, np.ndarray] = {}
        if speech_manifest and any(k != "noise" for k in self.kinds):
            self.load_speakers(speech_manifest)

    def load_speakers(self, speech_manifest: str) -> None:
        spk_path = os.path.splitext(speech_manifest)[0] + ".spk"
        if not os.path.isfile(spk_path):
            raise FileNotFoundError(
                f"interferer: speaker file {spk_path} is missing: the interfering speech must come from another "
                f"speaker of {speech_manifest}, so it needs a line-parallel speaker file (one speaker id per "
                f"manifest line)")
        self.manifest = _Manifest(speech_manifest, self.sample_rate)
        with open(spk_path) as f:
            speakers = f.read().split("\n")
        if speakers and speakers[-1] == "":
            speakers.pop()
        if len(speakers) != len(self.manifest.files):
            raise ValueError(f"{spk_path}: {len(speakers)} lines, but {speech_manifest} lists "
                             f"{len(self.manifest.files)} files (one speaker per manifest line expected)")
        empty = [i + 1 for i, s in enumerate(speakers) if not s.strip()]
        if empty:
            raise ValueError(f"{spk_path}: line {empty[0]} is empty; expected a speaker id")
        self.speakers = [s.strip() for s in speakers]
        self.by_speaker = {}
        for i, s in enumerate(self.speakers):
            self.by_speaker.setdefault(s, []).append(i)
        self.by_speaker = {s: np.asarray(v) for s, v in self.by_speaker.items()}
        if len(self.by_speaker) < 2:
            raise ValueError(f"{spk_path}: every line is speaker {self.speakers[0]!r}; interfering speech "
                             f"needs at least two speakers")

    def _place(self, target: np.ndarray, source: np.ndarray, start: int, ratio_db: float) -> np.ndarray:
        """``source`` (span length) scaled to ``ratio_db`` below the target over the span, placed at ``start``
        in a zero signal as long as ``target`` (float64)."""
        out = np.zeros(len(target))
        m = len(source)
        ref = _rms(target[start:start + m]) or _rms(target)
        src = _rms(source)
        if ref <= 0 or src <= 0:
            if src <= 0:
                logger.warning("interferer: a silent interferer segment was drawn; this mixture has none")
            return out
        out[start:start + m] = source.astype(np.float64) * ref / (src * 10 ** (ratio_db / 20))
        return out

    def _reverberate(self, source: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``source`` convolved with a synthetic RIR (direct path at lag 0, length kept) with probability
        ``reverb``; unchanged (and no random number drawn) when ``reverb`` is 0."""
        p = self.params["reverb"]
        if p.bounds[1] <= 0 or rng.random() >= p.sample(rng):
            return source
        from scipy.signal import oaconvolve

        h = synthetic_rir(rng, self.sample_rate, self.params["rt60"].sample(rng), self.params["drr"].sample(rng))
        return oaconvolve(source.astype(np.float64), h)[: len(source)]

    def _span(self, n: int, rng: np.random.Generator) -> Tuple[int, int]:
        m = min(n, max(1, int(round(self.params["cover"].sample(rng) * n))))
        return int(rng.integers(0, n - m + 1)), m

    def mix(self, wav: np.ndarray, rng: np.random.Generator, speaker: Optional[str] = None,
            exclude: Sequence[str] = ()):
        """``(mixture float32, info)``; ``info`` holds ``kind``, the placed ``speech`` and ``noise`` components
        (float64, zeros when absent; ``mixture = wav + speech + noise``), ``sir``/``snr`` (dB, None when
        absent), their spans ``(start, length)`` and the interfering ``interferer_speaker`` / ``_file``.
        The interfering speaker is neither ``speaker`` nor any speaker in ``exclude`` (e.g. the other side of
        a verification trial)."""
        n = len(wav)
        kind = self.kinds[int(rng.integers(len(self.kinds)))]
        info = {"kind": kind, "speech": np.zeros(n), "noise": np.zeros(n), "sir": None, "snr": None,
                "speech_span": None, "noise_span": None, "interferer_speaker": None, "interferer_file": None}
        if n == 0:
            return wav.astype(np.float32), info
        if kind in ("speech", "both"):
            if self.manifest is None:
                raise ValueError("interferer: interfering speech needs the speech manifest (context "
                                 "speech_manifest; the multiview_audio_pretraining task passes its training manifest)")
            if speaker is None:
                raise ValueError("interferer: the target's speaker was not given (speaker=...), so another "
                                 "speaker cannot be chosen")
            banned = {str(speaker), *map(str, exclude)}
            others = [s for s in self.by_speaker if s not in banned]
            if not others:
                raise ValueError(f"interferer: {self.manifest.path} has no speaker outside {sorted(banned)} to "
                                 f"interfere with (speakers: {sorted(self.by_speaker)})")
            other = others[int(rng.integers(len(others)))]
            i = int(self.by_speaker[other][int(rng.integers(len(self.by_speaker[other])))])
            start, m = self._span(n, rng)
            sir = self.params["sir"].sample(rng)
            source = self._reverberate(self.manifest.segment(i, m, rng), rng)
            info["speech"] = self._place(wav, source, start, sir)
            info.update(sir=sir, speech_span=(start, m), interferer_speaker=other,
                        interferer_file=self.manifest.files[i])
        if kind in ("noise", "both"):
            start, m = self._span(n, rng)
            snr = self.params["snr"].sample(rng)
            info["noise"] = self._place(wav, self._reverberate(self.noise_source.noise(m, rng), rng), start, snr)
            info.update(snr=snr, noise_span=(start, m))
        mixture = wav.astype(np.float64) + info["speech"] + info["noise"]
        return mixture.astype(np.float32), info

    def __call__(self, wav, rng, speaker: Optional[str] = None):
        return self.mix(wav, rng, speaker)[0]


AUGMENTATIONS: Dict[str, Type[Augmentation]] = {
    cls.name: cls
    for cls in (AdditiveNoise, Reverb, PitchShift, Speed, BandReject, TimeDrop, Gain, RandomCrop, Interferer)
}

_SPEC = re.compile(r"^\s*([A-Za-z_]\w*)\s*(?:\((.*)\))?\s*$", re.S)


def split_specs(specs: Sequence[str]) -> List[str]:
    """Split every item at commas outside parentheses: ``["a(x=1,y=2),b", "c"]`` -> ``["a(x=1,y=2)", "b",
    "c"]``."""
    out: List[str] = []
    for item in specs:
        depth, cur = 0, []
        for ch in str(item):
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
                if depth < 0:
                    raise ValueError(f"unbalanced ')' in augmentation spec {item!r}")
            if ch == "," and depth == 0:
                out.append("".join(cur))
                cur = []
            else:
                cur.append(ch)
        if depth != 0:
            raise ValueError(f"unbalanced '(' in augmentation spec {item!r}")
        out.append("".join(cur))
    return [s.strip() for s in out if s.strip()]


def parse_spec(spec: str) -> Tuple[str, Dict[str, str]]:
    """``"noise(snr=5:20,p=0.8)"`` -> ``("noise", {"snr": "5:20", "p": "0.8"})``."""
    m = _SPEC.match(spec)
    if not m:
        raise ValueError(f"augmentation spec {spec!r}: expected name(key=value,...)")
    name, body = m.group(1), m.group(2)
    params: Dict[str, str] = {}
    for item in (body or "").split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise ValueError(f"augmentation spec {spec!r}: {item.strip()!r} is not key=value")
        key, val = item.split("=", 1)
        params[key.strip()] = val.strip()
    return name, params


class AugmentationChain:
    """Applies ``(augmentation, probability)`` steps in order.

    Per call, every step draws its decision and a child seed from ``rng`` whether it runs or not, so one
    step's randomness does not depend on which earlier steps ran, and a seeded ``rng`` (see
    :func:`seeded_rng`) gives the same output in any process.
    """

    def __init__(self, steps: Sequence[Tuple[Augmentation, float]] = ()):
        self.steps = list(steps)
        for aug, p in self.steps:
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{aug.name}: p={p} must be in [0, 1]")

    @classmethod
    def from_specs(cls, specs: Sequence[str], sample_rate: int = 16000, **context) -> "AugmentationChain":
        """Build from spec strings (see the module docstring). ``context`` holds ``noise_manifest``,
        ``rir_manifest`` and ``speech_manifest`` (absolute paths or None), passed to the augmentations that
        take them."""
        steps = []
        for spec in split_specs(list(specs or [])):
            name, params = parse_spec(spec)
            if name not in AUGMENTATIONS:
                raise ValueError(
                    f"unknown augmentation {name!r} in {spec!r}; known: {', '.join(AUGMENTATIONS)}")
            aug_cls = AUGMENTATIONS[name]
            p = float(Value.parse(params.pop("p", "1"), f"{name}.p").lo)
            kwargs = {k: v for k, v in context.items() if k in aug_cls.context and v}
            steps.append((aug_cls(sample_rate=sample_rate, **kwargs, **params), p))
        return cls(steps)

    @property
    def keeps_alignment(self) -> bool:
        return all(aug.keeps_alignment for aug, _ in self.steps)

    @property
    def non_aligned(self) -> List[str]:
        """Names of the steps that change timing or length."""
        return [aug.name for aug, _ in self.steps if not aug.keeps_alignment]

    def __len__(self) -> int:
        return len(self.steps)

    def specs(self) -> List[str]:
        return [f"{aug.spec()[:-1]},p={p:g})" for aug, p in self.steps]

    @property
    def needs_speaker(self) -> bool:
        """Whether a step (e.g. ``interferer``) needs the target's speaker id in :meth:`apply`."""
        return any(aug.needs_speaker for aug, _ in self.steps)

    def apply(self, wav: np.ndarray, rng: np.random.Generator,
              speaker: Optional[str] = None) -> Tuple[np.ndarray, List[str]]:
        """Returns the augmented waveform (float32) and the names of the steps that ran. ``speaker``: the
        target's speaker id, passed to the steps that need it (:attr:`needs_speaker`)."""
        y = np.asarray(wav, dtype=np.float32)
        applied = []
        for aug, p in self.steps:
            run = rng.random() < p
            child = np.random.default_rng(int(rng.integers(0, MAX_SEED)))
            if not run:
                continue
            n = len(y)
            y = aug(y, child, speaker=speaker) if aug.needs_speaker else aug(y, child)
            if aug.keeps_alignment and len(y) != n:
                raise RuntimeError(
                    f"{aug.name} claims to keep alignment but changed the length {n} -> {len(y)}")
            applied.append(aug.name)
        if not np.all(np.isfinite(y)):
            raise FloatingPointError(f"augmentations {applied} produced non-finite samples")
        return y.astype(np.float32, copy=False), applied

    def __call__(self, wav: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.apply(wav, rng)[0]

    def __repr__(self) -> str:
        return f"AugmentationChain({', '.join(self.specs())})"


BENCH_SPECS = (
    "noise(kinds=white)", "noise(kinds=pink)", "noise(kinds=babble)", "noise(kinds=hum)", "noise",
    "reverb", "pitch", "speed", "bandreject", "timedrop", "gain", "crop",
)


def benchmark(specs: Sequence[str] = BENCH_SPECS, seconds: float = 4.0, repeats: int = 10,
              sample_rate: int = 16000, seed: int = 0, **context) -> List[Tuple[str, float]]:
    """Median milliseconds of CPU time (this process, all its threads) per second of audio for each spec, on
    ``seconds`` of speech-like input (procedural babble); CPU time rather than wall time so that other load on
    the machine does not count. Set ``OMP_NUM_THREADS=1`` to mimic one data-loader worker."""
    from fairseq_plugins.data.noise import make_noise

    wav = make_noise("babble", int(seconds * sample_rate), seeded_rng(seed), sample_rate)
    rows = []
    for spec in specs:
        chain = AugmentationChain.from_specs([spec], sample_rate, **context)
        chain(wav, seeded_rng(seed, 1))  # warm-up: lazy imports, caches
        times = []
        for r in range(repeats):
            t0 = time.process_time()
            chain(wav, seeded_rng(seed, 2, r))
            times.append(time.process_time() - t0)
        rows.append((spec, 1000.0 * float(np.median(times)) / seconds))
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fairseq_plugins.data.augment",
                                description="Apply or benchmark waveform augmentation specs.")
    p.add_argument("--bench", action="store_true", help="print the cost of each augmentation (markdown)")
    p.add_argument("--specs", nargs="*", default=list(BENCH_SPECS), help="augmentation specs to measure")
    p.add_argument("--seconds", type=float, default=4.0, help="input duration for --bench (default 4)")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per spec (default 10)")
    p.add_argument("--noise-manifest", default=None, help="noise manifest (fairseq TSV) for noise(...)")
    p.add_argument("--rir-manifest", default=None, help="RIR manifest (fairseq TSV) for reverb(...)")
    args = p.parse_args(argv)
    from fairseq_plugins.compat import cli_logging

    cli_logging(logging.WARNING)
    if not args.bench:
        p.print_help()
        return 0
    rows = benchmark(args.specs, args.seconds, args.repeats, noise_manifest=args.noise_manifest,
                     rir_manifest=args.rir_manifest)
    print("| augmentation | ms CPU per s of audio | x real time |")
    print("|---|---:|---:|")
    for spec, ms in rows:
        print(f"| `{spec}` | {ms:.2f} | {1000.0 / max(ms, 1e-9):,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
