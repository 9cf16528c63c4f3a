"""Data for the probes: manifest splits with their side files, and per-upstream feature caches.

A :class:`Split` is one fairseq manifest (``{name}.tsv``: line 1 root, then ``relpath<TAB>num_samples``) with
its line-parallel side files (``.phn``, ``.phn50``, ``.spk``, ``.utt``, ``.kw``, ``.cls`` ...). A
:class:`FeatureStore` runs one frozen upstream over splits, one utterance at a time (no padding, so a
feature never depends on what it was batched with: wav2vec2/HuBERT-Base group-normalise the conv features
over time), and keeps every utterance's ``L x T x C`` states in memory so that all probes and seeds reuse one
extraction. With ``cache=False`` features are recomputed whenever a probe asks (for corpora too big for
memory); utterance-level tasks only ever need the time-mean of each layer, which is always cached. Audio is
read with the plugin's one checked reader (:func:`fairseq_plugins.data.audio.read_audio`) and every feature is
checked to be finite: a bad file stops the run naming the utterance, the file and the stage.
"""
import hashlib
import logging
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from fairseq_plugins.data.audio import read_audio
from fairseq_plugins.data.manifest_io import ManifestError, read_lines, read_manifest_entries
from fairseq_plugins.evaluate.upstream import SAMPLE_RATE, Upstream

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".m4a")


class NonFiniteError(FloatingPointError):
    """NaN / Inf where a number is needed; the message names the utterance, the file and the stage."""


class Split:
    """One manifest split: ``Split(manifest_dir, name)`` reads ``{name}.tsv``; side files on demand."""

    def __init__(self, manifest_dir: str, name: str):
        self.dir, self.name = os.path.abspath(manifest_dir), name
        self.tsv = os.path.join(self.dir, f"{name}.tsv")
        if not os.path.isfile(self.tsv):
            raise FileNotFoundError(f"manifest {self.tsv} not found")
        self.root, rows = read_manifest_entries(self.tsv)
        if not rows:
            raise ManifestError(f"{self.tsv} lists no audio")
        self.rels = [r for r, _, _ in rows]
        self.sizes = [n for _, n, _ in rows]
        self.lines = [line for _, _, line in rows]

    def __len__(self) -> int:
        return len(self.rels)

    def __repr__(self) -> str:
        return f"Split({self.tsv}, {len(self)} utterances)"

    def path(self, i: int) -> str:
        return os.path.join(self.root, self.rels[i])

    def read(self, i: int) -> np.ndarray:
        """Utterance ``i``'s mono 16 kHz waveform (``S`` float32), checked against its manifest line."""
        return read_audio(self.path(i), SAMPLE_RATE, expected_samples=self.sizes[i], manifest=self.tsv,
                          line=self.lines[i])

    def has(self, suffix: str) -> bool:
        return os.path.isfile(os.path.join(self.dir, f"{self.name}.{suffix}"))

    def side(self, suffix: str) -> List[str]:
        """The ``{name}.{suffix}`` side file, one line per utterance (checked)."""
        path = os.path.join(self.dir, f"{self.name}.{suffix}")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"side file {path} not found (needed next to {self.tsv})")
        return read_lines(path, expected=len(self))

    def utt_ids(self) -> List[str]:
        """``.utt`` when present, else the relative path without its extension (the manifest builder's ids)."""
        if self.has("utt"):
            return self.side("utt")
        return [os.path.splitext(r)[0] for r in self.rels]


def read_dictionary(path: str) -> List[str]:
    """Symbols of a fairseq ``dict.*.txt`` (first column), in file order."""
    return [line.split()[0] for line in read_lines(path) if line.strip()]


def symbol_table(split: Split, suffix: str, dict_path: Optional[str] = None) -> List[str]:
    """The label inventory: ``dict_path`` if it exists, else every symbol seen in the split's side file."""
    if dict_path and os.path.isfile(dict_path):
        return read_dictionary(dict_path)
    seen: Dict[str, int] = {}
    for line in split.side(suffix):
        for tok in line.split():
            seen[tok] = seen.get(tok, 0) + 1
    return sorted(seen, key=lambda s: (-seen[s], s))


def encode(lines: Sequence[str], symbols: Sequence[str], offset: int = 0, where: str = "") -> List[List[int]]:
    """Token lines -> index lists (``offset`` shifts indices, e.g. 1 for a CTC blank at 0)."""
    index = {s: i + offset for i, s in enumerate(symbols)}
    out = []
    for n, line in enumerate(lines, start=1):
        try:
            out.append([index[t] for t in line.split()])
        except KeyError as e:
            raise ManifestError(f"{where}:{n}: label {e.args[0]!r} is not in the label dictionary") from None
    return out


def stable_order(keys: Sequence[str], salt: str) -> List[int]:
    """Indices of ``keys`` ordered by SHA-256 of ``salt/key`` (a deterministic, platform-independent shuffle)."""
    return sorted(range(len(keys)), key=lambda i: hashlib.sha256(f"{salt}/{keys[i]}".encode()).hexdigest())


def carve_per_class(labels: Sequence[str], keys: Sequence[str], fraction: float = 0.25,
                    salt: str = "probe-test") -> Tuple[List[int], List[int]]:
    """Split item indices into ``(keep, carved)`` per class: about ``fraction`` of each class (at least one
    when the class has two or more items) goes to ``carved``, chosen by :func:`stable_order` of ``keys``."""
    by_class: Dict[str, List[int]] = {}
    for i in stable_order(keys, salt):
        by_class.setdefault(labels[i], []).append(i)
    keep, carved = [], []
    for items in by_class.values():
        k = 0 if len(items) < 2 else max(1, int(round(fraction * len(items))))
        carved += items[:k]
        keep += items[k:]
    return sorted(keep), sorted(carved)


def read_trials(path: str) -> List[Tuple[int, str, str]]:
    """``LABEL UTT_A UTT_B`` lines (VoxCeleb format; ``1`` = same speaker)."""
    out = []
    for n, line in enumerate(read_lines(path), start=1):
        parts = line.split()
        if len(parts) != 3 or parts[0] not in ("0", "1"):
            raise ManifestError(f"{path}:{n}: expected 'LABEL UTT_A UTT_B' with LABEL 0 or 1, got {line!r}")
        out.append((int(parts[0]), parts[1], parts[2]))
    if not out:
        raise ManifestError(f"{path}: no trials")
    return out


def resolve_trial_ids(trials: Sequence[Tuple[int, str, str]], utt_ids: Sequence[str],
                      where: str = "trials") -> List[Tuple[int, int, int]]:
    """Map trial utterance names to split indices; names may carry an audio extension (official lists)."""
    index = {u: i for i, u in enumerate(utt_ids)}

    def find(name: str) -> int:
        if name in index:
            return index[name]
        stem, ext = os.path.splitext(name)
        if ext.lower() in AUDIO_EXTENSIONS and stem in index:
            return index[stem]
        raise ManifestError(f"{where}: utterance {name!r} is not in the split's utterance ids")

    return [(label, find(a), find(b)) for label, a, b in trials]


class FeatureStore:
    """Frozen features of one upstream, cached per split (key: the manifest path).

    ``features(split)[i]`` is utterance ``i``'s ``L x T x C`` float tensor; ``pooled(split)`` the
    ``N x L x C`` time-means. ``cache_dtype`` ``float16`` halves the memory at a small precision cost.
    ``frame_splits`` (manifest paths), when given, limits the frame cache to the splits that frame-level probes
    read; every other split keeps only its time-means.
    """

    def __init__(self, upstream: Upstream, cache: bool = True, cache_dtype: torch.dtype = torch.float32,
                 log_every: int = 200, frame_splits: Optional[set] = None):
        self.upstream = upstream
        self.cache = cache
        self.frame_splits = frame_splits
        self.cache_dtype = cache_dtype
        self.log_every = log_every
        self._feats: Dict[str, List[torch.Tensor]] = {}
        self._pooled: Dict[str, torch.Tensor] = {}
        self.seconds = 0.0
        self.audio_seconds = 0.0

    def _extract(self, split: Split, i: int) -> torch.Tensor:
        return self.extract_waveform(
            split.read(i), f"{split.tsv}:{split.lines[i]}: utterance {split.rels[i]!r} ({split.path(i)})")

    def extract_waveform(self, wav: np.ndarray, where: str) -> torch.Tensor:
        """``L x T x C`` features of one finite waveform (e.g. a probe-made mixture), not cached; ``where``
        names it in errors."""
        wav = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))
        t0 = time.time()
        h = self.upstream.extract(wav)
        self.seconds += time.time() - t0
        self.audio_seconds += wav.numel() / SAMPLE_RATE
        if h.size(1) == 0:
            raise ValueError(f"{where}: {wav.numel()} samples give no frame for {self.upstream.name}")
        if not torch.isfinite(h).all():
            raise NonFiniteError(
                f"{where}: the features of {self.upstream.name} hold {int((~torch.isfinite(h)).sum())} non-finite "
                f"values (stage: feature extraction); the audio is finite, so the upstream itself produced them")
        return h

    def _caches_frames(self, split: Split) -> bool:
        return self.cache and (self.frame_splits is None or split.tsv in self.frame_splits)

    def _extract_all(self, split: Split) -> None:
        t0 = time.time()
        feats, pooled = [], []
        keep = self._caches_frames(split)
        for i in range(len(split)):
            h = self._extract(split, i)
            pooled.append(h.mean(dim=1))
            if keep:
                feats.append(h.to(self.cache_dtype))
            if self.log_every and (i + 1) % self.log_every == 0:
                logger.info("  %s: %s %d/%d utterances", self.upstream.name, split.name, i + 1, len(split))
        self._pooled[split.tsv] = torch.stack(pooled)
        if keep:
            self._feats[split.tsv] = feats
        logger.info("%s: extracted %s (%d utterances, %d states x %d dims) in %.1f s", self.upstream.name,
                    split.tsv, len(split), pooled[0].size(0), pooled[0].size(1), time.time() - t0)

    def features(self, split: Split) -> Sequence[torch.Tensor]:
        if split.tsv not in self._pooled:
            self._extract_all(split)
        if split.tsv in self._feats:
            return _FloatView(self._feats[split.tsv])
        return _LazyFeatures(self, split)

    def pooled(self, split: Split) -> torch.Tensor:
        if split.tsv not in self._pooled:
            self._extract_all(split)
        return self._pooled[split.tsv]

    def cached_bytes(self) -> int:
        return sum(h.numel() * h.element_size() for hs in self._feats.values() for h in hs)

    def clear(self) -> None:
        self._feats.clear()
        self._pooled.clear()


class _FloatView:
    def __init__(self, items: List[torch.Tensor]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.items[i].float()


class _LazyFeatures:
    def __init__(self, store: FeatureStore, split: Split):
        self.store, self.split = store, split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.store._extract(self.split, i)
