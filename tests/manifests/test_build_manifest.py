"""Tests for manifests.build_manifest on real (tiny) audio trees made with soundfile in tmp_path."""
import os

import numpy as np
import pytest
import soundfile as sf

from manifests.build_manifest import BadFilesError, build_manifest, main  # noqa: E402
from manifests.manifest_io import ManifestError, read_lines, read_manifest, words_to_letters  # noqa: E402

SR = 16000


def _tone(n, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    x = (0.1 * rng.standard_normal((n, channels))).astype(np.float32)
    return x[:, 0] if channels == 1 else x


def _write(path, n, sr=SR, channels=1, fmt=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(str(path), _tone(n, channels), sr, format=fmt)


def make_librispeech(root):
    """3 speakers x 1 chapter x 3 utterances (flac) with SPEAKER-CHAPTER.trans.txt; returns the truth."""
    truth = {}
    for spk, chap in (("103", "1240"), ("1034", "121119"), ("1040", "133433")):
        d = root / spk / chap
        lines = []
        for u in range(3):
            utt = f"{spk}-{chap}-{u:04d}"
            n = SR // 2 + 800 * u + int(spk)  # distinct lengths, all >= 0.5 s
            _write(d / f"{utt}.flac", n)
            words = f"HELLO {spk} WORLD'S END {u}" if u else "A"
            lines.append(f"{utt} {words}")
            truth[f"{spk}/{chap}/{utt}.flac"] = (n, spk, words)
        (d / f"{spk}-{chap}.trans.txt").write_text("\n".join(lines) + "\n")
    return truth


def make_voxceleb(root):
    """3 speakers x 2 videos x 2 utterances (wav); returns relpath -> (num_samples, speaker)."""
    truth = {}
    for s in range(3):
        spk = f"id1027{s}"
        for v in ("5r0dWxy17C8", "x6uYqmx31kE"):
            for u in (1, 2):
                rel = f"{spk}/{v}/{u:05d}.wav"
                n = SR + 160 * u + 1000 * s
                _write(root / rel, n)
                truth[rel] = (n, spk)
    return truth


def add_bad_files(root):
    """One bad file per reason, in a voxceleb-like place; returns relpath -> expected reason category."""
    d = root / "id10299" / "badvideo"
    d.mkdir(parents=True)
    (d / "00001.wav").write_bytes(np.random.default_rng(1).bytes(2048))  # corrupt
    sf.write(str(d / "00002.wav"), np.zeros(0, dtype=np.float32), SR)  # empty
    _write(d / "00003.wav", SR // 10)  # 0.1 s
    _write(d / "00004.wav", SR, channels=2)  # stereo
    _write(d / "00005.wav", 8000, sr=8000)  # 8 kHz, 1 s
    return {
        "id10299/badvideo/00001.wav": "unreadable",
        "id10299/badvideo/00002.wav": "empty",
        "id10299/badvideo/00003.wav": "too short",
        "id10299/badvideo/00004.wav": "not mono",
        "id10299/badvideo/00005.wav": "wrong sample rate",
    }


def read_split(dest, split):
    root, rows = read_manifest(str(dest / f"{split}.tsv"))
    side = {}
    for suffix in ("utt", "spk", "wrd", "ltr"):
        p = dest / f"{split}.{suffix}"
        if p.exists():
            side[suffix] = read_lines(str(p), expected=len(rows))
    return root, rows, side


def test_librispeech_manifest_format_and_side_files(tmp_path):
    root = tmp_path / "LibriSpeech" / "train-clean-100"
    truth = make_librispeech(root)
    dest = tmp_path / "manifest"
    report = build_manifest(str(root), str(dest), valid_percent=0, speaker_layout="librispeech")

    assert not (dest / "valid.tsv").exists()
    text = (dest / "train.tsv").read_text().splitlines()
    assert text[0] == os.path.abspath(root)
    assert text[1:] == [f"{rel}\t{n}" for rel, (n, _, _) in sorted(truth.items())]  # sorted walk order

    _, rows, side = read_split(dest, "train")
    rels = [r for r, _ in rows]
    assert side["spk"] == [truth[r][1] for r in rels]
    assert side["utt"] == [r[: -len(".flac")] for r in rels]
    assert side["utt"][0] == "103/1240/103-1240-0000"
    assert side["wrd"] == [truth[r][2] for r in rels]
    assert side["ltr"] == [words_to_letters(truth[r][2]) for r in rels]
    assert side["ltr"][0] == "A |"
    assert report.transcripts == "librispeech"
    assert report.kept == {"train": 9} and report.rejected == []
    assert report.seconds["train"] == pytest.approx(sum(n for n, _, _ in truth.values()) / SR)
    assert (dest / "rejected.tsv").read_text() == ""

    # dict.ltr.txt: every letter with its count, by count descending then symbol
    counts = {}
    for line in side["ltr"]:
        for c in line.split():
            counts[c] = counts.get(c, 0) + 1
    dict_lines = (dest / "dict.ltr.txt").read_text().splitlines()
    assert dict_lines == [f"{s} {c}" for s, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def test_split_is_deterministic_and_seeded(tmp_path):
    root = tmp_path / "vox"
    make_voxceleb(root)
    outs = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        build_manifest(str(root), str(tmp_path / name), valid_percent=0.25, seed=seed,
                       speaker_layout="voxceleb")
        outs.append({s: (tmp_path / name / f"{s}.tsv").read_text() for s in ("train", "valid")})
    assert outs[0] == outs[1]
    assert outs[0] != outs[2]
    _, train, _ = read_split(tmp_path / "a", "train")
    _, valid, _ = read_split(tmp_path / "a", "valid")
    assert len(valid) == 3 and len(train) == 9  # round(0.25 * 12)
    assert not {r for r, _ in train} & {r for r, _ in valid}
    assert [r for r, _ in train] == sorted(r for r, _ in train)  # manifest keeps walk order within a split


def test_split_by_speaker_is_disjoint(tmp_path):
    root = tmp_path / "vox"
    truth = make_voxceleb(root)
    for seed in range(4):
        dest = tmp_path / f"m{seed}"
        report = build_manifest(str(root), str(dest), valid_percent=0.3, seed=seed, speaker_layout="voxceleb",
                                split_by="speaker")
        _, train, tside = read_split(dest, "train")
        _, valid, vside = read_split(dest, "valid")
        assert set(tside["spk"]).isdisjoint(vside["spk"])
        assert len(set(vside["spk"])) == 1 and len(valid) == 4  # one 4-utterance speaker ~ 0.3 * 12
        assert report.kept == {"train": 8, "valid": 4}
        for rel, n in train + valid:
            assert truth[rel][0] == n
        assert tside["spk"] == [truth[r][1] for r, _ in train]


def test_split_by_speaker_needs_speakers(tmp_path):
    make_voxceleb(tmp_path / "vox")
    with pytest.raises(ManifestError, match="speaker layout"):
        build_manifest(str(tmp_path / "vox"), str(tmp_path / "m"), split_by="speaker")


def test_skip_mode_rejects_every_bad_file_with_reason(tmp_path, caplog):
    root = tmp_path / "vox"
    truth = make_voxceleb(root)
    bad = add_bad_files(root)
    (root / "id10270" / "toplevel.wav").write_bytes(b"")  # 0 bytes: unreadable
    _write(root / "id10270" / "5r0dWxy17C8" / "long.wav", 3 * SR)
    bad["id10270/toplevel.wav"] = "unreadable"
    bad["id10270/5r0dWxy17C8/long.wav"] = "too long"
    dest = tmp_path / "m"
    with caplog.at_level("INFO", logger="manifests.build_manifest"):
        report = build_manifest(str(root), str(dest), valid_percent=0, speaker_layout="voxceleb",
                                max_seconds=2.0)

    rejected = [line.split("\t") for line in (dest / "rejected.tsv").read_text().splitlines()]
    assert {rel: reason.split(":")[0] for rel, reason in rejected} == bad
    assert [tuple(r) for r in rejected] == report.rejected
    reasons = dict(rejected)
    assert "2 channels" in reasons["id10299/badvideo/00004.wav"]
    assert "8000 Hz, expected 16000 Hz" in reasons["id10299/badvideo/00005.wav"]
    assert "0.100 s" in reasons["id10299/badvideo/00003.wav"]
    assert report.kept == {"train": len(truth)}
    assert report.rejected_counts()["unreadable"] == 2
    _, rows, side = read_split(dest, "train")
    assert sorted(r for r, _ in rows) == sorted(truth)
    assert len(side["spk"]) == len(rows)
    log = caplog.text
    assert "rejected 1 file(s): wrong sample rate" in log and "rejected 2 file(s): unreadable" in log
    assert f"kept {len(truth)} files" in log


def test_fail_mode_lists_every_bad_file(tmp_path):
    root = tmp_path / "vox"
    make_voxceleb(root)
    bad = add_bad_files(root)
    dest = tmp_path / "m"
    with pytest.raises(BadFilesError) as ei:
        build_manifest(str(root), str(dest), on_bad="fail", speaker_layout="voxceleb")
    msg = str(ei.value)
    assert "5 bad audio file(s)" in msg
    for rel, reason in bad.items():
        assert f"  {rel}: {reason}" in msg
    assert {r for r, _ in ei.value.rejected} == set(bad)
    assert not (dest / "train.tsv").exists()  # nothing written


def test_cli_fail_mode_stderr(tmp_path, capsys):
    root = tmp_path / "vox"
    make_voxceleb(root)
    bad = add_bad_files(root)
    assert main([str(root), "--dest", str(tmp_path / "m"), "--on-bad", "fail"]) == 1
    err = capsys.readouterr().err
    assert "5 bad audio file(s)" in err and all(rel in err for rel in bad)


def test_speaker_regex(tmp_path):
    root = tmp_path / "corpus"
    for rel in ("spkA_001.wav", "spkA_002.wav", "spkB_001.flac", "sub/spkC_009.wav", "noise.wav"):
        _write(root / rel, SR)
    dest = tmp_path / "m"
    report = build_manifest(str(root), str(dest), valid_percent=0, speaker_layout="regex",
                            speaker_regex=r"(?:^|/)(?P<spk>spk[A-Z])_\d+\.\w+$")
    _, rows, side = read_split(dest, "train")
    assert [r for r, _ in rows] == ["spkA_001.wav", "spkA_002.wav", "spkB_001.flac", "sub/spkC_009.wav"]
    assert side["spk"] == ["spkA", "spkA", "spkB", "spkC"]
    assert side["utt"] == ["spkA_001", "spkA_002", "spkB_001", "sub/spkC_009"]
    assert report.rejected == [("noise.wav", report.rejected[0][1])]
    assert report.rejected[0][1].startswith("speaker regex did not match")

    with pytest.raises(ManifestError, match="named group 'spk'"):
        build_manifest(str(root), str(dest), speaker_layout="regex", speaker_regex=r"(spk[A-Z])")


def test_sidecar_transcripts_and_missing_transcript(tmp_path):
    root = tmp_path / "c"
    for i in range(3):
        _write(root / "s1" / f"u{i}.wav", SR)
    (root / "s1" / "u0.txt").write_text("hello  there\n")
    (root / "s1" / "u1.lab").write_text("General Kenobi")
    dest = tmp_path / "m"
    report = build_manifest(str(root), str(dest), valid_percent=0)
    assert report.transcripts == "sidecar"
    assert report.rejected == [("s1/u2.wav", report.rejected[0][1])]
    assert report.rejected[0][1].startswith("no transcript")
    _, rows, side = read_split(dest, "train")
    assert side["wrd"] == ["HELLO THERE", "GENERAL KENOBI"]
    assert side["ltr"] == ["H E L L O | T H E R E |", "G E N E R A L | K E N O B I |"]
    assert "spk" not in side  # speaker layout none -> no .spk


def test_librispeech_missing_transcript_and_splits_from_subdirs(tmp_path):
    root = tmp_path / "LibriSpeech"
    truth_train = make_librispeech(root / "train-clean-100")
    _write(root / "dev-clean" / "84" / "121123" / "84-121123-0000.flac", SR)
    _write(root / "dev-clean" / "84" / "121123" / "84-121123-0001.flac", SR)
    (root / "dev-clean" / "84" / "121123" / "84-121123.trans.txt").write_text("84-121123-0000 GO\n")
    dest = tmp_path / "m"
    report = build_manifest(str(root), str(dest), splits_from_subdirs=True, speaker_layout="librispeech")
    assert report.kept == {"dev-clean": 1, "train-clean-100": 9}
    assert report.rejected == [("dev-clean/84/121123/84-121123-0001.flac", report.rejected[0][1])]
    assert report.rejected[0][1].startswith("no transcript")
    root_line, rows, side = read_split(dest, "dev-clean")
    assert root_line == os.path.abspath(root / "dev-clean")
    assert rows == [("84/121123/84-121123-0000.flac", SR)]
    assert side["spk"] == ["84"] and side["wrd"] == ["GO"]
    root_line, rows, _ = read_split(dest, "train-clean-100")
    assert root_line == os.path.abspath(root / "train-clean-100")
    assert [r for r, _ in rows] == sorted(truth_train)
    assert not (dest / "train.tsv").exists()


def test_transcripts_none_removes_stale_side_files(tmp_path):
    root = tmp_path / "ls"
    make_librispeech(root)
    dest = tmp_path / "m"
    build_manifest(str(root), str(dest), valid_percent=0, speaker_layout="librispeech")
    assert (dest / "train.wrd").exists()
    build_manifest(str(root), str(dest), valid_percent=0, transcripts="none")
    assert not (dest / "train.wrd").exists() and not (dest / "train.spk").exists()
    assert (dest / "train.utt").exists()


def test_duplicate_stems_and_ext_filter(tmp_path):
    root = tmp_path / "c"
    _write(root / "a" / "b" / "x.wav", SR)
    _write(root / "a" / "b" / "x.flac", SR)
    _write(root / "a" / "b" / "y.ogg", SR, fmt="OGG")
    report = build_manifest(str(root), str(tmp_path / "m"), valid_percent=0, transcripts="none")
    assert report.kept == {"train": 1}
    assert report.rejected[0][0] == "a/b/x.wav" and report.rejected[0][1].startswith("duplicate utterance id")
    report = build_manifest(str(root), str(tmp_path / "m2"), ext="ogg", valid_percent=0)
    _, rows = read_manifest(str(tmp_path / "m2" / "train.tsv"))
    assert rows == [("a/b/y.ogg", SR)]


def test_verify_decode_keeps_good_files(tmp_path):
    root = tmp_path / "vox"
    truth = make_voxceleb(root)
    report = build_manifest(str(root), str(tmp_path / "m"), valid_percent=0, verify_decode=True)
    assert report.kept == {"train": len(truth)} and report.rejected == []
