"""Real human speech for development probes, from four Debian packages: ``python -m manifests.real_dev --out DIR``.

A probe set, not training data: a few thousand short recordings of real people (acted game voices, children's
game words in ~25 languages, spelled letters and syllables in ~20 languages, codec test talkers), decoded,
downmixed and resampled to 16 kHz mono with the plugin's one audio reader
(:func:`fairseq_plugins.data.audio.read_audio`, ``resample=True``), trimmed of leading / trailing silence and
written as 16-bit WAV under ``DIR/audio/``. The packages (``apt-get install hedgewars-data ktuberling-data
klettres-data codec2-examples``; ``make setup`` installs them):

- ``hedgewars``: ``/usr/share/games/hedgewars/Data/Sounds/voices/<PACK>/<Keyword>.ogg``, 15 acted voice packs
  sharing one list of exclamations. Speaker = pack; language = the pack's ``_xx`` suffix (hedgewars' localised
  packs, e.g. ``Default_pl``), else ``en``; word = the keyword, ``-`` for the non-verbal sounds (grunts, jumps,
  laughs, coughs: :data:`NONVERBAL`).
- ``ktuberling``: ``/usr/share/ktuberling/sounds/<lang>/*.{ogg,wav,opus}``, one recording per word and language;
  word = the sound's name in ``<lang>.soundtheme``; language = ``<lang>`` without region / script
  (``sr@latin`` -> ``sr``); speaker unknown (``-``).
- ``klettres``: ``/usr/share/klettres/<lang>/{alpha,syllab}/*.ogg``, letters and syllables; language =
  ``<lang>`` without region (``en_GB`` -> ``en``, ``pt_BR`` -> ``pt``); speaker and word unknown (file names
  are not labels: Danish names its letters ``a-0`` ... ``a-28``).
- ``codec2``: ``/usr/share/codec2/{raw,wav}/``, codec test recordings of single talkers (8 kHz, a few at 16 kHz;
  ``.raw`` = headerless 8 kHz signed 16-bit); speaker = the recording's name; cut into
  ``--segment-seconds`` pieces. Test tones, modem signals and concatenations of several talkers are rejected
  by name (:data:`CODEC2_NOT_USED`).

Every file that is not used is listed with its reason in ``DIR/rejected.tsv``: unreadable, silent, too short,
byte-identical to another file (several packs ship the same file), contained in a longer recording (codec2
ships excerpts and ``.raw`` / ``.wav`` copies of one recording), or not a single talker's speech.

Output (``DIR/``; manifests in fairseq's format, line 1 the root ``DIR/audio``, then ``relpath<TAB>samples``):

- ``all.tsv`` + ``all.{src,spk,lang,wrd,orig}``: every kept utterance with its source, labels (``-`` = unknown)
  and the package file it was cut from.
- ``speaker/``, ``language/``, ``word/``: ``{train,valid,test}.tsv`` + the label (``.spk`` / ``.lang`` /
  ``.wrd``), ``.src``, ``.spk`` and ``dict.<suffix>.txt``: the probe splits the evaluation reads
  (``python -m fairseq_plugins.evaluate --real-dev-dir DIR --tasks real_speaker_id,real_language_id,real_word_id``).
  ``word/`` also has ``.kw``, so it is a keyword folder too (``--keyword-dir DIR/word --tasks content_qbe``:
  same-word cross-voice retrieval). Each split is per class: about 20 % test, 20 % valid, the rest train (at
  least one of each), so test utterances are unseen utterances of classes seen in training; for speaker id the
  split is within speaker. Classes with fewer than
  ``--min-per-class`` utterances are left out of a task; classes above ``--max-per-class`` are subsampled.
  Which utterances enter which task: :data:`TASKS`.
- ``rejected.tsv`` (``path<TAB>reason``), ``summary.json`` / ``summary.md`` (counts per source and label).

The same packages, ``--seed`` and options give byte-identical output.
"""
import argparse
import glob
import hashlib
import json
import logging
import os
import re
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from fairseq_plugins.compat import cli_logging
from fairseq_plugins.data.audio import AudioError, read_audio
from fairseq_plugins.data.manifest_io import write_lines, write_manifest
from fairseq_plugins.evaluate.data import carve_per_class, stable_order

logger = logging.getLogger("manifests.real_dev")

SAMPLE_RATE = 16000
SOURCES = ("hedgewars", "ktuberling", "klettres", "codec2")
PACKAGES = {"hedgewars": "hedgewars-data", "ktuberling": "ktuberling-data", "klettres": "klettres-data",
            "codec2": "codec2-examples"}
ROOTS = {"hedgewars": "/usr/share/games/hedgewars/Data/Sounds/voices", "ktuberling": "/usr/share/ktuberling/sounds",
         "klettres": "/usr/share/klettres", "codec2": "/usr/share/codec2"}
# hedgewars sounds that are not words (stems without their trailing number)
NONVERBAL = frozenset({"firepunch", "jump", "ooff", "ow", "laugh", "poisoncough", "poisonmoan", "hmm"})
# codec2-examples files that are not one talker's speech (checked by listening to their statistics: the modem
# signals hold 99 % of their energy in 1-2.5 kHz)
CODEC2_NOT_USED = {
    "sine1k_2Hz_spread": "a 1 kHz test tone through a fading-channel simulation, not speech",
    "sine1k_2ms_delay_2Hz_spread": "a 1 kHz test tone through a fading-channel simulation, not speech",
    "test_datac1_006": "a data-modem test signal, not speech",
    "testframes_700d": "FreeDV 700D modem test frames, not speech",
    "700d_end_over": "a FreeDV 700D modem signal, not speech",
    "all": "a concatenation of several talkers' recordings (its parts are used one by one)",
    "hts": "a concatenation of several talkers' sentences (hts1, hts2 and more; hts1 and hts2 are used)",
}
SUFFIXES = {"speaker": "spk", "language": "lang", "word": "wrd"}


@dataclass
class Candidate:
    """One source recording and its labels (``-`` = unknown)."""

    source: str
    path: str
    out: str  # output path stem under audio/, without extension
    speaker: str = "-"
    language: str = "-"
    word: str = "-"
    raw: Optional[Tuple[int, str]] = None  # headerless PCM: (rate, subtype)
    segment: bool = False  # cut into --segment-seconds pieces (long single-talker recordings)


@dataclass
class Utterance:
    rel: str
    samples: int
    source: str
    speaker: str
    language: str
    word: str
    origin: str


@dataclass
class Options:
    seed: int = 0
    min_seconds: float = 0.3
    trim_db: float = 40.0
    segment_seconds: float = 2.0
    min_per_class: int = 3
    max_per_class: int = 100
    max_per_source: int = 0
    test_fraction: float = 0.2
    valid_fraction: float = 0.2
    sources: Sequence[str] = SOURCES
    roots: Dict[str, str] = field(default_factory=dict)


def _eligible_speaker(u: Utterance) -> bool:
    return u.speaker != "-"


def _eligible_language(u: Utterance) -> bool:
    return u.source in ("ktuberling", "klettres") and u.language != "-"


def _eligible_word(u: Utterance) -> bool:
    return u.source == "hedgewars" and u.language == "en" and u.word != "-"


# task folder -> (label field, who takes part): speaker id on the voice packs and codec2 talkers; language id on
# the word and letter games (one or few readers per language); word id on the English voice packs (the same
# ~40 exclamations said by ~10 voices: test items are unseen voices' takes of words seen in training)
TASKS: Dict[str, Tuple[str, Callable[[Utterance], bool]]] = {
    "speaker": ("speaker", _eligible_speaker),
    "language": ("language", _eligible_language),
    "word": ("word", _eligible_word),
}


def _lang(code: str) -> str:
    return re.split(r"[_@.]", code)[0].lower()


def _label(text: str) -> str:
    return re.sub(r"\s+", "_", text.strip()) or "-"


def _missing_root(source: str, root: str) -> FileNotFoundError:
    return FileNotFoundError(f"{source}: {root} not found: install the package with `apt-get install -y "
                             f"--no-install-recommends {PACKAGES[source]}` (make setup does) or pass "
                             f"--root {source}=DIR")


def scan_hedgewars(root: str) -> List[Candidate]:
    out = []
    for pack in sorted(os.listdir(root)):
        if not os.path.isdir(os.path.join(root, pack)):
            continue
        m = re.fullmatch(r".+_([a-z]{2})", pack)
        lang = m.group(1) if m else "en"
        for f in sorted(glob.glob(os.path.join(root, pack, "*.ogg"))):
            stem = os.path.splitext(os.path.basename(f))[0]
            key = re.sub(r"\d+$", "", stem).lower()
            out.append(Candidate("hedgewars", f, f"hedgewars/{pack}/{stem}", speaker=f"hedgewars/{pack}",
                                 language=lang, word="-" if key in NONVERBAL else _label(stem.lower())))
    return out


def scan_ktuberling(root: str) -> List[Candidate]:
    names: Dict[str, str] = {}
    for theme in sorted(glob.glob(os.path.join(root, "*.soundtheme"))):
        try:
            tree = ET.parse(theme)
        except ET.ParseError as e:
            raise ValueError(f"{theme}: not a ktuberling sound theme ({e})") from None
        for s in tree.iter("sound"):
            if s.get("file") and s.get("name"):
                names.setdefault(os.path.normpath(os.path.join(root, s.get("file"))), s.get("name"))
    out = []
    for d in sorted(os.listdir(root)):
        for f in sorted(glob.glob(os.path.join(root, d, "*"))):
            if os.path.splitext(f)[1].lower() not in (".ogg", ".wav", ".opus"):
                continue
            stem = os.path.splitext(os.path.basename(f))[0]
            out.append(Candidate("ktuberling", f, f"ktuberling/{d}/{stem}", language=_lang(d),
                                 word=_label(names.get(os.path.normpath(f), stem))))
    return out


def scan_klettres(root: str) -> List[Candidate]:
    out = []
    for f in sorted(glob.glob(os.path.join(root, "*", "*", "*.ogg"))):
        lang, kind = f.split(os.sep)[-3:-1]
        stem = os.path.splitext(os.path.basename(f))[0]
        out.append(Candidate("klettres", f, f"klettres/{lang}/{kind}/{stem}", language=_lang(lang)))
    return out


def scan_codec2(root: str) -> List[Candidate]:
    out = []
    for f in sorted(glob.glob(os.path.join(root, "raw", "*.raw")) + glob.glob(os.path.join(root, "raw", "*.wav"))
                    + glob.glob(os.path.join(root, "wav", "*.wav"))):
        stem, ext = os.path.splitext(os.path.basename(f))
        sub = os.path.basename(os.path.dirname(f))
        out.append(Candidate("codec2", f, f"codec2/{sub}/{stem}", speaker=f"codec2/{stem}",
                             raw=(8000, "PCM_16") if ext == ".raw" else None, segment=True))
    return out


SCANNERS = {"hedgewars": scan_hedgewars, "ktuberling": scan_ktuberling, "klettres": scan_klettres,
            "codec2": scan_codec2}


def trim_silence(wav: np.ndarray, db: float, pad_seconds: float = 0.1) -> np.ndarray:
    """Cut leading / trailing 10 ms frames whose RMS is more than ``db`` below the loudest (keeping
    ``pad_seconds`` around the rest); ``db <= 0`` keeps everything."""
    frame = SAMPLE_RATE // 100
    n = len(wav) // frame
    if db <= 0 or n == 0:
        return wav
    rms = np.sqrt((wav[:n * frame].astype(np.float64).reshape(n, frame) ** 2).mean(1))
    loud = np.nonzero(rms > rms.max() * 10 ** (-db / 20))[0]
    pad = int(pad_seconds * SAMPLE_RATE)
    return wav[max(0, loud[0] * frame - pad):min(len(wav), (loud[-1] + 1) * frame + pad)]


def _native(c: Candidate) -> Tuple[int, np.ndarray]:
    """The file's own rate and its samples at that rate (for duplicate checks), read by the one reader."""
    import soundfile as sf

    rate = c.raw[0] if c.raw else int(sf.info(c.path).samplerate)
    return rate, read_audio(c.path, rate, raw=c.raw, downmix=True)


def _contained(small: np.ndarray, big: np.ndarray) -> bool:
    """Whether ``small`` occurs sample for sample inside ``big`` (codec2 ships excerpts of its recordings)."""
    if len(small) > len(big) or len(small) == 0:
        return False
    a = (np.round(small * 32768)).astype(np.int32).tobytes()
    b = (np.round(big * 32768)).astype(np.int32).tobytes()
    probe = a[: 4 * min(len(small), 800)]
    pos = b.find(probe)
    while pos >= 0:
        if pos % 4 == 0 and b[pos:pos + len(a)] == a:
            return True
        pos = b.find(probe, pos + 1)
    return False


def collect(opts: Options) -> Tuple[List[Candidate], List[Tuple[str, str]], Dict[str, int]]:
    """Scan the sources; returns (candidates to decode, rejections so far, files found per source)."""
    rejected: List[Tuple[str, str]] = []
    found: Dict[str, int] = {}
    cands: List[Candidate] = []
    for src in opts.sources:
        if src not in SCANNERS:
            raise ValueError(f"unknown source {src!r}; expected some of {', '.join(SOURCES)}")
        root = opts.roots.get(src, ROOTS[src])
        if not os.path.isdir(root):
            raise _missing_root(src, root)
        items = SCANNERS[src](root)
        if not items:
            raise FileNotFoundError(f"{src}: no audio files under {root} (is {PACKAGES[src]} installed completely?)")
        found[src] = len(items)
        if src == "codec2":
            keep = []
            for c in items:
                stem = os.path.splitext(os.path.basename(c.path))[0]
                if stem in CODEC2_NOT_USED:
                    rejected.append((c.path, CODEC2_NOT_USED[stem]))
                else:
                    keep.append(c)
            items = keep
        if opts.max_per_source and len(items) > opts.max_per_source:
            order = stable_order([c.path for c in items], f"real_dev/seed{opts.seed}/max_per_source")
            chosen = set(order[:opts.max_per_source])
            items = [c for i, c in enumerate(items) if i in chosen]
        cands += items
    # byte-identical files (several packs ship the same take): keep the first path in sorted order
    seen: Dict[str, str] = {}
    unique = []
    for c in sorted(cands, key=lambda c: c.path):
        with open(c.path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        if digest in seen:
            rejected.append((c.path, f"byte-identical to {seen[digest]}"))
        else:
            seen[digest] = c.path
            unique.append(c)
    order = {c.path: i for i, c in enumerate(cands)}
    return sorted(unique, key=lambda c: order[c.path]), rejected, found


def _drop_contained(cands: List[Candidate], rejected: List[Tuple[str, str]]) -> List[Candidate]:
    """codec2: drop recordings whose samples lie inside a longer kept recording at the same rate."""
    decoded = {}
    for c in cands:
        if c.source == "codec2":
            try:
                decoded[c.path] = _native(c)
            except (AudioError, RuntimeError):
                pass  # reported when it is decoded for real
    kept: List[str] = []
    drop = {}
    for p in sorted(decoded, key=lambda p: (-len(decoded[p][1]), p)):
        rate, x = decoded[p]
        host = next((k for k in kept if decoded[k][0] == rate and _contained(x, decoded[k][1])), None)
        if host:
            drop[p] = host
        else:
            kept.append(p)
    for c in cands:
        if c.path in drop:
            rejected.append((c.path, f"its samples are contained in {drop[c.path]} (same recording)"))
    return [c for c in cands if c.path not in drop]


def _write_wav(path: str, wav: np.ndarray) -> int:
    import soundfile as sf

    os.makedirs(os.path.dirname(path), exist_ok=True)
    peak = float(np.abs(wav).max())
    if peak > 0.999:  # resampling overshoot of a full-scale take: scale down rather than clip
        wav = wav * (0.999 / peak)
    sf.write(path, wav, SAMPLE_RATE, subtype="PCM_16")
    return len(wav)


def decode(cands: List[Candidate], audio_dir: str, opts: Options, rejected: List[Tuple[str, str]],
           rates: Dict[str, Counter]) -> List[Utterance]:
    import soundfile as sf

    utts = []
    min_len = int(opts.min_seconds * SAMPLE_RATE)
    for n, c in enumerate(cands, start=1):
        try:
            wav = read_audio(c.path, SAMPLE_RATE, raw=c.raw, downmix=True, resample=True)
            rate = c.raw[0] if c.raw else int(sf.info(c.path).samplerate)
        except (AudioError, RuntimeError) as e:
            rejected.append((c.path, str(e).replace(f"{c.path}: ", "", 1)))
            continue
        if not np.any(wav):
            rejected.append((c.path, "silent: every sample is 0"))
            continue
        wav = trim_silence(wav, opts.trim_db)
        if len(wav) < min_len:
            rejected.append((c.path, f"too short: {len(wav) / SAMPLE_RATE:.2f} s of sound after trimming "
                                     f"silence, expected at least {opts.min_seconds} s"))
            continue
        rates[c.source][rate] += 1
        pieces = [wav]
        if c.segment:
            win = int(opts.segment_seconds * SAMPLE_RATE)
            pieces = [wav[i:i + win] for i in range(0, len(wav), win)]
            pieces = [p for p in pieces if len(p) >= max(min_len, SAMPLE_RATE)] or [wav]
        for k, piece in enumerate(pieces):
            rel = f"{c.out}/{k:03d}.wav" if c.segment else f"{c.out}.wav"
            samples = _write_wav(os.path.join(audio_dir, rel), piece)
            utts.append(Utterance(rel, samples, c.source, c.speaker, c.language, c.word, c.path))
        if n % 500 == 0:
            logger.info("decoded %d/%d files", n, len(cands))
    return utts


def split_task(utts: List[Utterance], task: str, opts: Options) -> Dict:
    """Per-class train / valid / test index lists of ``task`` (see the module docstring)."""
    attr, eligible = TASKS[task]
    idx = [i for i, u in enumerate(utts) if eligible(u)]
    by_class: Dict[str, List[int]] = {}
    for i in idx:
        by_class.setdefault(getattr(utts[i], attr), []).append(i)
    dropped, subsampled, pool = {}, {}, []
    for label in sorted(by_class):
        items = by_class[label]
        if len(items) < opts.min_per_class:
            dropped[label] = len(items)
            continue
        if opts.max_per_class and len(items) > opts.max_per_class:
            order = stable_order([utts[i].rel for i in items], f"real_dev/seed{opts.seed}/{task}/cap")
            subsampled[label] = len(items)
            items = sorted(items[j] for j in order[:opts.max_per_class])
        pool += items
    pool.sort()
    labels = [getattr(utts[i], attr) for i in pool]
    keys = [utts[i].rel for i in pool]
    salt = f"real_dev/seed{opts.seed}/{task}"
    rest, test = carve_per_class(labels, keys, opts.test_fraction, salt=f"{salt}/test")
    train, valid = carve_per_class([labels[j] for j in rest], [keys[j] for j in rest],
                                   opts.valid_fraction / (1 - opts.test_fraction), salt=f"{salt}/valid")
    parts = {"train": [pool[rest[j]] for j in train], "valid": [pool[rest[j]] for j in valid],
             "test": [pool[j] for j in test]}
    return {"parts": parts, "dropped": dropped, "subsampled": subsampled}


def _write_split(directory: str, name: str, root: str, utts: List[Utterance], indices: List[int],
                 fields: Dict[str, str]) -> None:
    write_manifest(os.path.join(directory, f"{name}.tsv"), root, [(utts[i].rel, utts[i].samples) for i in indices])
    for suffix, attr in fields.items():
        write_lines(os.path.join(directory, f"{name}.{suffix}"), [getattr(utts[i], attr) for i in indices])


def build_real_dev(out: str, opts: Options) -> Dict:
    """Build the real-speech probe set into ``out``; returns the summary (also ``out/summary.json``)."""
    out = os.path.abspath(out)
    audio_dir = os.path.join(out, "audio")
    cands, rejected, found = collect(opts)
    cands = _drop_contained(cands, rejected)
    rates: Dict[str, Counter] = {s: Counter() for s in opts.sources}
    logger.info("decoding %d recordings to %d Hz mono", len(cands), SAMPLE_RATE)
    utts = decode(cands, audio_dir, opts, rejected, rates)
    if not utts:
        raise ValueError(f"no usable recordings in {', '.join(opts.sources)}; nothing written to {out} "
                         f"(rejections: {rejected[:5]})")
    all_fields = {"src": "source", "spk": "speaker", "lang": "language", "wrd": "word", "orig": "origin"}
    _write_split(out, "all", audio_dir, utts, list(range(len(utts))), all_fields)
    rejected.sort()
    write_lines(os.path.join(out, "rejected.tsv"), [f"{p}\t{r}" for p, r in rejected])
    summary: Dict = {"seed": opts.seed, "sample_rate": SAMPLE_RATE, "options": {
        k: v for k, v in vars(opts).items() if k not in ("roots", "sources")}, "sources": {}, "tasks": {}}
    summary["options"]["sources"] = list(opts.sources)
    summary["options"]["roots"] = {s: opts.roots.get(s, ROOTS[s]) for s in opts.sources}
    for src in opts.sources:
        us = [u for u in utts if u.source == src]
        summary["sources"][src] = {
            "files_found": found.get(src, 0),
            "files_used": len({u.origin for u in us}),
            "files_rejected": sum(1 for p, _ in rejected if _source_of(p, opts) == src),
            "utterances": len(us), "minutes": round(sum(u.samples for u in us) / SAMPLE_RATE / 60, 2),
            "original_rates": {str(r): n for r, n in sorted(rates[src].items())},
            "speakers": dict(sorted(Counter(u.speaker for u in us).items())),
            "languages": dict(sorted(Counter(u.language for u in us).items())),
        }
    for task, (attr, _) in TASKS.items():
        sp = split_task(utts, task, opts)
        d = os.path.join(out, task)
        suffix = SUFFIXES[task]
        classes = sorted({getattr(utts[i], attr) for i in sp["parts"]["train"]})
        if not classes:
            logger.warning("task %s: no class has %d or more utterances; %s/ is not written", task,
                           opts.min_per_class, d)
            summary["tasks"][task] = {"classes": 0, "dropped_classes": sp["dropped"]}
            continue
        for name, indices in sp["parts"].items():
            fields = {suffix: attr, "src": "source", "spk": "speaker"}
            if task == "word":  # also a keyword folder: content_qbe reads .kw + .spk (same words, other voices)
                fields["kw"] = "word"
            _write_split(d, name, audio_dir, utts, indices, fields)
        counts = Counter(getattr(utts[i], attr) for i in sp["parts"]["train"])
        write_lines(os.path.join(d, f"dict.{suffix}.txt"), [f"{c} {counts[c]}" for c in classes])
        per_class = {c: [0, 0, 0] for c in classes}
        for k, name in enumerate(("train", "valid", "test")):
            for i in sp["parts"][name]:
                per_class[getattr(utts[i], attr)][k] += 1
        summary["tasks"][task] = {
            "classes": len(classes), **{n: len(v) for n, v in sp["parts"].items()},
            "sources": dict(Counter(utts[i].source for v in sp["parts"].values() for i in v)),
            "per_class_train_valid_test": per_class, "dropped_classes": sp["dropped"],
            "subsampled_classes": sp["subsampled"]}
    summary["rejected"] = len(rejected)
    summary["rejected_reasons"] = dict(Counter(_reason_kind(r) for _, r in rejected).most_common())
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1, sort_keys=True)
        f.write("\n")
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(summary_markdown(summary))
    return summary


def _source_of(path: str, opts: Options) -> Optional[str]:
    for s in opts.sources:
        if path.startswith(opts.roots.get(s, ROOTS[s]).rstrip("/") + "/"):
            return s
    return None


def _reason_kind(reason: str) -> str:
    for start, kind in (("byte-identical", "byte-identical to another file"),
                        ("its samples are contained", "contained in a longer recording")):
        if reason.startswith(start):
            return kind
    return reason.split(":")[0].split(" (")[0]


def summary_markdown(s: Dict) -> str:
    lines = ["# Real-speech probe set (python -m manifests.real_dev)", "",
             f"seed {s['seed']}, {s['sample_rate']} Hz mono; {s['rejected']} files rejected (rejected.tsv)", "",
             "| source | files found | used | rejected | utterances | minutes | original rates (Hz: files) |",
             "|---|---|---|---|---|---|---|"]
    for src, d in s["sources"].items():
        r = ", ".join(f"{k}: {v}" for k, v in d["original_rates"].items())
        lines.append(f"| {src} | {d['files_found']} | {d['files_used']} | {d['files_rejected']} | "
                     f"{d['utterances']} | {d['minutes']} | {r} |")
    lines += ["", "| task | classes | train | valid | test | sources | left out (< min per class) |",
              "|---|---|---|---|---|---|---|"]
    for t, d in s["tasks"].items():
        if not d["classes"]:
            lines.append(f"| {t} | 0 | - | - | - | - | {len(d['dropped_classes'])} |")
            continue
        src = ", ".join(f"{k} {v}" for k, v in sorted(d["sources"].items()))
        lines.append(f"| {t} | {d['classes']} | {d['train']} | {d['valid']} | {d['test']} | {src} | "
                     f"{', '.join(f'{k} ({v})' for k, v in d['dropped_classes'].items()) or '-'} |")
    lines += ["", "rejections: " + ", ".join(f"{k} {v}" for k, v in s["rejected_reasons"].items()), ""]
    return "\n".join(lines)


def _roots(specs: Sequence[str]) -> Dict[str, str]:
    roots = {}
    for spec in specs:
        src, sep, path = spec.partition("=")
        if not sep or src not in SOURCES or not path:
            raise argparse.ArgumentTypeError(f"--root {spec!r}: expected SOURCE=DIR with SOURCE in "
                                             f"{', '.join(SOURCES)}")
        roots[src] = os.path.abspath(path)
    return roots


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m manifests.real_dev", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (audio/, all.tsv, speaker/ language/ word/, "
                                                "rejected.tsv, summary.json, summary.md)")
    p.add_argument("--seed", type=int, default=0, help="seed of the probe splits and subsampling (default 0)")
    p.add_argument("--sources", default=",".join(SOURCES),
                   help=f"comma-separated sources (default: {','.join(SOURCES)})")
    p.add_argument("--root", nargs="*", default=[], metavar="SOURCE=DIR",
                   help="read a source from another folder laid out like its package, e.g. hedgewars=DIR "
                        "(defaults: " + ", ".join(f"{k}={v}" for k, v in ROOTS.items()) + ")")
    p.add_argument("--max-per-source", type=int, default=0,
                   help="use at most N files of each source, a seeded choice (0 = all; for quick tests)")
    p.add_argument("--min-per-class", type=int, default=3,
                   help="a class with fewer utterances is left out of its task (default 3: one each for "
                        "train, valid, test)")
    p.add_argument("--max-per-class", type=int, default=100,
                   help="subsample a larger class to N utterances, seeded (default 100; 0 = no cap): klettres "
                        "has 500 Malayalam syllables, most languages have 20-200 recordings")
    p.add_argument("--min-seconds", type=float, default=0.3,
                   help="reject recordings shorter than this after trimming silence (default 0.3)")
    p.add_argument("--trim-db", type=float, default=40.0,
                   help="trim leading / trailing silence more than this many dB below the loudest 10 ms "
                        "(default 40; 0 = no trimming): some klettres letters are 0.3 s of speech in 5 s")
    p.add_argument("--segment-seconds", type=float, default=2.0,
                   help="cut codec2's long single-talker recordings into pieces this long (default 2.0; a last "
                        "piece under 1 s is dropped)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    cli_logging(verbose=args.verbose)
    logging.getLogger("fairseq_plugins.data.audio").setLevel(logging.ERROR)  # stereo packs: downmix is intended
    try:
        sources = [s.strip() for s in args.sources.split(",") if s.strip()]
        opts = Options(seed=args.seed, min_seconds=args.min_seconds, trim_db=args.trim_db,
                       segment_seconds=args.segment_seconds, min_per_class=args.min_per_class,
                       max_per_class=args.max_per_class, max_per_source=args.max_per_source, sources=sources,
                       roots=_roots(args.root))
        summary = build_real_dev(args.out, opts)
    except (argparse.ArgumentTypeError, ValueError, FileNotFoundError) as e:
        logger.error("%s", e)
        return 1
    sys.stdout.write(summary_markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
