"""Tests for manifests.trials: balanced, valid, deterministic speaker-verification trial lists."""
import os

import pytest

from manifests.manifest_io import ManifestError, write_lines, write_manifest
from manifests.trials import build_trials, main, make_trials


def _write_split(d, spk_counts, split="test"):
    rows, spks, utts = [], [], []
    for spk, n in spk_counts.items():
        for u in range(n):
            rows.append((f"{spk}/v/{u:05d}.wav", 16000))
            spks.append(spk)
            utts.append(f"{spk}/v/{u:05d}")
    write_manifest(os.path.join(d, f"{split}.tsv"), str(d), rows)
    write_lines(os.path.join(d, f"{split}.spk"), spks)
    write_lines(os.path.join(d, f"{split}.utt"), utts)
    return dict(zip(utts, spks))


def _check(lines, spk_of, expected_per_label):
    seen = set()
    labels = []
    for line in lines:
        label, a, b = line.split(" ")
        assert label in ("0", "1") and a in spk_of and b in spk_of and a != b
        assert (spk_of[a] == spk_of[b]) == (label == "1")
        key = frozenset((a, b))
        assert key not in seen, f"duplicate pair {line}"
        seen.add(key)
        labels.append(label)
    assert labels.count("1") == labels.count("0") == expected_per_label


@pytest.mark.parametrize("num_trials", [40, 2000])
def test_trials_balanced_valid_deterministic(tmp_path, num_trials):
    spk_of = _write_split(tmp_path, {"id1": 40, "id2": 30, "id3": 45, "id4": 1, "id5": 50})
    out = build_trials(str(tmp_path), "test", num_trials=num_trials, seed=0)
    assert out == str(tmp_path / "test.trials")
    lines = (tmp_path / "test.trials").read_text().splitlines()
    _check(lines, spk_of, num_trials // 2)
    assert len(lines) == num_trials
    # same seed -> same file; other seed -> different
    assert main(["--manifest-dir", str(tmp_path), "--split", "test", "--num-trials", str(num_trials),
                 "--seed", "0", "--output", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again").read_text().splitlines() == lines
    build_trials(str(tmp_path), "test", num_trials=num_trials, seed=1, output=str(tmp_path / "other"))
    assert (tmp_path / "other").read_text().splitlines() != lines


def test_trials_capped_when_few_pairs(tmp_path):
    spk_of = _write_split(tmp_path, {"A": 3, "B": 2}, split="dev")
    build_trials(str(tmp_path), "dev", num_trials=100, seed=0)
    lines = (tmp_path / "dev.trials").read_text().splitlines()
    # A: 3 pairs + B: 1 pair = 4 target pairs; 3 * 2 = 6 non-target pairs -> 4 trials of each label
    _check(lines, spk_of, 4)


def test_trials_rejects_degenerate_sets(tmp_path):
    with pytest.raises(ManifestError, match="at least 2 speakers"):
        make_trials(["a", "b", "c"], ["s", "s", "s"], 10)
    with pytest.raises(ManifestError, match="at least 2 utterances"):
        make_trials(["a", "b", "c"], ["s1", "s2", "s3"], 10)
    _write_split(tmp_path, {"only": 4})
    assert main(["--manifest-dir", str(tmp_path), "--split", "test"]) == 1
    with pytest.raises(ManifestError, match=r"test\.spk: has 3 lines but its manifest has 4"):
        write_lines(str(tmp_path / "test.spk"), ["x", "y", "z"])
        build_trials(str(tmp_path), "test")
    with pytest.raises(ManifestError, match=r"valid\.tsv.*not found"):
        build_trials(str(tmp_path), "valid")
