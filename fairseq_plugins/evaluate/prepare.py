"""Two small data preparation steps for evaluating on real corpora (see README.md in this folder).

``phones``: write ``{split}.phn`` (one phone sequence per manifest entry) and ``dict.phn.txt`` from the
``{split}.wrd`` transcripts and a pronunciation lexicon (``WORD PH1 PH2 ...`` per line, e.g. LibriSpeech's
``librispeech-lexicon.txt`` from openslr.org/11, which SUPERB's phone recognition uses; the first
pronunciation of a word wins, stress digits are stripped unless ``--keep-stress``).

``split``: carve named splits out of one manifest with a list file of ``SPLIT_ID PATH`` lines, e.g. VoxCeleb1's
official ``iden_split.txt`` (``1`` train, ``2`` validation, ``3`` test) for speaker identification. Every side
file of the source split is subset alongside. ``PATH`` is matched against the end of the manifest-relative
paths, so the list works whatever directory the corpus sits under.

    python -m fairseq_plugins.evaluate.prepare phones --manifest-dir DIR --splits train-clean-100 dev-clean \\
        test-clean --lexicon librispeech-lexicon.txt
    python -m fairseq_plugins.evaluate.prepare split --manifest-dir DIR --split all --list iden_split.txt \\
        --names 1=sid_train 2=sid_valid 3=sid_test
"""
import argparse
import glob
import logging
import os
import re
import sys
from collections import Counter
from typing import Dict, List, Optional, Sequence

from fairseq_plugins.compat import cli_logging
from fairseq_plugins.data.manifest_io import (
    ManifestError,
    read_lines,
    read_manifest,
    write_dictionary,
    write_lines,
    write_manifest,
)

logger = logging.getLogger(__name__)


def read_lexicon(path: str, keep_stress: bool = False) -> Dict[str, List[str]]:
    """``WORD -> phones`` (upper-case words; first pronunciation kept; stress digits stripped by default)."""
    lexicon: Dict[str, List[str]] = {}
    for n, line in enumerate(read_lines(path), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2:
            raise ManifestError(f"{path}:{n}: expected 'WORD PHONE ...', got {line!r}")
        word = parts[0].upper()
        if word not in lexicon:
            lexicon[word] = [p if keep_stress else re.sub(r"\d+$", "", p) for p in parts[1:]]
    return lexicon


def write_phones(manifest_dir: str, splits: Sequence[str], lexicon_path: str, keep_stress: bool = False) -> Dict:
    """Write ``{split}.phn`` for every split and ``dict.phn.txt``; raises on out-of-lexicon words."""
    lexicon = read_lexicon(lexicon_path, keep_stress)
    counts: Counter = Counter()
    outputs = {}
    for split in splits:
        _, rows = read_manifest(os.path.join(manifest_dir, f"{split}.tsv"))
        words = read_lines(os.path.join(manifest_dir, f"{split}.wrd"), expected=len(rows))
        oov = Counter(w for line in words for w in line.upper().split() if w not in lexicon)
        if oov:
            raise ManifestError(f"{manifest_dir}/{split}.wrd: {len(oov)} words are not in {lexicon_path}, e.g. "
                                f"{', '.join(w for w, _ in oov.most_common(5))}")
        lines = [" ".join(p for w in line.upper().split() for p in lexicon[w]) for line in words]
        for line in lines:
            counts.update(line.split())
        outputs[split] = lines
    for split, lines in outputs.items():
        write_lines(os.path.join(manifest_dir, f"{split}.phn"), lines)
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    write_dictionary(os.path.join(manifest_dir, "dict.phn.txt"), [k for k, _ in items], [v for _, v in items])
    logger.info("wrote %s.phn and dict.phn.txt (%d phones) in %s", ",".join(splits), len(items), manifest_dir)
    return {"phones": len(items), "utterances": {s: len(v) for s, v in outputs.items()}}


def split_by_list(manifest_dir: str, split: str, list_path: str, names: Dict[str, str]) -> Dict[str, int]:
    """Write ``{names[id]}.tsv`` and subsets of every ``{split}.*`` side file; returns entries per new split."""
    root, rows = read_manifest(os.path.join(manifest_dir, f"{split}.tsv"))
    sides = {}
    for path in sorted(glob.glob(os.path.join(manifest_dir, f"{split}.*"))):
        suffix = path[len(os.path.join(manifest_dir, split)) + 1:]
        if suffix in ("tsv", "trials") or "." in suffix:
            continue
        try:
            sides[suffix] = read_lines(path, expected=len(rows))
        except ManifestError as e:
            logger.warning("not a side file, left out: %s", e)
    wanted: Dict[str, str] = {}
    depth = 0
    for n, line in enumerate(read_lines(list_path), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise ManifestError(f"{list_path}:{n}: expected 'SPLIT_ID PATH', got {line!r}")
        if parts[0] in names:
            wanted[parts[1].strip("/")] = names[parts[0]]
            depth = max(depth, parts[1].strip("/").count("/") + 1)
    chosen: Dict[str, List[int]] = {name: [] for name in names.values()}
    for i, (rel, _) in enumerate(rows):
        key = "/".join(rel.split("/")[-depth:]) if depth else rel
        if key in wanted:
            chosen[wanted[key]].append(i)
    found = sum(len(v) for v in chosen.values())
    if found < len(wanted):
        logger.warning("%d of %d listed files are not in %s.tsv", len(wanted) - found, len(wanted), split)
    for name, idx in chosen.items():
        if not idx:
            raise ManifestError(f"{list_path}: no entry of {split}.tsv falls in split {name!r}")
        write_manifest(os.path.join(manifest_dir, f"{name}.tsv"), root, [rows[i] for i in idx])
        for suffix, lines in sides.items():
            write_lines(os.path.join(manifest_dir, f"{name}.{suffix}"), [lines[i] for i in idx])
    counts = {name: len(idx) for name, idx in chosen.items()}
    logger.info("split %s.tsv by %s: %s", split, list_path, counts)
    return counts


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fairseq_plugins.evaluate.prepare",
                                description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    ph = sub.add_parser("phones", help="write {split}.phn and dict.phn.txt from {split}.wrd and a lexicon")
    ph.add_argument("--manifest-dir", required=True, help="directory with {split}.tsv and {split}.wrd")
    ph.add_argument("--splits", nargs="+", required=True, help="split names, e.g. train-clean-100 dev-clean")
    ph.add_argument("--lexicon", required=True, help="pronunciation lexicon, 'WORD PH1 PH2 ...' per line")
    ph.add_argument("--keep-stress", action="store_true", help="keep stress digits (AH0 vs AH1; default: strip)")
    sp = sub.add_parser("split", help="carve named splits out of a manifest with a 'SPLIT_ID PATH' list")
    sp.add_argument("--manifest-dir", required=True, help="directory with {split}.tsv and its side files")
    sp.add_argument("--split", required=True, help="the source split name")
    sp.add_argument("--list", required=True, help="list file, e.g. VoxCeleb1 iden_split.txt")
    sp.add_argument("--names", nargs="+", required=True, metavar="ID=NAME",
                    help="new split name per list id, e.g. 1=sid_train 2=sid_valid 3=sid_test")
    args = p.parse_args(argv)
    cli_logging()
    try:
        if args.command == "phones":
            write_phones(args.manifest_dir, args.splits, args.lexicon, args.keep_stress)
        else:
            names = dict(n.split("=", 1) for n in args.names)
            split_by_list(args.manifest_dir, args.split, args.list, names)
    except (ManifestError, FileNotFoundError, ValueError) as e:
        logger.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
