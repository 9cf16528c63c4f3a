"""Tests of the HuBERT k-means targets (manifests.hubert_labels): iteration 1 (MFCC) and iteration 2 (a layer of
a trained checkpoint, loaded with the plugin's one loader), their file format (one label per 320 samples, the
dictionary), the phone purity they report, and the errors for a bad layer index or checkpoint."""
import logging
import os

import pytest

from fairseq_plugins.data.manifest_io import read_manifest
from fairseq_plugins.modules.backbones import BackboneCheckpointError, load_backbone
from manifests.hubert_labels import HOP, main, make_kmeans_labels

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _labels(out_dir, split):
    with open(os.path.join(out_dir, f"{split}.km")) as f:
        return [line.split() for line in f.read().splitlines()]


def _check_format(manifest, out_dir, n_clusters):
    for split in ("train", "valid"):
        _, rows = read_manifest(os.path.join(manifest, f"{split}.tsv"))
        labels = _labels(out_dir, split)
        assert [len(lab) for lab in labels] == [n // HOP for _, n in rows], split
        assert all(0 <= int(c) < n_clusters for lab in labels for c in lab)
    with open(os.path.join(out_dir, "dict.km.txt")) as f:
        assert [line.split()[0] for line in f] == [str(i) for i in range(n_clusters)]


@pytest.fixture(scope="module")
def iteration2(tiny_hubert, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("iter2"))
    layers = load_backbone(tiny_hubert["ckpt"]).num_layers
    counts = make_kmeans_labels(tiny_hubert["manifest"], n_clusters=12, out_dir=out,
                                checkpoint=tiny_hubert["ckpt"], layer=max(1, layers // 2))
    return out, counts, layers


def test_iteration1_mfcc_labels_and_purity(mini_corpus, tmp_path):
    manifest = os.path.join(mini_corpus, "manifest")
    counts = make_kmeans_labels(manifest, n_clusters=12, out_dir=str(tmp_path))
    _check_format(manifest, str(tmp_path), 12)
    assert 0.0 < counts["purity/train"] <= 1.0 and 0.0 < counts["purity/valid"] <= 1.0


def test_iteration2_clusters_a_layer_of_the_checkpoint(tiny_hubert, iteration2, tmp_path):
    out, counts, _ = iteration2
    _check_format(tiny_hubert["manifest"], out, 12)
    assert 0.0 < counts["purity/train"] <= 1.0
    mfcc = make_kmeans_labels(tiny_hubert["manifest"], n_clusters=12, out_dir=str(tmp_path))
    assert counts["train"] == mfcc["train"]
    assert _labels(out, "train") != _labels(str(tmp_path), "train")  # other features, other clusters


@pytest.mark.parametrize("layer", [0, -1, "too_high"])
def test_a_bad_layer_index_names_the_checkpoint_and_its_layers(tiny_hubert, iteration2, tmp_path, layer):
    _, _, layers = iteration2
    layer = layers + 1 if layer == "too_high" else layer
    with pytest.raises(ValueError) as e:
        make_kmeans_labels(tiny_hubert["manifest"], out_dir=str(tmp_path), checkpoint=tiny_hubert["ckpt"],
                           layer=layer)
    assert str(e.value) == (
        f"--layer {layer!r}: {tiny_hubert['ckpt']} has {layers} transformer layers; expected a layer index in "
        f"1..{layers} (1-based; HuBERT's recipe takes a middle one, e.g. {max(1, layers // 2)})")
    assert not os.listdir(tmp_path)  # nothing written


def test_a_bad_checkpoint_names_the_file(mini_corpus, tmp_path):
    manifest = os.path.join(mini_corpus, "manifest")
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(BackboneCheckpointError, match=f"^{text} is not a torch checkpoint"):
        make_kmeans_labels(manifest, out_dir=str(tmp_path / "out"), checkpoint=str(text), layer=1)
    with pytest.raises(FileNotFoundError, match=f"checkpoint not found: {tmp_path}/missing.pt"):
        make_kmeans_labels(manifest, out_dir=str(tmp_path / "out"), checkpoint=str(tmp_path / "missing.pt"),
                           layer=1)
    with pytest.raises(ValueError, match="checkpoint and layer go together"):
        make_kmeans_labels(manifest, out_dir=str(tmp_path / "out"), layer=1)


def test_cli_reports_errors_in_one_line(mini_corpus, tmp_path, caplog, capsys):
    manifest = os.path.join(mini_corpus, "manifest")
    with caplog.at_level(logging.ERROR):
        assert main(["--manifest-dir", manifest, "--out-dir", str(tmp_path), "--checkpoint",
                     str(tmp_path / "missing.pt"), "--layer", "2"]) == 1
    assert f"checkpoint not found: {tmp_path}/missing.pt" in caplog.text
    with pytest.raises(SystemExit) as e:
        main(["--manifest-dir", manifest, "--checkpoint", str(tmp_path / "missing.pt")])
    assert e.value.code == 2 and "--checkpoint and --layer go together" in capsys.readouterr().err


@pytest.mark.slow
def test_fairseq_hubert_trains_on_iteration2_labels(tiny_hubert, iteration2, hydra_train, tmp_path):
    out, _, _ = iteration2
    log = hydra_train(os.path.join(REPO, "examples", "hubert", "config"), "hubert_tiny",
                      [f"task.data={tiny_hubert['manifest']}", f"task.label_dir={out}",
                       f"checkpoint.save_dir={tmp_path}/ckpt", "optimization.max_update=4",
                       "checkpoint.save_interval_updates=4", "dataset.validate_interval_updates=4"],
                      str(tmp_path))
    assert "done training" in log
    assert load_backbone(os.path.join(str(tmp_path), "ckpt", "checkpoint_last.pt")).num_layers >= 1
