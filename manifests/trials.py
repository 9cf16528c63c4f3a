"""Make a balanced speaker-verification trial list from a manifest's ``.spk`` and ``.utt`` side files.

Reads ``{split}.tsv``, ``{split}.spk`` and ``{split}.utt`` from a manifest directory written by
``manifests.build_manifest`` and writes ``{split}.trials`` with one trial per line, ``LABEL UTT_A UTT_B``
(VoxCeleb's format): label ``1`` for two utterances of the same speaker, ``0`` for different speakers. Half of
the trials are target (same-speaker) pairs and half non-target; no utterance is paired with itself and no
unordered pair occurs twice. The list depends only on the side files and the seed. When fewer distinct pairs
exist than requested, both halves are shrunk to the same size (with a warning) so the list stays balanced.
"""
import argparse
import logging
import os
import random
import sys
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Set, Tuple

from fairseq_plugins.compat import cli_logging
from fairseq_plugins.data.manifest_io import ManifestError, read_lines, read_manifest, write_lines

logger = logging.getLogger(__name__)

Trial = Tuple[int, str, str]


def load_speakers(manifest_dir: str, split: str) -> Tuple[List[str], List[str]]:
    """``(utterance ids, speaker ids)``, line-parallel with ``{split}.tsv``; lengths and ids checked."""
    tsv = os.path.join(manifest_dir, f"{split}.tsv")
    for suffix in ("tsv", "spk", "utt"):
        path = os.path.join(manifest_dir, f"{split}.{suffix}")
        if not os.path.isfile(path):
            hint = " (build the manifest with --speaker-layout)" if suffix == "spk" else ""
            raise ManifestError(f"{path}: expected the {split} manifest's .{suffix} file, not found{hint}")
    _, rows = read_manifest(tsv)
    spks = read_lines(os.path.join(manifest_dir, f"{split}.spk"), expected=len(rows))
    utt_path = os.path.join(manifest_dir, f"{split}.utt")
    utts = read_lines(utt_path, expected=len(rows))
    seen: Dict[str, int] = {}
    for i, u in enumerate(utts, start=1):
        if not u or any(c.isspace() for c in u):
            raise ManifestError(f"{utt_path}:{i}: expected a non-empty utterance id without whitespace, "
                                f"got {u!r}")
        if u in seen:
            raise ManifestError(f"{utt_path}:{i}: utterance id {u!r} already on line {seen[u]}")
        seen[u] = i
    return utts, spks


def _sample_pairs(target: int, possible: int, enumerate_all, draw,
                  rng: random.Random) -> List[Tuple[int, int]]:
    """``target`` distinct unordered pairs: sample all pairs when the pool is small, else by rejection."""
    if target <= 0:
        return []
    if target * 2 >= possible:
        pool = enumerate_all()
        return rng.sample(pool, target)
    chosen: List[Tuple[int, int]] = []
    seen: Set[Tuple[int, int]] = set()
    while len(chosen) < target:
        a, b = draw()
        key = (a, b) if a < b else (b, a)
        if key not in seen:
            seen.add(key)
            chosen.append((a, b))
    return chosen


def make_trials(utts: Sequence[str], spks: Sequence[str], num_trials: int, seed: int = 0,
                source: str = "the manifest") -> List[Trial]:
    """Balanced trials ``(label, utt_a, utt_b)``: ``num_trials // 2`` per label when that many pairs exist."""
    if len(utts) != len(spks):
        raise ManifestError(f"{source}: {len(utts)} utterance ids but {len(spks)} speaker ids")
    if num_trials < 2:
        raise ManifestError(f"num_trials must be at least 2 (one target, one non-target), got {num_trials}")
    by_spk: Dict[str, List[int]] = OrderedDict()
    for i, s in enumerate(spks):
        by_spk.setdefault(s, []).append(i)
    if len(by_spk) < 2:
        raise ManifestError(f"{source}: non-target trials need at least 2 speakers, found {len(by_spk)}")
    multi = [s for s, idx in by_spk.items() if len(idx) >= 2]
    if not multi:
        raise ManifestError(f"{source}: target trials need a speaker with at least 2 utterances, "
                            f"but all {len(by_spk)} speakers have one")

    n = len(utts)
    possible_pos = sum(len(idx) * (len(idx) - 1) // 2 for idx in by_spk.values())
    possible_neg = n * (n - 1) // 2 - possible_pos
    half = num_trials // 2
    if num_trials % 2:
        logger.warning("num_trials=%d is odd; writing %d to keep the list balanced", num_trials, 2 * half)
    per_label = min(half, possible_pos, possible_neg)
    if per_label < half:
        logger.warning("%s has only %d target and %d non-target pairs; writing %d trials of each label "
                       "instead of %d", source, possible_pos, possible_neg, per_label, half)

    rng = random.Random(seed)
    spk_of = list(spks)
    # Target pairs: a speaker with probability proportional to its pair count, then two of its utterances.
    weights = [len(by_spk[s]) * (len(by_spk[s]) - 1) // 2 for s in multi]

    def all_pos():
        return [(idx[a], idx[b]) for s in multi for idx in [by_spk[s]]
                for a in range(len(idx)) for b in range(a + 1, len(idx))]

    def draw_pos():
        idx = by_spk[rng.choices(multi, weights=weights)[0]]
        a, b = rng.sample(range(len(idx)), 2)
        return idx[a], idx[b]

    # Non-target pairs: a random utterance, then a random utterance of any other speaker.
    order = [i for idx in by_spk.values() for i in idx]  # utterances grouped by speaker
    start: Dict[str, int] = {}
    pos = 0
    for s, idx in by_spk.items():
        start[s] = pos
        pos += len(idx)

    def all_neg():
        return [(a, b) for a in range(n) for b in range(a + 1, n) if spk_of[a] != spk_of[b]]

    def draw_neg():
        a = rng.randrange(n)
        s = spk_of[a]
        k = rng.randrange(n - len(by_spk[s]))
        if k >= start[s]:
            k += len(by_spk[s])
        return a, order[k]

    pairs = [(1, a, b) for a, b in _sample_pairs(per_label, possible_pos, all_pos, draw_pos, rng)]
    pairs += [(0, a, b) for a, b in _sample_pairs(per_label, possible_neg, all_neg, draw_neg, rng)]
    rng.shuffle(pairs)
    return [(label, utts[a], utts[b]) for label, a, b in pairs]


def write_trials(path: str, trials: Sequence[Trial]) -> None:
    write_lines(path, [f"{label} {a} {b}" for label, a, b in trials])


def build_trials(manifest_dir: str, split: str = "test", num_trials: int = 2000, seed: int = 0,
                 output: Optional[str] = None) -> str:
    """Read the split's side files, write ``{split}.trials`` (or ``output``); returns the path written."""
    utts, spks = load_speakers(manifest_dir, split)
    trials = make_trials(utts, spks, num_trials, seed, source=os.path.join(manifest_dir, f"{split}.spk"))
    out = output or os.path.join(manifest_dir, f"{split}.trials")
    write_trials(out, trials)
    n_pos = sum(t[0] for t in trials)
    logger.info("wrote %d trials (%d target, %d non-target; %d utterances, %d speakers) to %s",
                len(trials), n_pos, len(trials) - n_pos, len(utts), len(set(spks)), out)
    return out


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m manifests.trials",
                                description="Write a balanced speaker-verification trial list {split}.trials "
                                            "('1 utt_a utt_b' same speaker, '0 utt_a utt_b' different).")
    p.add_argument("--manifest-dir", required=True, help="directory holding {split}.tsv, .spk and .utt")
    p.add_argument("--split", default="test", help="manifest split name (default: test)")
    p.add_argument("--num-trials", type=int, default=2000,
                   help="total number of trials, half target and half non-target (default: 2000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--output", default=None, help="output path (default: MANIFEST_DIR/{split}.trials)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    cli_logging()
    try:
        build_trials(args.manifest_dir, args.split, args.num_trials, args.seed, args.output)
    except (ManifestError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
