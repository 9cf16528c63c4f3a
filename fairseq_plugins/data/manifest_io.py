"""Reading and writing fairseq audio manifests and their line-parallel side files.

fairseq's audio manifest (``examples/wav2vec/wav2vec_manifest.py``): line 1 is the root directory, every other
line is ``relative/path<TAB>num_samples``. Side files (``{split}.wrd``, ``{split}.ltr``, ``{split}.spk``,
``{split}.km`` ...) hold one line per manifest entry, in the same order; fairseq's label datasets rely on that.
"""
import os
from typing import List, Sequence, Tuple


class ManifestError(ValueError):
    """A manifest or side file is malformed; the message names the file and line."""


def write_manifest(path: str, root: str, rows: Sequence[Tuple[str, int]]) -> None:
    """Write a fairseq manifest. ``rows`` are ``(relative_path, num_samples)``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        print(os.path.abspath(root), file=f)
        for rel, n in rows:
            if "\t" in rel or "\n" in rel:
                raise ManifestError(f"{path}: path {rel!r} contains a tab or newline")
            print(f"{rel}\t{int(n)}", file=f)


def read_manifest_entries(path: str) -> Tuple[str, List[Tuple[str, int, int]]]:
    """Read a fairseq manifest; returns ``(root, [(relative_path, num_samples, line_number), ...])``.

    ``line_number`` is 1-based in the file (the root is line 1), so errors about an entry can name it.
    """
    with open(path) as f:
        lines = f.read().split("\n")
    if not lines or not lines[0].strip():
        raise ManifestError(f"{path}:1: expected the root directory on the first line, found an empty line")
    root = lines[0].strip()
    rows = []
    for i, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2:
            raise ManifestError(f"{path}:{i}: expected 'relative/path<TAB>num_samples', found {line!r}")
        try:
            n = int(parts[1])
        except ValueError:
            raise ManifestError(f"{path}:{i}: num_samples must be an integer, found {parts[1]!r}") from None
        rows.append((parts[0], n, i))
    return root, rows


def read_manifest(path: str) -> Tuple[str, List[Tuple[str, int]]]:
    """Read a fairseq manifest; returns ``(root, [(relative_path, num_samples), ...])``."""
    root, rows = read_manifest_entries(path)
    return root, [(rel, n) for rel, n, _ in rows]


def write_lines(path: str, lines: Sequence[str]) -> None:
    """Write a line-parallel side file (one line per manifest entry)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        for line in lines:
            if "\n" in line:
                raise ManifestError(f"{path}: a side-file entry contains a newline: {line!r}")
            print(line, file=f)


def read_lines(path: str, expected: int = -1) -> List[str]:
    """Read a side file; with ``expected >= 0`` the line count must match the manifest."""
    with open(path) as f:
        lines = f.read().rstrip("\n").split("\n")
    if lines == [""]:
        lines = []
    if expected >= 0 and len(lines) != expected:
        raise ManifestError(f"{path}: has {len(lines)} lines but its manifest has {expected} entries")
    return lines


def words_to_letters(words: str) -> str:
    """fairseq librispeech recipe letter format: ``HELLO WORLD`` -> ``H E L L O | W O R L D |``."""
    return " ".join(list(words.strip().replace(" ", "|"))) + " |"


def write_dictionary(path: str, symbols: Sequence[str], counts: Sequence[int] = ()) -> None:
    """Write a fairseq ``dict.*.txt`` (``symbol count`` per line)."""
    counts = list(counts) or [1] * len(symbols)
    write_lines(path, [f"{s} {c}" for s, c in zip(symbols, counts)])
