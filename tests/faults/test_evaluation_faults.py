"""Issue 16 item 1: a wrong table is never written. A NaN wav among the probe training files stops
``python -m fairseq_plugins.evaluate`` (exit 1) naming the manifest line and the file, and leaves no
results.jsonl or table; non-finite features, probe losses, weights and scores stop the run naming the
utterance or probe and the stage."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from fairseq_plugins.data.audio import AudioError
from fairseq_plugins.evaluate.data import FeatureStore, NonFiniteError, Split
from fairseq_plugins.evaluate.pipeline import EvalConfig, check_finite_row, run_evaluation
from fairseq_plugins.evaluate.probes import ProbeConfig, train_pooled_classifier
from fairseq_plugins.evaluate.upstream import LogMelUpstream

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLASSES = ("low", "mid", "high")


def clip_set(folder: str, bad: str = "", per_class: int = 3) -> str:
    """A tiny clip-classification set (tones of three pitches in noise, 0.5 s); with ``bad`` one train file is
    replaced by a bad file of that kind. Returns the bad file's path."""
    from fairseq_plugins.data.manifest_io import write_lines, write_manifest

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    bad_path = ""
    t = np.arange(8000) / 16000
    for split in ("train", "valid", "test"):
        rows, labels = [], []
        for c, name in enumerate(CLASSES):
            for i in range(per_class):
                fn = f"{split}_{name}_{i}.wav"
                x = (0.3 * np.sin(2 * np.pi * (200 + 900 * c) * t) + 0.05 * rng.standard_normal(8000))
                x = x.astype(np.float32)
                if bad == "nan" and split == "train" and c == 1 and i == 0:
                    x[100:110] = np.nan
                    bad_path = os.path.join(folder, fn)
                sf.write(os.path.join(folder, fn), x, 16000, subtype="FLOAT")
                rows.append((fn, 8000))
                labels.append(name)
        write_manifest(os.path.join(folder, f"{split}.tsv"), folder, rows)
        write_lines(os.path.join(folder, f"{split}.cls"), labels)
    return bad_path


def test_cli_stops_on_a_nan_training_wav_and_writes_no_table(tmp_path):
    data, out = str(tmp_path / "clips"), tmp_path / "eval"
    bad = clip_set(data, bad="nan")
    cmd = [sys.executable, "-m", "fairseq_plugins.evaluate", "--manifest-dir", data, "--clip-dir", data,
           "--tasks", "clip", "--baselines", "logmel", "--seeds", "0", "--epochs", "2", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = 2 + len(CLASSES) * 0 + 3  # train.tsv: root, 3 'low' files, then the first 'mid' file
    assert f"{data}/train.tsv:{line}: {bad}: 10 non-finite samples (NaN/Inf)" in proc.stderr, proc.stderr[-3000:]
    assert "no results.jsonl or table written" in proc.stderr
    assert not (out / "results.jsonl").exists() and not (out / "table.md").exists()
    assert proc.stdout == ""


def test_a_clean_run_writes_results_only_at_the_end(tmp_path):
    data = str(tmp_path / "clips")
    clip_set(data)
    cfg = EvalConfig(manifest_dir=data, out_dir=str(tmp_path / "eval"), tasks=["clip"], seeds=[0],
                     baselines=["logmel"], epochs=3, clip_dir=data)
    results = run_evaluation(cfg)
    rows = [json.loads(x) for x in (tmp_path / "eval" / "results.jsonl").read_text().splitlines()]
    assert rows == json.loads(json.dumps(results)) and len(rows) == 1
    assert np.isfinite(rows[0]["value"]) and (tmp_path / "eval" / "table.md").exists()
    assert not (tmp_path / "eval" / "results.jsonl.tmp").exists()


def test_a_failed_run_leaves_no_results(tmp_path):
    data = str(tmp_path / "clips")
    bad = clip_set(data, bad="nan")
    cfg = EvalConfig(manifest_dir=data, out_dir=str(tmp_path / "eval"), tasks=["clip"], seeds=[0],
                     baselines=["logmel"], epochs=2, clip_dir=data)
    with pytest.raises(AudioError, match=bad):
        run_evaluation(cfg)
    assert sorted(os.listdir(tmp_path / "eval")) == []


class _NaNLogMel(LogMelUpstream):
    """The log-mel upstream with one utterance's features poisoned (an upstream that overflows)."""

    def extract(self, wav):
        h = super().extract(wav)
        if float(wav[0]) == self.poison:
            h[0, 0, 0] = float("nan")
        return h


def test_non_finite_features_name_the_utterance_and_the_stage(tmp_path):
    data = str(tmp_path / "clips")
    clip_set(data)
    split = Split(data, "valid")
    up = _NaNLogMel(name="logmel")
    up.poison = float(split.read(4)[0])
    with pytest.raises(NonFiniteError) as e:
        FeatureStore(up).pooled(split)
    msg = str(e.value)
    assert f"{data}/valid.tsv:6: utterance 'valid_mid_1.wav'" in msg and "stage: feature extraction" in msg, msg


def test_a_diverging_probe_stops_naming_the_probe():
    x = 3 * torch.randn(12, 2, 4, generator=torch.Generator().manual_seed(0))
    y = torch.arange(12) % 3
    train_pooled_classifier((x, y), (x, y), (x, y), 3, ProbeConfig(epochs=3, lr=1e-2, batch_size=4), seed=0)
    with pytest.raises(FloatingPointError, match=r"logmel/clip/seed0: non-finite probe loss inf in epoch 1 "
                                                 r"\(stage: probe training"):
        train_pooled_classifier((x, y), (x, y), (x, y), 3, ProbeConfig(epochs=3, lr=3e37, batch_size=4), seed=0,
                                tag="logmel/clip/seed0")


def test_non_finite_result_rows_are_refused():
    row = {"upstream": "ckpt", "task": "clip", "seed": 1, "value": 0.5, "valid": 0.4,
           "layer_weights": [0.5, float("nan")]}
    with pytest.raises(NonFiniteError, match="ckpt/clip/seed1: non-finite layer_weights"):
        check_finite_row(row)
    check_finite_row(dict(row, layer_weights=[0.5, 0.5]))
