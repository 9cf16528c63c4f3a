"""Tests of the seeded espeak-ng mini corpus (manifests.mini_corpus), its ctypes wrapper (manifests.espeak)
and the procedural noise (manifests.noise): determinism, label/audio consistency, phone alignment against
signal energy, speaker splits, verification trials and noise files. Builds three tiny corpora (~1 s each)."""
import hashlib
import json
import os
import sys
import wave

import numpy as np
import pytest

from manifests import espeak as espeak_mod  # noqa: E402
from manifests.manifest_io import read_lines, read_manifest, words_to_letters  # noqa: E402
from manifests.mini_corpus import SPLITS, build_mini_corpus, main  # noqa: E402
from manifests.noise import NOISE_KINDS, TARGET_RMS, make_noise  # noqa: E402

TINY = dict(minutes=0.3, num_speakers=6, num_noise=8)


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    base = tmp_path_factory.mktemp("mini")
    a = build_mini_corpus(str(base / "a"), seed=0, **TINY)
    b = build_mini_corpus(str(base / "b"), seed=0, **TINY)
    c = build_mini_corpus(str(base / "c"), seed=1, **TINY)
    return a, b, c


def _files(root):
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            path = os.path.join(d, n)
            out[os.path.relpath(path, root)] = path
    return out


def _read_wav(path):
    with wave.open(path, "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 16000), path
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


def _split(out, split):
    man = os.path.join(out, "manifest")
    root, rows = read_manifest(os.path.join(man, f"{split}.tsv"))
    side = {ext: read_lines(os.path.join(man, f"{split}.{ext}"), len(rows))
            for ext in ("wrd", "ltr", "spk", "utt", "phn", "phn50")}
    return root, rows, side


def _dict(path):
    return [line.split()[0] for line in read_lines(path)]


def test_same_seed_gives_identical_files(corpora):
    a, b, _ = corpora
    fa, fb = _files(a["out_dir"]), _files(b["out_dir"])
    assert sorted(fa) == sorted(fb)
    assert sum(k.endswith(".wav") for k in fa) == a["utterances"] + 8
    for rel in fa:
        da, db = open(fa[rel], "rb").read(), open(fb[rel], "rb").read()
        if rel.endswith(".tsv"):  # the first line is the absolute root directory
            da, db = da.split(b"\n", 1)[1], db.split(b"\n", 1)[1]
        assert da == db, rel
    ja = json.load(open(os.path.join(a["out_dir"], "corpus.json")))
    assert a["out_dir"] not in json.dumps(ja)
    assert ja["seed"] == 0 and ja["utterances"] == a["utterances"]


def test_different_seed_gives_different_audio(corpora):
    a, _, c = corpora

    def digests(out):
        return {hashlib.sha1(open(p, "rb").read()).hexdigest()
                for rel, p in _files(os.path.join(out, "audio")).items()}

    assert not digests(a["out_dir"]) & digests(c["out_dir"])
    wa = read_lines(os.path.join(a["out_dir"], "manifest", "train.wrd"))
    wc = read_lines(os.path.join(c["out_dir"], "manifest", "train.wrd"))
    assert wa != wc


def test_manifests_and_labels_are_consistent(corpora):
    out = corpora[0]["out_dir"]
    man = os.path.join(out, "manifest")
    phn_dict, frame_dict, ltr_dict, wrd_dict = (
        set(_dict(os.path.join(man, f"dict.{name}.txt"))) for name in ("phn", "phn50", "ltr", "wrd"))
    assert "sil" in frame_dict and "sil" not in phn_dict and frame_dict - phn_dict == {"sil"}
    total = 0
    for split in SPLITS:
        root, rows, side = _split(out, split)
        assert root == os.path.join(out, "audio") and rows, split
        total += len(rows)
        for (rel, n), utt, spk, wrd, ltr, phn, frames in zip(rows, side["utt"], side["spk"], side["wrd"],
                                                              side["ltr"], side["phn"], side["phn50"]):
            assert rel == f"{split}/{spk}/{utt}.wav" and utt.startswith(spk + "_")
            assert len(_read_wav(os.path.join(root, rel))) == n
            labels = frames.split()
            assert len(labels) == n // 320, rel
            assert set(labels) <= frame_dict and set(phn.split()) <= phn_dict and "sil" not in phn.split()
            assert ltr == words_to_letters(wrd) and set(ltr.split()) <= ltr_dict
            assert set(wrd.split()) <= wrd_dict
            assert wrd == wrd.upper() and all(w.isalpha() for w in wrd.split())
            # collapsed frame labels (silence dropped) are a subsequence of the phone sequence
            collapsed = [p for i, p in enumerate(labels) if p != "sil" and (i == 0 or labels[i - 1] != p)]
            it = iter(phn.split())
            assert all(p in it for p in collapsed), rel
    assert total == corpora[0]["utterances"]


def test_phone_labels_line_up_with_energy(corpora):
    out = corpora[0]["out_dir"]
    sil_energy, speech_energy = [], []
    for split in SPLITS:
        root, rows, side = _split(out, split)
        for (rel, _), frames in zip(rows, side["phn50"]):
            x = _read_wav(os.path.join(root, rel)).astype(np.float64)
            labels = np.array(frames.split())
            energy = (x[: len(labels) * 320].reshape(-1, 320) ** 2).mean(axis=1)
            sil_energy.extend(energy[labels == "sil"])
            speech_energy.extend(energy[labels != "sil"])
            # padding: every utterance starts and ends with silence frames, and is digitally silent there
            assert labels[0] == "sil" and labels[-1] == "sil" and energy[0] == 0, rel
    assert np.mean(speech_energy) > 10 * np.mean(sil_energy)
    assert np.median(speech_energy) > 100 * max(np.median(sil_energy), 1.0)


def test_speakers_and_splits(corpora):
    out = corpora[0]["out_dir"]
    spk = {s: set(_split(out, s)[2]["spk"]) for s in SPLITS}
    assert not spk["test"] & (spk["train"] | spk["valid"])
    assert spk["valid"] <= spk["train"]
    assert len(spk["test"]) == 2 and len(spk["train"]) == 4
    table = read_lines(os.path.join(out, "speakers.txt"))
    assert table[0].split("\t")[:3] == ["speaker", "split", "voice"]
    split_of = {line.split("\t")[0]: line.split("\t")[1] for line in table[1:]}
    assert {s for s, v in split_of.items() if v == "test"} == spk["test"]
    assert len({line.split("\t", 2)[2] for line in table[1:]}) == len(table) - 1  # distinct voice settings


def test_trials_are_balanced_and_valid(corpora):
    for summary in corpora:
        out = summary["out_dir"]
        _, _, side = _split(out, "test")
        spk_of = dict(zip(side["utt"], side["spk"]))
        trials = read_lines(os.path.join(out, "manifest", "test.trials"))
        assert trials
        labels = []
        for line in trials:
            label, a, b = line.split()
            assert a in spk_of and b in spk_of and a != b
            assert int(label) == int(spk_of[a] == spk_of[b])
            labels.append(int(label))
        assert sum(labels) * 2 == len(labels)
        assert len({frozenset(t.split()[1:]) for t in trials}) == len(trials)


def test_noise_files(corpora):
    out = corpora[0]["out_dir"]
    root, rows = read_manifest(os.path.join(out, "manifest", "noise.tsv"))
    kinds = read_lines(os.path.join(out, "manifest", "noise.kind"), len(rows))
    assert set(kinds) == set(NOISE_KINDS) | {"tts_babble"}
    for (rel, n), kind in zip(rows, kinds):
        x = _read_wav(os.path.join(root, rel)).astype(np.float64) / 32768
        assert len(x) == n and 16000 <= n <= 32000 and rel.startswith(kind)
        assert np.isfinite(x).all() and np.sqrt(np.mean(x ** 2)) > 0.01, rel


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_make_noise(kind):
    x = make_noise(kind, 8000, np.random.default_rng(3))
    assert x.dtype == np.float32 and x.shape == (8000,) and np.isfinite(x).all()
    rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
    assert 0.01 < rms <= TARGET_RMS * 1.001 and np.abs(x).max() <= 0.99 + 1e-6
    assert np.array_equal(x, make_noise(kind, 8000, np.random.default_rng(3)))
    assert not np.array_equal(x, make_noise(kind, 8000, np.random.default_rng(4)))


def test_make_noise_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unknown noise kind"):
        make_noise("purple", 1000, 0)


def test_espeak_output_is_history_independent_and_aligned():
    engine = espeak_mod.Espeak()
    try:
        first = engine.synthesize("The quick brown fox jumps over the lazy dog.", voice="en-us+m3")
        engine.synthesize("Something else entirely, with a pause.", voice="en+f2", rate=120, pitch=80)
        again = engine.synthesize("The quick brown fox jumps over the lazy dog.", voice="en-us+m3")
    finally:
        engine.close()
    assert first.sample_rate == espeak_mod.NATIVE_SAMPLE_RATE
    assert np.array_equal(first.audio, again.audio) and first.phones == again.phones
    # contiguous intervals covering the signal; espeak starts with a short digital silence
    assert first.phones[0][0] == "sil" and first.phones[0][1] == 0
    assert not first.audio[: first.phones[0][2]].any()
    assert all(p[2] == q[1] for p, q in zip(first.phones, first.phones[1:]))
    assert first.phones[-1][2] == first.num_samples
    assert first.phone_sequence()[:4] == ["D", "@2", "k", "w"]
    low = first.resample(16000)
    assert abs(low.num_samples - round(first.num_samples * 16000 / 22050)) <= 1
    assert [p for p, _, _ in low.phones] == [p for p, _, _ in first.phones]
    assert low.phones[-1][2] == low.num_samples and len(low.frame_labels()) == low.num_samples // 320


def test_espeak_errors(monkeypatch):
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)
    with pytest.raises(espeak_mod.EspeakNotAvailable, match="espeakng-loader"):
        espeak_mod.Espeak()
    monkeypatch.undo()
    engine = espeak_mod.Espeak()
    try:
        with pytest.raises(espeak_mod.EspeakError, match="unknown espeak voice"):
            engine.synthesize("hello", voice="no-such-voice")
        with pytest.raises(espeak_mod.EspeakError, match="rate"):
            engine.synthesize("hello", rate=10)
    finally:
        engine.close()


def test_cli(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "--num-speakers" in capsys.readouterr().out
    (tmp_path / "notes.txt").write_text("not a corpus")
    assert main(["--out", str(tmp_path), "--minutes", "0.1", "--num-speakers", "4"]) == 1
    assert (tmp_path / "notes.txt").exists()


def test_crossed_voice_pairing_gives_many_distinct_voices_across_accents_and_genders():
    from manifests.mini_corpus import ACCENTS, make_speakers

    cycle = make_speakers(120, seed=0)
    assert len({s.accent for s in cycle if s.gender == "male"}) == 4  # v1 pairing: accents tied to gender
    crossed = make_speakers(120, seed=0, voice_pairing="crossed")
    assert len({s.voice for s in crossed}) == 120
    for gender in ("male", "female"):
        assert {s.accent for s in crossed if s.gender == gender} == set(ACCENTS)
    assert [s.rate for s in crossed] == [s.rate for s in cycle]  # the same prosody stream
    assert make_speakers(120, seed=0, voice_pairing="crossed") == crossed


def test_prosody_ranges_are_used_and_checked():
    from manifests.mini_corpus import Prosody, make_speakers

    wide = Prosody(rate=(100, 260), pitch=(10, 90), pitch_range=(5, 95), volume=(40, 120))
    speakers = make_speakers(200, seed=3, prosody=wide)
    for field in ("rate", "pitch", "pitch_range", "volume"):
        values = [getattr(s, field) for s in speakers]
        lo, hi = getattr(wide, field)
        assert lo <= min(values) and max(values) <= hi and max(values) - min(values) > (hi - lo) // 2, field
    with pytest.raises(ValueError, match=r"^prosody pitch=\(50, 120\): expected LOW <= HIGH within espeak-ng's 0..99$"):
        make_speakers(4, seed=0, prosody=Prosody(pitch=(50, 120)))
    with pytest.raises(ValueError, match="voice_pairing='grid': expected one of cycle, crossed"):
        make_speakers(4, seed=0, voice_pairing="grid")


def test_cli_builds_a_crossed_wide_prosody_corpus(tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["--out", str(out), "--minutes", "0.1", "--num-speakers", "6", "--num-noise", "2",
                 "--voice-pairing", "crossed", "--rate", "110", "240", "--pitch", "15", "85",
                 "--pitch-range", "10", "95", "--volume", "60", "100"]) == 0
    summary = json.load(open(out / "corpus.json"))
    assert summary["voice_pairing"] == "crossed" and summary["distinct_voices"] == 6
    assert summary["prosody"] == {"rate": [110, 240], "pitch": [15, 85], "pitch_range": [10, 95],
                                  "volume": [60, 100]}
    assert all(110 <= s["rate"] <= 240 and 15 <= s["pitch"] <= 85 for s in summary["speakers"])
    assert json.loads(capsys.readouterr().out)["distinct_voices"] == 6
    assert main(["--out", str(tmp_path / "d"), "--pitch", "80", "20"]) == 1
    assert not (tmp_path / "d").exists()  # checked before anything is written
