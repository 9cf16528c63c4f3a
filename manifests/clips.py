"""Procedural non-speech audio classes for clip-level classification (a LAPE-style task without downloads).

:func:`build_clips` writes seeded clips of ten sound classes, each with randomised parameters so that a class
is a family of sounds rather than one template:

| class | what |
|---|---|
| ``tone`` | a pure sinusoid, 150-4000 Hz (log-uniform) |
| ``chirp_up`` / ``chirp_down`` | an exponential sweep over 1-4 octaves, rising / falling |
| ``white_noise`` / ``pink_noise`` / ``brown_noise`` | Gaussian noise with a 1/f^0, 1/f, 1/f^2 spectrum |
| ``click_train`` | periodic decaying clicks, 4-40 per second |
| ``harmonic`` | a harmonic stack, f0 80-400 Hz, 4-16 partials with random spectral tilt |
| ``am_noise`` | white noise, amplitude-modulated at 2-16 Hz |
| ``fm_tone`` | a tone with vibrato (3-10 Hz, 1-8 % depth) |

Clips last 0.5-1.5 s, have 10 ms fades, a random level (-35 to -12 dBFS RMS) and faint white background
noise. Layout in ``OUT``: ``audio/{split}/*.wav``, ``{train,valid,test}.tsv`` (fairseq manifests) with
line-parallel ``{split}.cls`` (class) and ``{split}.utt``, ``dict.cls.txt`` and ``clips.json``. The output is
a pure function of the arguments. SLICER's evaluation reuses this set as a general-audio task.

    python -m manifests.clips --out DIR [--seed 0 --per-class 24 6 12]
"""
import argparse
import inspect
import json
import logging
import os
import sys
import wave
from collections import Counter
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from fairseq_plugins.compat import cli_logging
from fairseq_plugins.data.manifest_io import write_dictionary, write_lines, write_manifest

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
SPLITS = ("train", "valid", "test")
VERSION = 1
_OWN_ENTRIES = {"audio", "clips.json", "dict.cls.txt"} | {f"{s}.{x}" for s in SPLITS for x in ("tsv", "cls", "utt")}


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _tone(n, rng, sr):
    f = _loguniform(rng, 150, 4000)
    return np.sin(2 * np.pi * f * np.arange(n) / sr + rng.uniform(0, 2 * np.pi))


def _sweep(n, rng, sr, up: bool):
    octaves = rng.uniform(1, 4)
    lo = _loguniform(rng, 100, 5000 / 2 ** octaves)
    f0, f1 = (lo, lo * 2 ** octaves) if up else (lo * 2 ** octaves, lo)
    t = np.arange(n) / sr
    dur = n / sr
    k = np.log(f1 / f0) / dur
    return np.sin(2 * np.pi * f0 * (np.exp(k * t) - 1) / k)


def _coloured(n, rng, sr, exponent: float):
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / sr)
    gain = np.where(f >= 20, np.maximum(f, 20) ** (-exponent / 2), 0.0)
    return np.fft.irfft(spec * gain, n)


def _clicks(n, rng, sr):
    rate = rng.uniform(4, 40)
    x = np.zeros(n)
    length = int(rng.uniform(0.001, 0.004) * sr)
    click = np.exp(-np.arange(length) / max(1.0, length / 5)) * rng.choice([-1.0, 1.0])
    for pos in np.arange(rng.uniform(0, sr / rate), n, sr / rate).astype(int):
        seg = min(length, n - pos)
        x[pos:pos + seg] += click[:seg]
    return x


def _harmonic(n, rng, sr):
    f0 = _loguniform(rng, 80, 400)
    tilt = rng.uniform(0.5, 2.0)
    t = np.arange(n) / sr
    x = np.zeros(n)
    for h in range(1, int(rng.integers(4, 17)) + 1):
        if f0 * h < 0.45 * sr:
            x += h ** (-tilt) * np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 2 * np.pi))
    return x


def _am_noise(n, rng, sr):
    rate, depth = rng.uniform(2, 16), rng.uniform(0.8, 1.0)
    env = 1 - depth * 0.5 * (1 + np.sin(2 * np.pi * rate * np.arange(n) / sr + rng.uniform(0, 2 * np.pi)))
    return rng.standard_normal(n) * env


def _fm_tone(n, rng, sr):
    fc = _loguniform(rng, 200, 3000)
    rate, depth = rng.uniform(3, 10), rng.uniform(0.01, 0.08)
    t = np.arange(n) / sr
    inst = fc * (1 + depth * np.sin(2 * np.pi * rate * t))
    return np.sin(2 * np.pi * np.cumsum(inst) / sr)


CLASSES: Dict[str, Callable[[int, np.random.Generator, int], np.ndarray]] = {
    "tone": _tone,
    "chirp_up": lambda n, rng, sr: _sweep(n, rng, sr, True),
    "chirp_down": lambda n, rng, sr: _sweep(n, rng, sr, False),
    "white_noise": lambda n, rng, sr: rng.standard_normal(n),
    "pink_noise": lambda n, rng, sr: _coloured(n, rng, sr, 1.0),
    "brown_noise": lambda n, rng, sr: _coloured(n, rng, sr, 2.0),
    "click_train": _clicks,
    "harmonic": _harmonic,
    "am_noise": _am_noise,
    "fm_tone": _fm_tone,
}


def make_clip(cls: str, rng: np.random.Generator, seconds: Optional[float] = None, sr: int = SAMPLE_RATE) -> np.ndarray:
    """One float32 clip of class ``cls`` (random duration 0.5-1.5 s unless ``seconds``), peak below 1."""
    if cls not in CLASSES:
        raise ValueError(f"unknown clip class {cls!r}; choose from {', '.join(CLASSES)}")
    n = int(round((seconds if seconds is not None else rng.uniform(0.5, 1.5)) * sr))
    x = CLASSES[cls](n, rng, sr)
    x = x / (np.sqrt(np.mean(x ** 2)) + 1e-12) * 10 ** (rng.uniform(-35, -12) / 20)
    fade = min(n // 2, int(0.01 * sr))
    ramp = np.linspace(0, 1, fade)
    x[:fade] *= ramp
    x[n - fade:] *= ramp[::-1]
    x = x + 10 ** (rng.uniform(-70, -55) / 20) * rng.standard_normal(n)
    return (x * min(1.0, 0.99 / max(1e-9, float(np.abs(x).max())))).astype(np.float32)


def _write_wav(path: str, audio: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(np.clip(np.rint(audio * 32767), -32768, 32767).astype("<i2").tobytes())


def build_clips(out_dir: str, seed: int = 0, per_class: Sequence[int] = (24, 6, 12),
                classes: Sequence[str] = tuple(CLASSES)) -> Dict:
    """Write ``per_class`` = (train, valid, test) clips of every class to ``out_dir``; returns the summary
    that is also written to ``clips.json``."""
    import shutil

    if len(per_class) != 3 or min(per_class) < 1:
        raise ValueError(f"per_class must be three positive counts (train, valid, test), got {per_class}")
    out_dir = os.path.abspath(out_dir)
    if os.path.isdir(out_dir):
        foreign = sorted(set(os.listdir(out_dir)) - _OWN_ENTRIES)
        if foreign:
            raise FileExistsError(f"{out_dir} holds files this builder did not write ({', '.join(foreign[:5])})")
        for name in os.listdir(out_dir):
            path = os.path.join(out_dir, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    os.makedirs(out_dir, exist_ok=True)
    counts = {}
    for split, count in zip(SPLITS, per_class):
        rows, labels, utts = [], [], []
        for ci, cls in enumerate(classes):
            for i in range(count):
                rng = np.random.default_rng([seed, 21, SPLITS.index(split), ci, i])
                audio = make_clip(cls, rng)
                utt = f"{split}/{cls}_{i:04d}"
                _write_wav(os.path.join(out_dir, "audio", utt + ".wav"), audio)
                rows.append((utt + ".wav", len(audio)))
                labels.append(cls)
                utts.append(utt)
        write_manifest(os.path.join(out_dir, f"{split}.tsv"), os.path.join(out_dir, "audio"), rows)
        write_lines(os.path.join(out_dir, f"{split}.cls"), labels)
        write_lines(os.path.join(out_dir, f"{split}.utt"), utts)
        counts[split] = dict(sorted(Counter(labels).items()))
    write_dictionary(os.path.join(out_dir, "dict.cls.txt"), list(classes))
    summary = {"kind": "procedural", "version": VERSION, "seed": seed, "per_class": list(per_class),
               "classes": list(classes), "counts": counts}
    with open(os.path.join(out_dir, "clips.json"), "w") as f:
        json.dump(summary, f, indent=1, sort_keys=True)
        f.write("\n")
    logger.info("wrote %d clips of %d classes to %s", sum(per_class) * len(classes), len(classes), out_dir)
    return summary


def ensure_clips(out_dir: str, **kwargs) -> Dict:
    """:func:`build_clips` unless ``out_dir`` already holds a set built with the same arguments."""
    want = {k: p.default for k, p in inspect.signature(build_clips).parameters.items() if k != "out_dir"}
    want.update(kwargs)
    want = {k: list(v) if isinstance(v, tuple) else v for k, v in want.items()}
    path = os.path.join(out_dir, "clips.json")
    if os.path.isfile(path):
        with open(path) as f:
            have = json.load(f)
        if have.get("version") == VERSION and all(have.get(k) == v for k, v in want.items()):
            logger.info("reusing the clip set in %s", out_dir)
            return have
    return build_clips(out_dir, **kwargs)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m manifests.clips", description=__doc__.split("\n\n")[0],
                                epilog="Writes OUT/audio/, OUT/{train,valid,test}.{tsv,cls,utt}, "
                                       "OUT/dict.cls.txt and OUT/clips.json.")
    p.add_argument("--out", required=True, help="output directory (new, empty, or a previous clip set)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--per-class", type=int, nargs=3, default=[24, 6, 12], metavar=("TRAIN", "VALID", "TEST"),
                   help="clips per class in each split (default: 24 6 12)")
    p.add_argument("--classes", default=",".join(CLASSES),
                   help=f"comma-separated subset of the classes (default: all: {','.join(CLASSES)})")
    args = p.parse_args(argv)
    cli_logging()
    try:
        summary = ensure_clips(args.out, seed=args.seed, per_class=tuple(args.per_class),
                               classes=tuple(c for c in args.classes.split(",") if c))
    except (FileExistsError, ValueError) as e:
        logger.error("%s", e)
        return 1
    print(json.dumps(summary["counts"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
