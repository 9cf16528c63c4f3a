"""Safe checkpoint loading on torch >= 2.6 (weights_only=True): fairseq checkpoints load through the plugin's
allow-list, a crafted pickle that would run code is refused and runs nothing, and a real checkpoint resumes and
fine-tunes through fairseq-hydra-train."""
import os
import pickle
import shutil
import subprocess
import sys
from argparse import Namespace

import pytest
import torch

from fairseq_plugins import compat

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN_DIR = os.path.join(REPO, "fairseq_plugins")


class _Exploit:
    """Unpickling this object would call ``os.makedirs(marker)``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


@pytest.fixture()
def malicious_checkpoint(tmp_path):
    marker = str(tmp_path / "pwned")
    path = str(tmp_path / "checkpoint_evil.pt")
    state = {"cfg": {"model": {"_name": "hubert"}}, "model": {"w": torch.zeros(2)}, "task_state": _Exploit(marker)}
    torch.save(state, path)
    assert not os.path.exists(marker)
    return path, marker


def _run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)


def test_allow_list_is_exactly_fairseq_classes():
    from fairseq.data.dictionary import Dictionary

    assert compat.fairseq_safe_globals() == [Dictionary, Namespace]


@pytest.mark.slow
def test_plain_torch_refuses_fairseq_checkpoint_and_plugin_loads_it(tiny_hubert):
    ckpt = tiny_hubert["ckpt"]
    plain = _run_python(f"import torch; torch.load({ckpt!r})")
    assert plain.returncode != 0
    assert "fairseq.data.dictionary.Dictionary" in plain.stderr
    loaded = _run_python(
        "from argparse import Namespace; import torch\n"
        "from fairseq import checkpoint_utils, utils\n"
        f"utils.import_user_module(Namespace(user_dir={PLUGIN_DIR!r}))\n"
        f"models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([{ckpt!r}])\n"
        "m = models[0]; print(type(m).__name__, sum(p.numel() for p in m.parameters()))\n"
        "print('weights_only default', torch.load.__defaults__)\n"
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert loaded.stdout.startswith("HubertModel ")


@pytest.mark.slow
def test_loaded_weights_match_the_file(tiny_hubert):
    from fairseq import checkpoint_utils

    models, _, _ = checkpoint_utils.load_model_ensemble_and_task([tiny_hubert["ckpt"]])
    state = compat.load_checkpoint_state(tiny_hubert["ckpt"])
    for k, v in models[0].state_dict().items():
        assert torch.equal(v, state["model"][k]), k


def test_crafted_pickle_is_refused_by_plugin_loader(malicious_checkpoint):
    path, marker = malicious_checkpoint
    with pytest.raises(compat.UnsafeCheckpointError) as err:
        compat.load_checkpoint_state(path)
    msg = str(err.value)
    assert msg.startswith(f"refusing to load {path}: it is not a plain fairseq/WavLM checkpoint.")
    assert "makedirs" in msg and "trust=True" in msg
    assert not os.path.exists(marker)


def test_crafted_pickle_is_refused_by_fairseq_loader(malicious_checkpoint):
    from fairseq import checkpoint_utils

    path, marker = malicious_checkpoint
    with pytest.raises(pickle.UnpicklingError, match="makedirs"):
        checkpoint_utils.load_checkpoint_to_cpu(path)
    assert not os.path.exists(marker)


def test_trust_is_an_explicit_opt_in(malicious_checkpoint):
    path, marker = malicious_checkpoint
    compat.load_checkpoint_state(path, trust=True)  # the user vouched for the file: the pickle runs
    assert os.path.isdir(marker)


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*nope.pt"):
        compat.load_checkpoint_state(str(tmp_path / "nope.pt"))


@pytest.mark.slow
def test_real_checkpoint_resumes(tiny_hubert, hydra_train, tmp_path):
    """fairseq-hydra-train started on a save_dir holding the tiny HuBERT's checkpoint_last resumes it
    (20 -> 30 updates) through fairseq's own loader, i.e. under weights_only=True with the allow-list."""
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(tiny_hubert["ckpt"], resumed / "checkpoint_last.pt")
    manifest = tiny_hubert["manifest"]
    log = hydra_train(
        os.path.join(REPO, "examples", "hubert", "config"), "hubert_tiny",
        [f"task.data={manifest}", f"task.label_dir={manifest}", f"checkpoint.save_dir={resumed}",
         "optimization.max_update=30", "checkpoint.save_interval_updates=10"],
        str(tmp_path / "run"),
    )
    assert "Loaded checkpoint" in log and "@ 20 updates" in log
    state = compat.load_checkpoint_state(str(resumed / "checkpoint_last.pt"))
    assert state["optimizer_history"][-1]["num_updates"] == 30


@pytest.mark.slow
def test_real_checkpoint_fine_tunes_with_ctc(tiny_hubert, hydra_train, tmp_path):
    """fairseq's own CTC fine-tuning (audio_finetuning + hubert_ctc_compat + ctc) starts from the checkpoint."""
    log = hydra_train(
        os.path.join(REPO, "examples", "hubert", "config"), "hubert_tiny_ctc",
        [f"task.data={tiny_hubert['manifest']}", f"model.w2v_path={tiny_hubert['ckpt']}",
         f"checkpoint.save_dir={tmp_path}/ctc", "optimization.max_update=4", "dataset.validate_interval_updates=4",
         "model.freeze_finetune_updates=2"],
        str(tmp_path / "run"),
    )
    assert "valid on 'valid' subset" in log and "| wer " in log
    state = compat.load_checkpoint_state(str(tmp_path / "ctc" / "checkpoint_last.pt"))
    assert state["cfg"]["model"]["_name"] == "hubert_ctc_compat"
    assert state["optimizer_history"][-1]["num_updates"] == 4
    # the encoder started from the pre-trained weights
    pre = compat.load_checkpoint_state(tiny_hubert["ckpt"])["model"]
    key = "feature_extractor.conv_layers.0.0.weight"
    assert torch.equal(state["model"][f"w2v_encoder.w2v_model.{key}"], pre[key])
