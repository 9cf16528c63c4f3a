"""Fixtures of the fault tests: bad audio files made in the test, one kind at a time."""
import os
from typing import Callable, Tuple

import numpy as np
import pytest
import soundfile as sf

SR = 16000
N = 16000  # one second
BAD_KINDS = ("nan", "inf", "empty", "8khz", "stereo", "wrong_count", "truncated")


def good_wave(seed: int, n: int = N) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def write_bad(path: str, kind: str, seed: int = 0) -> Tuple[int, str]:
    """Write a bad file of ``kind`` at ``path``; returns ``(num_samples for the manifest, text the error must
    contain besides the path)``."""
    x = good_wave(seed)
    if kind in ("nan", "inf"):
        x[N // 2:N // 2 + 10] = np.nan if kind == "nan" else np.inf
        sf.write(path, x, SR, subtype="FLOAT")
        return N, "non-finite"
    if kind == "empty":
        sf.write(path, np.zeros(0, np.float32), SR, subtype="FLOAT")
        return N, "0 samples"
    if kind == "8khz":
        sf.write(path, x[: N // 2], 8000, subtype="FLOAT")
        return N // 2, "sample rate 8000 Hz, expected 16000 Hz"
    if kind == "stereo":
        sf.write(path, np.stack([x, x], axis=1), SR, subtype="FLOAT")
        return N, "2 channels, expected mono"
    if kind == "wrong_count":
        sf.write(path, x, SR, subtype="FLOAT")
        return N + 1000, f"the manifest says {N + 1000} samples, the file has {N}"
    if kind == "truncated":
        sf.write(path, x, SR, subtype="PCM_16")
        with open(path, "rb") as f:
            data = f.read()
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
        return N, f"truncated: its header says {N} samples"
    raise ValueError(kind)


def write_split(folder: str, split: str, num_good: int = 5, bad: str = "", bad_index: int = 2,
                n: int = N) -> Tuple[str, int, str]:
    """``folder/{split}.tsv`` over ``num_good`` good 1 s files with (optionally) one bad file of kind ``bad`` at
    position ``bad_index``; returns ``(bad file path, its manifest line, expected message text)``."""
    from fairseq_plugins.data.manifest_io import write_manifest

    os.makedirs(folder, exist_ok=True)
    rows, bad_path, bad_line, expect = [], "", 0, ""
    for i in range(num_good + (1 if bad else 0)):
        name = f"{split}_{i}.wav"
        path = os.path.join(folder, name)
        if bad and i == bad_index:
            count, expect = write_bad(path, bad, seed=i)
            bad_path, bad_line = path, i + 2
        else:
            sf.write(path, good_wave(i, n), SR, subtype="FLOAT")
            count = n
        rows.append((name, count))
    write_manifest(os.path.join(folder, f"{split}.tsv"), folder, rows)
    return bad_path, bad_line, expect


@pytest.fixture
def bad_split() -> Callable:
    """:func:`write_split` (test modules cannot import a conftest)."""
    return write_split


@pytest.fixture
def bad_file() -> Callable:
    """:func:`write_bad`."""
    return write_bad
