"""The evaluation command end to end on a real tiny HuBERT checkpoint, plus its data builders and upstreams."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from fairseq_plugins.evaluate.pipeline import TASKS

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _files(d):
    return {os.path.relpath(os.path.join(r, f), d): open(os.path.join(r, f), "rb").read()
            for r, _, fs in os.walk(d) for f in fs}


def test_clip_set_is_seeded_and_parallel(tmp_path):
    from manifests.clips import CLASSES, build_clips, ensure_clips
    from manifests.manifest_io import read_lines, read_manifest

    a, b = tmp_path / "a", tmp_path / "b"
    build_clips(str(a), seed=3, per_class=(2, 1, 1))
    build_clips(str(b), seed=3, per_class=(2, 1, 1))
    fa, fb = _files(a), _files(b)
    fa = {k: v for k, v in fa.items() if not k.endswith(".tsv")}  # line 1 is the absolute root
    assert fa == {k: v for k, v in fb.items() if not k.endswith(".tsv")}
    root, rows = read_manifest(str(a / "train.tsv"))
    labels = read_lines(str(a / "train.cls"), expected=len(rows))
    assert sorted(set(labels)) == sorted(CLASSES) and len(rows) == 2 * len(CLASSES)
    assert all(os.path.isfile(os.path.join(root, r)) for r, _ in rows)
    mtime = os.path.getmtime(a / "clips.json")
    ensure_clips(str(a), seed=3, per_class=(2, 1, 1))  # same arguments: reused, not rebuilt
    assert os.path.getmtime(a / "clips.json") == mtime


def test_keyword_set_is_speaker_disjoint(tmp_path):
    from manifests.keywords import KEYWORDS, SILENCE, UNKNOWN, build_keywords
    from manifests.manifest_io import read_lines, read_manifest

    summary = build_keywords(str(tmp_path), seed=0, num_speakers=4, repeats=1)
    speakers = {}
    for split in ("train", "valid", "test"):
        _, rows = read_manifest(str(tmp_path / f"{split}.tsv"))
        kw = read_lines(str(tmp_path / f"{split}.kw"), expected=len(rows))
        spk = read_lines(str(tmp_path / f"{split}.spk"), expected=len(rows))
        assert set(kw) == set(KEYWORDS) | {UNKNOWN, SILENCE}
        assert all(n >= 16000 for _, n in rows)
        speakers[split] = set(spk)
    assert not (speakers["train"] & speakers["test"]) and not (speakers["train"] & speakers["valid"])
    assert summary["counts"]["train"]["yes"] == len(speakers["train"])


@pytest.mark.slow
def test_upstream_returns_every_layer_of_a_fairseq_hubert(tiny_hubert):
    import soundfile as sf

    from fairseq_plugins.evaluate.upstream import LogMelUpstream, load_upstream, random_like
    from manifests.manifest_io import read_manifest

    up = load_upstream(tiny_hubert["ckpt"], "tiny", manifest_dir=tiny_hubert["manifest"])
    root, rows = read_manifest(os.path.join(tiny_hubert["manifest"], "valid.tsv"))
    wav = torch.from_numpy(sf.read(os.path.join(root, rows[0][0]), dtype="float32")[0])
    h = up.extract(wav)
    assert h.shape[0] == len(up.model.encoder.layers) + 1 and abs(h.shape[1] - len(wav) // 320) <= 1
    with torch.no_grad():
        for layer in range(1, h.shape[0]):  # fairseq's own output_layer path (1-based) agrees
            x, _ = up.model.extract_features(wav[None], padding_mask=None, mask=False, output_layer=layer)
            torch.testing.assert_close(x[0], h[layer])
    r1, r2 = random_like(up, seed=0), random_like(up, seed=0)
    torch.testing.assert_close(r1.extract(wav), r2.extract(wav))
    assert not torch.allclose(r1.extract(wav), h)
    assert LogMelUpstream().extract(wav).shape == (1, len(wav) // 320, 80)


@pytest.mark.slow
def test_cli_on_tiny_hubert_writes_the_side_by_side_table(tiny_hubert, tmp_path):
    from manifests.clips import build_clips
    from manifests.keywords import build_keywords

    out = tmp_path / "eval"
    build_keywords(str(tmp_path / "keywords"), seed=0, num_speakers=14, repeats=1)
    build_clips(str(tmp_path / "clips"), seed=0, per_class=(3, 1, 2))
    cmd = [sys.executable, "-m", "fairseq_plugins.evaluate", "--checkpoints", f"tiny={tiny_hubert['ckpt']}",
           "--manifest-dir", tiny_hubert["manifest"], "--tasks", ",".join(TASKS), "--out", str(out),
           "--seeds", "0", "--epochs", "2", "--keyword-dir", str(tmp_path / "keywords"),
           "--clip-dir", str(tmp_path / "clips")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    table = (out / "table.md").read_text()
    assert table in proc.stdout
    header = next(line for line in table.splitlines() if line.startswith("| task | metric"))
    assert [c.strip() for c in header.strip("|").split("|")] == ["task", "metric", "tiny", "logmel", "random"]
    for task in TASKS:
        assert any(line.startswith(f"| {task} |") for line in table.splitlines()), task
    with open(out / "table.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["task"] for r in rows] == list(TASKS)
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {(r["upstream"], r["task"]) for r in results} == {(u, t) for u in ("tiny", "random", "logmel")
                                                             for t in TASKS}
    # every table cell is its run's score in percent, in its own column and row (one seed: std 0)
    value = {(r["upstream"], r["task"]): 100 * r["value"] for r in results}
    score_table = table.split("| task | metric")[1].split("\n\n")[0].splitlines()[2:]  # the scores, not layers
    table_rows = {line.split("|")[1].strip(): [c.strip().strip("*") for c in line.strip("|").split("|")[2:]]
                  for line in score_table}
    for r in rows:
        assert r["seeds"] == "1"
        for i, name in enumerate(("tiny", "logmel", "random")):
            v = value[(name, r["task"])]
            assert float(r[name]) == pytest.approx(v, abs=5e-4) and float(r[f"{name} std"]) == 0.0
            assert table_rows[r["task"]][i] == f"{v:.1f}", (r["task"], name)
            if r["metric"].startswith(("accuracy", "EER", "MAP")):
                assert 0.0 <= v <= 100.0, (r["task"], name, v)
    for r in results:
        assert np.isfinite(r["value"])
        if r["task"] == "content_qbe":  # no trained weights: the layer with the best valid MAP
            assert 0 <= r["layer"] < len(r["per_layer_map_valid"])
            continue
        assert abs(sum(r["layer_weights"]) - 1) < 1e-4
        if r["task"] != "speaker_ver":
            assert 1 <= r["best_epoch"] <= r["epochs_run"] <= 2
    assert (out / "tasks.png").stat().st_size > 0 and (out / "layer_weights.png").stat().st_size > 0


def test_prepare_phones_from_lexicon_and_split_by_list(tmp_path):
    from fairseq_plugins.evaluate.prepare import split_by_list, write_phones
    from manifests.manifest_io import ManifestError, read_lines, write_lines, write_manifest

    d = str(tmp_path)
    write_manifest(os.path.join(d, "all.tsv"), d, [("vox/id1/v/00001.wav", 16000), ("vox/id1/v/00002.wav", 16000),
                                                   ("vox/id2/w/00001.wav", 16000)])
    write_lines(os.path.join(d, "all.spk"), ["id1", "id1", "id2"])
    write_lines(os.path.join(d, "all.wrd"), ["HELLO WORLD", "HELLO", "WORLD"])
    write_lines(os.path.join(d, "lex.txt"), ["HELLO HH AH0 L OW1", "HELLO HH EH0 L OW1", "WORLD W ER1 L D"])
    write_phones(d, ["all"], os.path.join(d, "lex.txt"))
    assert read_lines(os.path.join(d, "all.phn")) == ["HH AH L OW W ER L D", "HH AH L OW", "W ER L D"]
    assert read_lines(os.path.join(d, "dict.phn.txt"))[0] == "L 4"
    write_lines(os.path.join(d, "all.wrd"), ["HELLO THERE", "HELLO", "WORLD"])
    with pytest.raises(ManifestError, match="1 words are not in"):
        write_phones(d, ["all"], os.path.join(d, "lex.txt"))

    write_lines(os.path.join(d, "iden.txt"), ["1 id1/v/00001.wav", "3 id1/v/00002.wav", "1 id2/w/00001.wav"])
    assert split_by_list(d, "all", os.path.join(d, "iden.txt"), {"1": "sid_train", "3": "sid_test"}) == \
        {"sid_train": 2, "sid_test": 1}
    assert read_lines(os.path.join(d, "sid_train.spk")) == ["id1", "id2"]
    assert read_lines(os.path.join(d, "sid_test.wrd")) == ["HELLO"]


def test_checkpoint_arguments_and_kind_detection():
    from fairseq_plugins.evaluate.upstream import detect_kind, parse_checkpoint_arg

    assert parse_checkpoint_arg("base=/x/y.pt") == ("base", "auto", "/x/y.pt")
    assert parse_checkpoint_arg("w=wavlm:/x/WavLM-Base.pt") == ("w", "wavlm", "/x/WavLM-Base.pt")
    assert parse_checkpoint_arg("/runs/a/checkpoint_last.pt") == ("a/checkpoint_last", "auto",
                                                                  "/runs/a/checkpoint_last.pt")
    with pytest.raises(ValueError, match="reserved for a baseline"):
        parse_checkpoint_arg("logmel=/x.pt")
    assert detect_kind({"cfg": {"encoder_layers": 12, "normalize": False}, "model": {}}) == "wavlm"
    assert detect_kind({"cfg": {"model": {}, "task": {"_name": "hubert_pretraining"}}, "model": {}}) == "fairseq"


@pytest.mark.parametrize("pre_ln", [False, True])
def test_wavlm_release_file_is_an_upstream(tmp_path, pre_ln, tiny):
    from fairseq_plugins.evaluate.upstream import load_upstream
    from fairseq_plugins.modules.wavlm import WavLMBackbone, WavLMConfig, save_wavlm_release

    torch.manual_seed(0)
    cfg = WavLMConfig(**{**tiny.encoder, "encoder_attention_heads": 4}, layer_norm_first=pre_ln, normalize=pre_ln)
    path = str(tmp_path / "wavlm.pt")
    save_wavlm_release(WavLMBackbone(cfg), cfg, path)
    up = load_upstream(path, "wavlm")
    assert up.kind == "wavlm" and up.num_layers == 3 and up.normalize == pre_ln
    wav = torch.randn(8000) * 0.1
    h = up.extract(wav)
    src = (wav - wav.mean()) / wav.std(unbiased=False) if pre_ln else wav
    with torch.no_grad():
        (x, layers), _ = up.model.extract_features(src[None], ret_layer_results=True)
    torch.testing.assert_close(h[-1], x[0], atol=1e-4, rtol=1e-4)  # the output, final LayerNorm included
    torch.testing.assert_close(h[1], layers[1][0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("task,flag,script", [("keyword", "--keyword-dir", "manifests.keywords"),
                                              ("content_qbe", "--keyword-dir", "manifests.keywords"),
                                              ("clip", "--clip-dir", "manifests.clips")])
def test_tasks_with_their_own_data_need_its_folder(tmp_path, task, flag, script):
    """The plugin never synthesises probe data (it does not import the repository's ``manifests`` scripts):
    a missing folder stops with the flag and the command that builds it; a wrong one names the path."""
    from fairseq_plugins.evaluate.pipeline import EvalConfig, load_task

    cfg = EvalConfig(manifest_dir=str(tmp_path), out_dir=str(tmp_path / "eval"), tasks=[task])
    with pytest.raises(ValueError, match=f"{task}: no {flag} given; .*python -m {script} --out DIR"):
        load_task(task, cfg)
    missing = tmp_path / "nowhere"
    cfg = EvalConfig(manifest_dir=str(tmp_path), out_dir=str(tmp_path / "eval"), tasks=[task],
                     keyword_dir=str(missing), clip_dir=str(missing))
    with pytest.raises(FileNotFoundError, match=f"{flag} {missing} is not a directory"):
        load_task(task, cfg)
    assert not (tmp_path / "eval").exists()
