"""manifests.real_dev on the installed Debian packages (make setup installs them), its rejection report, and the
evaluation's real-speech tasks on a tiny HuBERT."""
import csv
import glob
import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import soundfile as sf

from fairseq_plugins.data.audio import AudioError, read_audio
from manifests.manifest_io import read_lines, read_manifest
from manifests.real_dev import PACKAGES, ROOTS, SOURCES, Options, build_real_dev

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HEDGEWARS = ROOTS["hedgewars"]
# the files each source's scanner reads, as patterns over `dpkg -L` paths
PATTERNS = {"hedgewars": HEDGEWARS + "/*/*.ogg", "ktuberling": ROOTS["ktuberling"] + "/*/*.*",
            "klettres": ROOTS["klettres"] + "/*/*/*.ogg", "codec2": ROOTS["codec2"] + "/*/*.*"}


def dpkg_files(source):
    """Audio files of a source's package, from the package manager's own list."""
    from fnmatch import fnmatch

    out = subprocess.run(["dpkg", "-L", PACKAGES[source]], capture_output=True, text=True, check=True).stdout
    exts = {"hedgewars": (".ogg",), "ktuberling": (".ogg", ".wav", ".opus"), "klettres": (".ogg",),
            "codec2": (".raw", ".wav")}[source]
    return {p for p in out.splitlines() if fnmatch(p, PATTERNS[source]) and p.endswith(exts)
            and (source != "codec2" or p.split("/")[-2] in ("raw", "wav"))}


def run_cli(args, timeout=300):
    return subprocess.run([sys.executable, "-m", "manifests.real_dev", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS="1"))


@pytest.fixture(scope="module")
def subset(tmp_path_factory):
    """A seeded subset of every source (120 files each), written once for the module."""
    out = str(tmp_path_factory.mktemp("real_dev"))
    summary = build_real_dev(out, Options(seed=3, max_per_source=120, min_per_class=2))
    return out, summary


def _table(d, name):
    root, rows = read_manifest(os.path.join(d, f"{name}.tsv"))
    return root, rows


def test_every_source_is_found_as_dpkg_lists_it(subset):
    out, summary = subset
    for src in SOURCES:
        listed = dpkg_files(src)
        assert listed, f"{PACKAGES[src]} lists no audio: is it installed (make setup)?"
        assert summary["sources"][src]["files_found"] == len(listed), src
        assert summary["sources"][src]["utterances"] > 0, src
        assert summary["sources"][src]["files_used"] <= 120, src  # --max-per-source
    # every utterance comes from a file the packages list, every rejection names one with a reason
    everything = set().union(*(dpkg_files(s) for s in SOURCES))
    origins = read_lines(os.path.join(out, "all.orig"))
    assert set(origins) <= everything
    for line in read_lines(os.path.join(out, "rejected.tsv")):
        path, reason = line.split("\t")
        assert path in everything and reason.strip(), line


def test_audio_is_16k_mono_and_counts_match(subset):
    out, _ = subset
    root, rows = _table(out, "all")
    assert root == os.path.join(out, "audio")
    for rel, n in rows:
        info = sf.info(os.path.join(root, rel))
        assert (info.samplerate, info.channels, info.frames) == (16000, 1, n), rel
        assert n >= 0.3 * 16000


def test_labels_follow_the_package_layout(subset):
    out, _ = subset
    _, rows = _table(out, "all")
    cols = {s: read_lines(os.path.join(out, f"all.{s}"), expected=len(rows))
            for s in ("src", "spk", "lang", "wrd", "orig")}
    names = {}
    for theme in glob.glob(os.path.join(ROOTS["ktuberling"], "*.soundtheme")):
        for s in ET.parse(theme).iter("sound"):
            names.setdefault(os.path.join(ROOTS["ktuberling"], s.get("file")), s.get("name"))
    seen = set()
    for i in range(len(rows)):
        src, spk, lang, wrd, orig = (cols[s][i] for s in ("src", "spk", "lang", "wrd", "orig"))
        seen.add(src)
        parts = orig.split("/")
        if src == "hedgewars":
            pack, stem = parts[-2], parts[-1][:-4]
            assert spk == f"hedgewars/{pack}"
            assert lang == (pack.rsplit("_", 1)[1] if "_" in pack else "en")
            assert wrd in (stem.lower(), "-")
        elif src == "ktuberling":
            assert spk == "-" and lang == parts[-2].split("@")[0].split("_")[0]
            assert wrd == names.get(orig, parts[-1].rsplit(".", 1)[0])
        elif src == "klettres":
            assert (spk, wrd) == ("-", "-") and lang == parts[-3].split("_")[0]
        else:
            assert src == "codec2" and spk == "codec2/" + parts[-1].rsplit(".", 1)[0]
    assert seen == set(SOURCES)


def test_probe_splits_hold_unseen_utterances_of_seen_classes(subset):
    out, summary = subset
    _, all_rows = _table(out, "all")
    all_rels = {r for r, _ in all_rows}
    for task, suffix in (("speaker", "spk"), ("language", "lang"), ("word", "wrd")):
        d = os.path.join(out, task)
        labels, rels = {}, {}
        for name in ("train", "valid", "test"):
            _, rows = _table(d, name)
            rels[name] = [r for r, _ in rows]
            labels[name] = read_lines(os.path.join(d, f"{name}.{suffix}"), expected=len(rows))
            assert set(rels[name]) <= all_rels
        assert not set(rels["train"]) & set(rels["test"]) and not set(rels["valid"]) & set(rels["test"])
        assert not set(rels["train"]) & set(rels["valid"])
        # within class: every test / valid class has training utterances (speaker id: within speaker)
        assert set(labels["test"]) <= set(labels["train"]) and set(labels["valid"]) <= set(labels["train"])
        assert len(rels["test"]) > 0 and summary["tasks"][task]["test"] == len(rels["test"])
        assert [line.split()[0] for line in read_lines(os.path.join(d, f"dict.{suffix}.txt"))] == \
            sorted(set(labels["train"]))
    assert set(read_lines(os.path.join(out, "language", "train.src"))) <= {"ktuberling", "klettres"}
    assert set(read_lines(os.path.join(out, "word", "train.src"))) == {"hedgewars"}


def test_same_seed_same_bytes_other_seed_other_split(tmp_path):
    def build(name, seed):
        d = str(tmp_path / name)
        build_real_dev(d, Options(seed=seed, sources=("hedgewars",), max_per_source=40, min_per_class=2))
        return {os.path.relpath(p, d): open(p, "rb").read() for p in glob.glob(f"{d}/**/*", recursive=True)
                if os.path.isfile(p) and not p.endswith((".tsv", "summary.json", "summary.md"))}, d

    a, da = build("a", 0)
    b, db = build("b", 0)
    assert a == b
    # manifests differ only in their root line
    for name in ("all", "speaker/train", "speaker/test"):
        assert read_manifest(f"{da}/{name}.tsv")[1] == read_manifest(f"{db}/{name}.tsv")[1]
    c, dc = build("c", 1)
    assert read_manifest(f"{da}/all.tsv")[1] != read_manifest(f"{dc}/all.tsv")[1]


def test_bad_files_in_a_source_are_reported_with_their_reason(tmp_path):
    voices = tmp_path / "voices"
    for pack in ("British", "Pirate"):
        shutil.copytree(os.path.join(HEDGEWARS, pack), voices / pack)
    (voices / "Pirate" / "Corrupt.ogg").write_bytes(b"OggS" + os.urandom(3000))
    (voices / "Pirate" / "Empty.ogg").write_bytes(b"")
    sf.write(str(voices / "Pirate" / "Silent.ogg"), np.zeros(22050, dtype=np.float32), 44100, format="OGG")
    shutil.copy(voices / "British" / "Amazing.ogg", voices / "Pirate" / "Copied.ogg")
    out = tmp_path / "out"
    proc = run_cli(["--out", str(out), "--sources", "hedgewars", "--root", f"hedgewars={voices}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    rejected = dict(line.split("\t") for line in read_lines(str(out / "rejected.tsv")))
    assert rejected[str(voices / "Pirate" / "Corrupt.ogg")].startswith("unreadable audio")
    assert rejected[str(voices / "Pirate" / "Empty.ogg")].startswith("unreadable audio")
    assert rejected[str(voices / "Pirate" / "Silent.ogg")] == "silent: every sample is 0"
    assert rejected[str(voices / "Pirate" / "Copied.ogg")] == f"byte-identical to {voices / 'British' / 'Amazing.ogg'}"
    assert any(r.startswith("too short") for r in rejected.values())  # the packs' grunts are under 0.3 s
    origins = set(read_lines(str(out / "all.orig")))
    assert not origins & set(rejected) and origins
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sources"]["hedgewars"]["files_rejected"] == len(rejected)
    assert summary["rejected_reasons"]["unreadable audio"] == 2
    assert f"{len(rejected)} files rejected" in proc.stdout and "| speaker |" in proc.stdout


def test_a_missing_package_names_the_apt_command(tmp_path):
    opts = Options(sources=("codec2",), roots={"codec2": str(tmp_path / "no")})
    with pytest.raises(FileNotFoundError, match=f"codec2: {tmp_path / 'no'} not found: install the package with "
                                                f"`apt-get install -y --no-install-recommends codec2-examples`"):
        build_real_dev(str(tmp_path / "o"), opts)
    assert not (tmp_path / "o").exists()


def test_reader_resamples_and_reads_headerless_pcm(tmp_path):
    raw = tmp_path / "x.raw"
    x = (np.sin(np.arange(8000) / 8000 * 2 * np.pi * 200) * 8000).astype("<i2")
    x.tofile(raw)
    y = read_audio(str(raw), 16000, raw=(8000, "PCM_16"), resample=True)
    assert y.shape == (16000,) and abs(np.abs(y).max() - 8000 / 32768) < 0.01
    with pytest.raises(AudioError, match="sample rate 8000 Hz, expected 16000 Hz"):
        read_audio(str(raw), 16000, raw=(8000, "PCM_16"))
    (tmp_path / "odd.raw").write_bytes(x.tobytes() + b"\0")
    with pytest.raises(AudioError, match="1 trailing bytes do not make a whole PCM_16 sample"):
        read_audio(str(tmp_path / "odd.raw"), 8000, raw=(8000, "PCM_16"))


def test_real_tasks_need_the_folder(tmp_path):
    from fairseq_plugins.evaluate.pipeline import EvalConfig, load_task

    cfg = EvalConfig(manifest_dir=str(tmp_path), out_dir=str(tmp_path / "eval"), tasks=["real_word_id"])
    with pytest.raises(ValueError, match="real_word_id: no --real-dev-dir given; .*python -m manifests.real_dev"):
        load_task("real_word_id", cfg)
    cfg.real_dev_dir = str(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"real_word_id: {tmp_path}/word not found"):
        load_task("real_word_id", cfg)


def test_real_tasks_read_the_labels_of_their_folder(subset):
    from fairseq_plugins.evaluate.pipeline import ALL_TASKS, METRICS, EvalConfig, load_task

    out, summary = subset
    cfg = EvalConfig(manifest_dir=out, out_dir=os.path.join(out, "eval"), real_dev_dir=out)
    for task, key, suffix in (("real_speaker_id", "speaker", "spk"), ("real_language_id", "language", "lang"),
                              ("real_word_id", "word", "wrd")):
        assert task in ALL_TASKS and METRICS[task] == ("accuracy", True)
        data = load_task(task, cfg)
        assert data.num_classes == summary["tasks"][key]["classes"] == len(data.extra["classes"])
        for name, part in (("train", data.train), ("valid", data.valid), ("test", data.test)):
            assert part.split.tsv == os.path.join(out, key, f"{name}.tsv")
            assert [data.extra["classes"][t] for t in part.targets] == \
                read_lines(os.path.join(out, key, f"{name}.{suffix}"))
    # the word folder is a keyword folder too: same words said by other voices, for content_qbe
    cfg.keyword_dir = os.path.join(out, "word")
    qbe = load_task("content_qbe", cfg)
    for name, part in (("valid", qbe.valid), ("test", qbe.test)):
        words = read_lines(os.path.join(out, "word", f"{name}.wrd"))
        speakers = read_lines(os.path.join(out, "word", f"{name}.spk"))
        assert part.targets == list(zip(words, speakers)) and len(set(speakers)) > 1
        assert all(s.startswith("hedgewars/") for s in speakers)


@pytest.mark.slow
def test_evaluate_probes_real_speech_on_a_tiny_hubert(subset, tiny_hubert, tmp_path):
    out, summary = subset
    ev = tmp_path / "eval"
    tasks = ["real_speaker_id", "real_word_id"]  # real_language_id loads like these (kept short: 2 of 3)
    cmd = [sys.executable, "-m", "fairseq_plugins.evaluate", "--checkpoints", f"tiny={tiny_hubert['ckpt']}",
           "--manifest-dir", tiny_hubert["manifest"], "--real-dev-dir", out, "--tasks", ",".join(tasks),
           "--out", str(ev), "--seeds", "0", "--epochs", "2"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(ev / "table.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["task"] for r in rows] == tasks
    results = [json.loads(line) for line in (ev / "results.jsonl").read_text().splitlines()]
    assert {(r["upstream"], r["task"]) for r in results} == {(u, t) for u in ("tiny", "random", "logmel")
                                                             for t in tasks}
    for r in results:
        key = {"real_speaker_id": "speaker", "real_language_id": "language", "real_word_id": "word"}[r["task"]]
        assert r["sizes"] == {s: summary["tasks"][key][s] for s in ("train", "valid", "test")}
        assert 0.0 <= r["value"] <= 1.0 and r["metric"] == "accuracy"
