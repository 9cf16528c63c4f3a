"""Build fairseq wav2vec-style audio manifests (and their line-parallel side files) from a directory tree.

The tree under ROOT is walked in sorted order; every audio file's header is read with ``soundfile.info`` and
checked (readable, non-empty, mono, expected sample rate, not truncated, duration bounds, speaker and transcript
found; ``--verify-decode`` also decodes every file and checks the sample count and that every sample is finite). Good
files go to ``DEST/{split}.tsv`` in fairseq's manifest format (line 1: absolute root, then
``relative/path<TAB>num_samples``), with ``{split}.utt``, ``{split}.spk``, ``{split}.wrd`` and ``{split}.ltr``
side files in the same line order, plus ``dict.ltr.txt`` when transcripts exist. Bad files are never dropped
silently: ``--on-bad skip`` lists them in ``DEST/rejected.tsv`` with a reason and logs per-reason counts;
``--on-bad fail`` raises :class:`BadFilesError` naming every bad file. The train/valid split is a function of
the seed and of the utterance (or speaker) ids only, so it does not depend on filesystem order and reruns give
identical files. When no file is usable nothing is written and :class:`BadFilesError` says why. See
``manifests/README.md`` for the formats and examples.
"""
import argparse
import hashlib
import logging
import os
import re
import sys
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from fairseq_plugins.compat import cli_logging
from fairseq_plugins.data.audio import truncation
from fairseq_plugins.data.manifest_io import (
    ManifestError,
    words_to_letters,
    write_dictionary,
    write_lines,
    write_manifest,
)

logger = logging.getLogger(__name__)

SPEAKER_LAYOUTS = ("librispeech", "voxceleb", "regex", "none")
TRANSCRIPT_MODES = ("auto", "librispeech", "none")
SIDECAR_EXTS = (".txt", ".lab")
SIDE_EXTS = ("utt", "spk", "wrd", "ltr")

# Reason categories (the text before the first ':' of a rejection reason); summaries count by category.
R_UNREADABLE = "unreadable"
R_EMPTY = "empty"
R_NOT_MONO = "not mono"
R_SAMPLE_RATE = "wrong sample rate"
R_TOO_SHORT = "too short"
R_TOO_LONG = "too long"
R_DECODE = "decode mismatch"
R_TRUNCATED = "truncated"
R_NONFINITE = "non-finite samples"
R_SPK_REGEX = "speaker regex did not match"
R_SPK_LAYOUT = "speaker layout did not match"
R_NO_TRANSCRIPT = "no transcript"
R_DUPLICATE = "duplicate utterance id"
R_NO_SPLIT = "not in a split subdirectory"
R_BAD_PATH = "unsupported path"


class BadFilesError(ManifestError):
    """Raised with ``--on-bad fail``; ``.rejected`` holds every ``(path, reason)``, relative to ROOT."""

    def __init__(self, message: str, rejected: Sequence[Tuple[str, str]]):
        super().__init__(message)
        self.rejected = list(rejected)


@dataclass
class Report:
    """What :func:`build_manifest` did. Paths in ``rejected`` are relative to ``root``."""

    root: str
    dest: str
    kept: Dict[str, int] = field(default_factory=dict)  # split -> number of manifest entries
    seconds: Dict[str, float] = field(default_factory=dict)  # split -> total audio duration
    rejected: List[Tuple[str, str]] = field(default_factory=list)  # (relative path, reason)
    written: List[str] = field(default_factory=list)  # files written under dest
    transcripts: str = "none"  # transcript source actually used: librispeech, sidecar or none

    @property
    def total_kept(self) -> int:
        return sum(self.kept.values())

    def rejected_counts(self) -> Dict[str, int]:
        """Number of rejected files per reason category (text before the first ':')."""
        return dict(Counter(reason_category(r) for _, r in self.rejected))

    def summary(self) -> str:
        parts = [f"{s}: {self.kept[s]} files, {self.seconds.get(s, 0.0) / 3600:.2f} h" for s in self.kept]
        text = f"kept {self.total_kept} files ({'; '.join(parts) or 'none'}), rejected {len(self.rejected)}"
        counts = self.rejected_counts()
        if counts:
            text += " (" + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) + ")"
        return text


@dataclass
class _Item:
    rel: str  # path relative to the split root (what the manifest stores), '/'-separated
    rel_root: str  # path relative to ROOT (what rejected.tsv stores)
    split_root: str  # absolute directory written on the manifest's first line
    split: str = ""  # fixed split name with --splits-from-subdirs, else assigned later
    frames: int = 0
    sample_rate: int = 0
    utt: str = ""
    spk: Optional[str] = None
    words: Optional[str] = None
    reason: Optional[str] = None


def reason_category(reason: str) -> str:
    return reason.split(":", 1)[0].strip()


def utterance_id(rel: str) -> str:
    """Stable utterance id: the manifest-relative path minus its extension, '/'-separated, whitespace -> '_'.

    Keeping the directories makes ids unique (LibriSpeech ``103/1240/103-1240-0000``, VoxCeleb
    ``id10270/5r0dWxy17C8/00001``) and matches VoxCeleb's own trial lists minus the extension.
    """
    stem = os.path.splitext(rel)[0]
    return re.sub(r"\s", "_", stem)


def _parse_exts(ext: str) -> Tuple[str, ...]:
    exts = tuple("." + e.strip().lower().lstrip(".") for e in ext.split(",") if e.strip())
    if not exts:
        raise ManifestError(f"--ext: expected comma-separated extensions such as 'wav,flac', got {ext!r}")
    return exts


def _walk(top: str, exts: Tuple[str, ...], transcript_files: List[str]) -> List[str]:
    """Absolute paths of audio files under ``top``, sorted by path; also collects ``*.trans.txt`` files."""
    found = []
    seen = set()
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # symlink loop
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            if name.endswith(".trans.txt"):
                transcript_files.append(full)
            elif os.path.splitext(name)[1].lower() in exts and os.path.isfile(full):
                found.append(full)
    transcript_files.sort()
    return sorted(found)


def _posix_rel(path: str, start: str) -> str:
    return os.path.relpath(path, start).replace(os.sep, "/")


def _check_audio(item: _Item, path: str, sample_rate: int, min_seconds: float,
                 max_seconds: Optional[float], verify_decode: bool) -> Optional[str]:
    import soundfile as sf

    try:
        info = sf.info(path)
    except Exception as e:  # soundfile raises LibsndfileError/RuntimeError/TypeError for broken files
        detail = (str(e).strip() or type(e).__name__).replace(f"Error opening {path!r}: ", "")
        return f"{R_UNREADABLE}: {detail}".replace("\n", " ").replace("\t", " ")
    item.frames, item.sample_rate = int(info.frames), int(info.samplerate)
    if item.frames <= 0:
        return f"{R_EMPTY}: 0 frames"
    if info.channels != 1:
        return f"{R_NOT_MONO}: {info.channels} channels, expected 1"
    if sample_rate and item.sample_rate != sample_rate:
        return f"{R_SAMPLE_RATE}: {item.sample_rate} Hz, expected {sample_rate} Hz"
    truncated = truncation(info)
    if truncated:
        return f"{R_TRUNCATED}: {truncated}"
    seconds = item.frames / item.sample_rate
    if seconds < min_seconds:
        return f"{R_TOO_SHORT}: {seconds:.3f} s < --min-seconds {min_seconds:g}"
    if max_seconds is not None and seconds > max_seconds:
        return f"{R_TOO_LONG}: {seconds:.3f} s > --max-seconds {max_seconds:g}"
    if verify_decode:
        decoded, nonfinite, first = 0, 0, -1
        try:
            for block in sf.blocks(path, blocksize=1 << 16, dtype="float32", always_2d=True):
                bad = ~np.isfinite(block).all(axis=1)
                if bad.any() and first < 0:
                    first = decoded + int(np.argmax(bad))
                nonfinite += int(bad.sum())
                decoded += len(block)
        except Exception as e:
            return f"{R_UNREADABLE}: decoding failed: {str(e).strip() or type(e).__name__}".replace("\n", " ")
        if decoded != item.frames:
            return f"{R_DECODE}: header says {item.frames} frames, decoded {decoded}"
        if nonfinite:
            return f"{R_NONFINITE}: {nonfinite} NaN/Inf samples, the first at sample {first}"
    return None


def _speaker(rel: str, layout: str, regex: Optional[re.Pattern]) -> Tuple[Optional[str], Optional[str]]:
    """Returns ``(speaker, rejection_reason)``."""
    if layout == "none":
        return None, None
    if layout == "regex":
        m = regex.search(rel)
        if not m or not m.group("spk"):
            return None, f"{R_SPK_REGEX}: {regex.pattern!r}"
        spk = m.group("spk")
    else:
        parts = rel.split("/")
        if len(parts) < 3:
            expected = "SPEAKER/CHAPTER/FILE" if layout == "librispeech" else "idXXXXX/VIDEO/FILE"
            return None, f"{R_SPK_LAYOUT}: expected {expected} ({layout} layout)"
        spk = parts[-3]
    return re.sub(r"\s", "_", spk), None


def _read_librispeech_transcripts(files: Sequence[str]) -> Dict[Tuple[str, str], str]:
    """``(directory, utterance stem) -> WORDS`` from ``SPEAKER-CHAPTER.trans.txt`` (``UTTID WORDS...``)."""
    table = {}
    for path in files:
        d = os.path.dirname(os.path.abspath(path))
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, start=1):
                line = line.strip()
                if not line:
                    continue
                parts = line.split(None, 1)
                if len(parts) < 2:
                    logger.warning("%s:%d: expected 'UTTID WORDS...', found %r; utterance has no words",
                                   path, i, line)
                    continue
                table[(d, parts[0])] = " ".join(parts[1].split()).upper()
    return table


def _read_sidecar(path: str) -> Optional[str]:
    stem = os.path.splitext(path)[0]
    for ext in SIDECAR_EXTS:
        cand = stem + ext
        if os.path.isfile(cand):
            with open(cand, encoding="utf-8") as f:
                return " ".join(f.read().split()).upper()
    return None


def _hash01(seed: int, key: str) -> float:
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _assign_splits(items: List[_Item], valid_percent: float, seed: int, split_by: str) -> None:
    """Seeded train/valid split: items (or speakers) sorted by a hash of (seed, id); the first go to valid.

    The valid share is ``round(valid_percent * n)`` utterances (at least one when ``valid_percent > 0`` and
    there are two or more candidates); with ``split_by='speaker'`` whole speakers move until it is reached.
    """
    for it in items:
        it.split = "train"
    n = len(items)
    if valid_percent <= 0 or n == 0:
        return
    target = round(valid_percent * n)
    if split_by == "utterance":
        if target == 0 and n >= 2:
            target = 1
        for it in sorted(items, key=lambda it: (_hash01(seed, it.utt), it.utt))[:target]:
            it.split = "valid"
        return
    by_spk: Dict[str, List[_Item]] = OrderedDict()
    for it in items:
        by_spk.setdefault(it.spk, []).append(it)
    if target == 0 and len(by_spk) >= 2:
        target = 1
    moved = 0
    for spk in sorted(by_spk, key=lambda s: (_hash01(seed, s), s)):
        if moved >= target:
            break
        if valid_percent < 1 and moved + len(by_spk[spk]) >= n:
            continue  # never move every speaker to valid unless asked to
        for it in by_spk[spk]:
            it.split = "valid"
        moved += len(by_spk[spk])


def build_manifest(
    root: str,
    dest: str,
    ext: str = "wav,flac",
    valid_percent: float = 0.01,
    seed: int = 0,
    speaker_layout: str = "none",
    speaker_regex: Optional[str] = None,
    transcripts: str = "auto",
    min_seconds: float = 0.5,
    max_seconds: Optional[float] = None,
    sample_rate: int = 16000,
    on_bad: str = "skip",
    split_by: str = "utterance",
    splits_from_subdirs: bool = False,
    verify_decode: bool = False,
) -> Report:
    """Scan ``root`` and write manifests + side files to ``dest``; see the module docstring and README.md.

    Raises :class:`BadFilesError` (``on_bad='fail'``) listing every bad file, or :class:`ManifestError` for
    invalid options. With ``on_bad='fail'`` nothing is written when a file is bad.
    """
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        raise ManifestError(f"{root}: expected a directory of audio files")
    exts = _parse_exts(ext)
    if speaker_layout not in SPEAKER_LAYOUTS:
        raise ManifestError(f"speaker_layout must be one of {SPEAKER_LAYOUTS}, got {speaker_layout!r}")
    if transcripts not in TRANSCRIPT_MODES:
        raise ManifestError(f"transcripts must be one of {TRANSCRIPT_MODES}, got {transcripts!r}")
    if on_bad not in ("skip", "fail"):
        raise ManifestError(f"on_bad must be 'skip' or 'fail', got {on_bad!r}")
    if split_by not in ("utterance", "speaker"):
        raise ManifestError(f"split_by must be 'utterance' or 'speaker', got {split_by!r}")
    if not 0 <= valid_percent <= 1:
        raise ManifestError(f"valid_percent must be a fraction in [0, 1], got {valid_percent}")
    if split_by == "speaker" and speaker_layout == "none" and not splits_from_subdirs:
        raise ManifestError("split_by='speaker' needs a speaker layout (librispeech, voxceleb or regex)")
    regex = None
    if speaker_layout == "regex":
        if not speaker_regex:
            raise ManifestError("speaker_layout='regex' needs --speaker-regex with a group (?P<spk>...)")
        try:
            regex = re.compile(speaker_regex)
        except re.error as e:
            raise ManifestError(f"--speaker-regex {speaker_regex!r} is not a valid regex: {e}") from None
        if "spk" not in regex.groupindex:
            raise ManifestError(f"--speaker-regex {speaker_regex!r} has no named group 'spk' "
                                "such as (?P<spk>[^/]+)")
    elif speaker_regex:
        logger.warning("--speaker-regex is ignored with --speaker-layout %s", speaker_layout)

    trans_files: List[str] = []
    paths = _walk(root, exts, trans_files)
    logger.info("found %d audio files (%s) under %s", len(paths), ",".join(exts), root)
    if transcripts == "librispeech" and not trans_files:
        raise ManifestError(f"{root}: --transcripts librispeech expects SPEAKER-CHAPTER.trans.txt files, "
                            "found none")

    items: List[_Item] = []
    for i, path in enumerate(paths):
        if i and i % 10000 == 0:
            logger.info("checked %d/%d files", i, len(paths))
        rel_root = _posix_rel(path, root)
        if splits_from_subdirs:
            top = rel_root.split("/", 1)[0]
            if "/" not in rel_root:
                it = _Item(rel=rel_root, rel_root=rel_root, split_root=root)
                it.reason = f"{R_NO_SPLIT}: --splits-from-subdirs expects ROOT/SPLIT/..."
                items.append(it)
                continue
            split_root = os.path.join(root, top)
            it = _Item(rel=_posix_rel(path, split_root), rel_root=rel_root, split_root=split_root, split=top)
        else:
            it = _Item(rel=rel_root, rel_root=rel_root, split_root=root)
        it.utt = utterance_id(it.rel)
        if "\t" in it.rel or "\n" in it.rel:
            it.reason = f"{R_BAD_PATH}: the path contains a tab or newline, which the manifest cannot store"
            items.append(it)
            continue
        it.reason = _check_audio(it, path, sample_rate, min_seconds, max_seconds, verify_decode)
        if it.reason is None:
            it.spk, it.reason = _speaker(it.rel, speaker_layout, regex)
        items.append(it)

    # Transcripts.
    source = "none"
    if transcripts != "none":
        if trans_files:
            source = "librispeech"
            table = _read_librispeech_transcripts(trans_files)
            for it, path in zip(items, paths):
                stem = os.path.splitext(os.path.basename(path))[0]
                it.words = table.get((os.path.dirname(path), stem))
        elif transcripts == "auto":
            for it, path in zip(items, paths):
                it.words = _read_sidecar(path)
            if any(it.words is not None for it in items):
                source = "sidecar"
        for it in items:
            if source != "none" and it.reason is None and not it.words:
                where = ("in its chapter's SPEAKER-CHAPTER.trans.txt" if source == "librispeech"
                         else f"no non-empty sidecar {'/'.join(SIDECAR_EXTS)} with the same stem")
                it.reason = f"{R_NO_TRANSCRIPT}: {where}"

    # Duplicate utterance ids within a manifest (e.g. a.wav next to a.flac).
    seen: Dict[Tuple[str, str], str] = {}
    for it in items:
        if it.reason is None:
            key = (it.split_root, it.utt)
            if key in seen:
                it.reason = f"{R_DUPLICATE}: {it.utt!r} already used by {seen[key]}"
            else:
                seen[key] = it.rel_root

    kept = [it for it in items if it.reason is None]
    rejected = [(it.rel_root, it.reason) for it in items if it.reason is not None]
    if not kept:  # write nothing: empty manifests would only fail later, further from the cause
        lines = "".join(f"\n  {rel}: {reason}" for rel, reason in rejected[:20])
        more = f"\n  ... and {len(rejected) - 20} more" if len(rejected) > 20 else ""
        raise BadFilesError(f"no usable audio files under {root} ({len(paths)} found with extension "
                            f"{','.join(exts)}, {len(rejected)} rejected); nothing written to "
                            f"{os.path.abspath(dest)}{lines}{more}", rejected)
    if rejected and on_bad == "fail":
        lines = "\n".join(f"  {rel}: {reason}" for rel, reason in rejected)
        raise BadFilesError(f"{len(rejected)} bad audio file(s) under {root} (of {len(items)}; "
                            f"--on-bad fail):\n{lines}", rejected)

    if splits_from_subdirs:
        if valid_percent not in (0, 0.01):
            logger.warning("--valid-percent is ignored with --splits-from-subdirs")
        split_names = sorted({it.split for it in items if it.split})
    else:
        _assign_splits(kept, valid_percent, seed, split_by)
        split_names = ["train"] + (["valid"] if valid_percent > 0 else [])

    report = Report(root=root, dest=os.path.abspath(dest), rejected=rejected, transcripts=source)
    os.makedirs(dest, exist_ok=True)
    has_spk = speaker_layout != "none"
    letter_counts: Counter = Counter()
    for split in split_names:
        rows = [it for it in kept if it.split == split]
        split_root = os.path.join(root, split) if splits_from_subdirs else root
        outputs = {"tsv": None, "utt": [it.utt for it in rows]}
        if has_spk:
            outputs["spk"] = [it.spk for it in rows]
        if source != "none":
            outputs["wrd"] = [it.words for it in rows]
            outputs["ltr"] = [words_to_letters(it.words) for it in rows]
            for ltr in outputs["ltr"]:
                letter_counts.update(ltr.split())
        for suffix, lines in outputs.items():
            out = os.path.join(dest, f"{split}.{suffix}")
            if suffix == "tsv":
                write_manifest(out, split_root, [(it.rel, it.frames) for it in rows])
            else:
                write_lines(out, lines)
            report.written.append(out)
        for suffix in SIDE_EXTS:  # a stale side file from an earlier run would no longer be line-parallel
            stale = os.path.join(dest, f"{split}.{suffix}")
            if suffix not in outputs and os.path.exists(stale):
                os.remove(stale)
                logger.warning("removed stale %s (not produced by this run)", stale)
        report.kept[split] = len(rows)
        report.seconds[split] = sum(it.frames / it.sample_rate for it in rows)

    if source != "none":
        symbols = sorted(letter_counts, key=lambda s: (-letter_counts[s], s))
        out = os.path.join(dest, "dict.ltr.txt")
        write_dictionary(out, symbols, [letter_counts[s] for s in symbols])
        report.written.append(out)
    if on_bad == "skip":
        out = os.path.join(dest, "rejected.tsv")
        write_lines(out, [f"{rel}\t{reason}" for rel, reason in rejected])
        report.written.append(out)
    if not splits_from_subdirs and valid_percent <= 0 and os.path.exists(os.path.join(dest, "valid.tsv")):
        logger.warning("%s exists from an earlier run; this run wrote only train.tsv",
                       os.path.join(dest, "valid.tsv"))

    if "valid" in report.kept and report.kept["valid"] == 0:
        logger.warning("valid split is empty (valid_percent=%g, %d kept files)", valid_percent,
                       report.total_kept)
    for split in split_names:
        logger.info("%s: %d files, %.2f h -> %s", split, report.kept[split], report.seconds[split] / 3600,
                    os.path.join(dest, f"{split}.tsv"))
    for reason, count in sorted(report.rejected_counts().items()):
        logger.warning("rejected %d file(s): %s", count, reason)
    if rejected:
        logger.warning("rejected files and reasons: %s", os.path.join(dest, "rejected.tsv"))
    logger.info("%s", report.summary())
    return report


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m manifests.build_manifest",
        description="Write fairseq wav2vec manifests (train.tsv/valid.tsv) plus .utt/.spk/.wrd/.ltr side "
                    "files, dict.ltr.txt and rejected.tsv for the audio files under ROOT.")
    p.add_argument("root", metavar="ROOT", help="directory searched recursively for audio files")
    p.add_argument("--dest", required=True, help="output directory for {split}.tsv and side files")
    p.add_argument("--ext", default="wav,flac", help="comma-separated audio extensions (default: wav,flac)")
    p.add_argument("--valid-percent", type=float, default=0.01,
                   help="fraction of files (0..1) put in valid.tsv; 0 writes only train.tsv (default: 0.01)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/valid split (default: 0)")
    p.add_argument("--speaker-layout", choices=SPEAKER_LAYOUTS, default="none",
                   help="how to find speaker ids for {split}.spk: librispeech SPEAKER/CHAPTER/FILE, voxceleb "
                        "idXXXXX/VIDEO/FILE (speaker = directory two levels above the file), regex "
                        "(--speaker-regex), none (no .spk file; default)")
    p.add_argument("--speaker-regex",
                   help="with --speaker-layout regex: regular expression searched in the relative path, with "
                        "a named group 'spk', e.g. '^(?P<spk>[^/]+)/'; non-matching files are rejected")
    p.add_argument("--transcripts", choices=TRANSCRIPT_MODES, default="auto",
                   help="librispeech: SPEAKER-CHAPTER.trans.txt files; auto: those if present, else sidecar "
                        ".txt/.lab files with the audio file's stem; none: no .wrd/.ltr (default: auto)")
    p.add_argument("--min-seconds", type=float, default=0.5,
                   help="reject files shorter than this many seconds (default: 0.5)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="reject files longer than this many seconds (default: no limit)")
    p.add_argument("--sample-rate", type=int, default=16000,
                   help="required sample rate in Hz; other rates are rejected; 0 accepts any "
                        "(default: 16000)")
    p.add_argument("--on-bad", choices=("skip", "fail"), default="skip",
                   help="skip: leave bad files out and list them in DEST/rejected.tsv; fail: exit non-zero "
                        "listing every bad file and writing nothing (default: skip)")
    p.add_argument("--split-by", choices=("utterance", "speaker"), default="utterance",
                   help="unit of the train/valid split; speaker keeps each speaker in one split "
                        "(needs a speaker layout; default: utterance)")
    p.add_argument("--splits-from-subdirs", action="store_true",
                   help="each top-level subdirectory of ROOT becomes its own split named after it "
                        "(e.g. dev-clean.tsv); --valid-percent is then ignored")
    p.add_argument("--verify-decode", action="store_true",
                   help="also decode every file fully and reject it if the decoded length differs from the "
                        "header or a sample is NaN/Inf (slow; default: header only)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    cli_logging()
    try:
        report = build_manifest(
            args.root, args.dest, ext=args.ext, valid_percent=args.valid_percent, seed=args.seed,
            speaker_layout=args.speaker_layout, speaker_regex=args.speaker_regex,
            transcripts=args.transcripts,
            min_seconds=args.min_seconds, max_seconds=args.max_seconds, sample_rate=args.sample_rate,
            on_bad=args.on_bad, split_by=args.split_by, splits_from_subdirs=args.splits_from_subdirs,
            verify_decode=args.verify_decode)
    except ManifestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    logger.debug("%s", report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
