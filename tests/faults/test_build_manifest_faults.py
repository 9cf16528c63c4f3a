"""Issue 16 items 2 and 7: build_manifest refuses NaN/Inf and truncated files (naming them in rejected.tsv and in
the --on-bad fail error), checks the decoded count with --verify-decode, and writes nothing for a folder without
usable audio."""
import os

import pytest

from manifests.build_manifest import BadFilesError, build_manifest, main


def _corpus(root, bad_file, kinds):
    import numpy as np
    import soundfile as sf

    os.makedirs(root, exist_ok=True)
    for i in range(3):
        sf.write(os.path.join(root, f"good{i}.wav"), (0.1 * np.random.default_rng(i).standard_normal(16000))
                 .astype("float32"), 16000, subtype="FLOAT")
    return {k: bad_file(os.path.join(root, f"bad_{k}.wav"), k)[1] for k in kinds}


def test_verify_decode_rejects_non_finite_and_truncated_files(tmp_path, bad_file):
    root, dest = str(tmp_path / "audio"), str(tmp_path / "m")
    _corpus(root, bad_file, ("nan", "inf", "truncated"))
    report = build_manifest(root, dest, valid_percent=0, min_seconds=0.1, verify_decode=True)
    reasons = dict(report.rejected)
    assert reasons["bad_nan.wav"].startswith("non-finite samples: 10 NaN/Inf samples, the first at sample 8000")
    assert reasons["bad_inf.wav"].startswith("non-finite samples: 10 NaN/Inf samples")
    assert reasons["bad_truncated.wav"].startswith("truncated: its header says 16000 samples")
    assert report.kept == {"train": 3}
    with open(os.path.join(dest, "rejected.tsv")) as f:
        assert sorted(line.split("\t")[0] for line in f.read().splitlines()) == [
            "bad_inf.wav", "bad_nan.wav", "bad_truncated.wav"]


def test_truncated_file_is_rejected_from_the_header_alone(tmp_path, bad_file):
    root = str(tmp_path / "audio")
    _corpus(root, bad_file, ("truncated",))
    with pytest.raises(BadFilesError, match=r"bad_truncated.wav: truncated: its header says 16000 samples, the "
                                            r"file holds \d+"):
        build_manifest(root, str(tmp_path / "m"), valid_percent=0, min_seconds=0.1, on_bad="fail")
    assert not os.path.exists(tmp_path / "m")


def test_empty_folder_writes_nothing(tmp_path, capsys):
    root, dest = tmp_path / "empty", tmp_path / "m"
    root.mkdir()
    assert main([str(root), "--dest", str(dest)]) == 1
    assert not dest.exists()
    err = capsys.readouterr().err
    assert f"no usable audio files under {root}" in err and "nothing written" in err


def test_folder_of_only_bad_files_writes_nothing_and_lists_them(tmp_path, bad_file):
    root, dest = str(tmp_path / "audio"), str(tmp_path / "m")
    os.makedirs(root)
    bad_file(os.path.join(root, "a.wav"), "empty")
    bad_file(os.path.join(root, "b.wav"), "stereo")
    with pytest.raises(BadFilesError) as e:
        build_manifest(root, dest)
    assert "a.wav: empty" in str(e.value) and "b.wav: not mono" in str(e.value)
    assert not os.path.exists(dest)
