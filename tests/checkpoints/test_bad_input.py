"""A bad checkpoint gives one clear line naming the file and what was expected, in the loader, the probes, the
evaluation CLI, inspect_checkpoint and the export CLI alike. Each bad file is made here: a text file renamed
.pt, a directory, a truncated download, a checkpoint that is not a speech encoder, weights that do not fit the
config."""
import os
import subprocess
import sys

import pytest
import torch

from fairseq_plugins.compat import load_checkpoint_state
from fairseq_plugins.evaluate.upstream import load_upstream
from fairseq_plugins.modules.backbones import BackboneCheckpointError, load_backbone

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def text_as_pt(tmp_path):
    path = tmp_path / "hubert_base_ls960.pt"
    path.write_text("<html><body>404 Not Found</body></html>\n")
    return str(path), "is not a torch checkpoint (40 bytes starting with b'<html><b'); expected a speech encoder"


def directory(tmp_path):
    path = tmp_path / "checkpoints"
    path.mkdir()
    return str(path), "is a directory; expected a checkpoint file (.pt) or a folder exported with --format"


def not_an_encoder(tmp_path):
    path = tmp_path / "translation.pt"
    torch.save({"cfg": {"model": {"_name": "transformer"}, "task": {"_name": "translation"}}, "model": {}}, path)
    return str(path), "a fairseq checkpoint of model 'transformer' (TransformerModel); expected a pre-trained"


def bare_weights(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"encoder.layers.0.fc1.weight": torch.zeros(2, 2)}, path)
    return str(path), "not a model checkpoint (no 'model' entry); found a dict with keys ['encoder.layers.0.fc1"


CASES = [text_as_pt, directory, not_an_encoder, bare_weights]


@pytest.mark.parametrize("make", CASES, ids=lambda f: f.__name__)
def test_loader_and_probes_name_the_file(make, tmp_path):
    path, expected = make(tmp_path)
    for load in (load_backbone, lambda p: load_upstream(p, "x")):
        with pytest.raises(BackboneCheckpointError) as err:
            load(path)
        assert path in str(err.value) and expected in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("make", CASES, ids=lambda f: f.__name__)
def test_inspect_checkpoint_prints_one_line(make, tmp_path, capsys):
    from fairseq_plugins.inspect_checkpoint import main

    path, expected = make(tmp_path)
    assert main([path]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {path}") and expected in err and "\n" not in err


@pytest.mark.slow
def test_truncated_checkpoint(tiny_hubert, tmp_path, capsys):
    from fairseq_plugins.inspect_checkpoint import main

    data = open(tiny_hubert["ckpt"], "rb").read()
    path = str(tmp_path / "checkpoint_half.pt")
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    expected = f"{path} is truncated or corrupted ({len(data) // 2} bytes, its zip directory is missing)"
    for load in (load_backbone, lambda p: load_upstream(p, "x")):
        with pytest.raises(BackboneCheckpointError, match=None) as err:
            load(path)
        assert str(err.value).startswith(expected)
    assert main([path]) == 1
    assert capsys.readouterr().err.strip().startswith(f"error: {expected}")


@pytest.mark.slow
def test_weights_that_do_not_fit_the_config(tiny_hubert, tmp_path):
    state = load_checkpoint_state(tiny_hubert["ckpt"])
    state["cfg"]["model"]["encoder_layers"] = 3  # the file holds 4 layers
    path = str(tmp_path / "three_layers.pt")
    torch.save(state, path)
    with pytest.raises(BackboneCheckpointError) as err:
        load_upstream(path, "x")
    msg = str(err.value)
    assert msg.startswith(f"{path}: weights do not match the architecture in its config: 0 missing [], "
                          "16 unexpected ['encoder.layers.3.fc1.bias'")


@pytest.mark.slow
def test_evaluation_cli_names_the_bad_file(mini_corpus, tmp_path):
    path, expected = text_as_pt(tmp_path)
    out = tmp_path / "eval"
    proc = subprocess.run(
        [sys.executable, "-m", "fairseq_plugins.evaluate", "--checkpoints", f"bad={path}", "--manifest-dir",
         os.path.join(mini_corpus, "manifest"), "--out", str(out), "--tasks", "speaker_id", "--seeds", "0",
         "--baselines", "logmel"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]
    # fairseq's log format (fairseq_plugins.compat.cli_logging): "TIME | ERROR | LOGGER | MESSAGE"
    errors = [line.split(" | ERROR | ", 1)[1] for line in proc.stderr.splitlines() if " | ERROR | " in line]
    # one line names the file; the pipeline then says that nothing was written
    assert errors[0].startswith(f"fairseq_plugins.evaluate | {path} ") and expected in errors[0], proc.stderr
    assert len(errors) <= 2 and all(path not in e for e in errors[1:])
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_export_cli_names_the_bad_file(tmp_path):
    path, expected = text_as_pt(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "fairseq_plugins.export_laser", path, "--format", "hf",
                           "--out", str(tmp_path / "hf")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {path} ") and expected in last and "Traceback" not in proc.stderr
