"""Every checkpoint shape users have (tests/checkpoints/conftest.py says where each is known from) loads through
the one loader that LASER, the probes and inspect_checkpoint share, and gives the same features as fairseq's own
model loaded from the fairseq-hydra-train checkpoint the shape was made from."""
import logging
import os
import subprocess
import sys

import pytest
import torch

from fairseq_plugins.compat import load_checkpoint_state
from fairseq_plugins.evaluate.upstream import HookedUpstream, load_upstream
from fairseq_plugins.inspect_checkpoint import describe
from fairseq_plugins.inspect_checkpoint import main as inspect_main
from fairseq_plugins.modules.backbones import CTC_PREFIX, BackboneCheckpointError, load_backbone

pytestmark = pytest.mark.slow
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HUBERT_HEADS = ["final_proj.bias", "final_proj.weight", "label_embs_concat"]
EXPECTED = {  # kind, layers, dim, normalize, layer_norm_first, head keys dropped, source
    "hubert_2021": ("hubert", 4, 128, False, False, HUBERT_HEADS, "fairseq hubert pre-training (cfg, no task_state)"),
    "hubert_large_2021": ("hubert", 4, 128, True, True, HUBERT_HEADS,
                          "fairseq hubert pre-training (cfg, no task_state)"),
    "hubert_today": ("hubert", 4, 128, False, False, HUBERT_HEADS, "fairseq hubert pre-training (cfg, task_state)"),
    # fairseq's HubertEncoder keeps label_embs_concat inside the fine-tuned model (remove_pretraining_modules
    # drops only final_proj / target_glu), and the CTC projection is the fine-tuning head
    "hubert_ctc": ("hubert", 4, 128, False, False, ["w2v_encoder.proj.bias", "w2v_encoder.proj.weight",
                                                      "label_embs_concat"],
                   "CTC fine-tuned hubert (hubert_ctc_compat, cfg)"),
    "wav2vec2_prehydra": ("wav2vec2", 2, 128, False, False,
                          ["final_proj.bias", "final_proj.weight", "project_q.bias", "project_q.weight",
                           "quantizer.vars", "quantizer.weight_proj.bias", "quantizer.weight_proj.weight"],
                          "fairseq wav2vec2 pre-training (pre-hydra args, no task_state)"),
    "wavlm_release": ("wavlm", 4, 128, False, False, [], "WavLM release file"),
}
SHAPES = sorted(EXPECTED)


@pytest.mark.parametrize("shape", SHAPES)
def test_loader_finds_the_encoder_and_keeps_its_weights(release_shapes, shape):
    path = release_shapes[shape]["path"]
    b = load_backbone(path)
    kind, layers, dim, normalize, ln_first, dropped, source = EXPECTED[shape]
    s = b.summary()
    assert (s["kind"], s["layers"], s["dim"], s["normalize"], s["layer_norm_first"]) == \
        (kind, layers, dim, normalize, ln_first)
    assert sorted(s["heads_dropped"]) == sorted(dropped) and s["source"] == source
    file_weights = load_checkpoint_state(path)["model"]
    prefix = CTC_PREFIX if shape == "hubert_ctc" else ""
    own = b.model.release_state_dict() if kind == "wavlm" else b.model.state_dict()
    assert all(torch.equal(v, file_weights[prefix + k]) for k, v in own.items())
    assert len(own) + len(dropped) == len(file_weights)


@pytest.mark.parametrize("shape", SHAPES)
def test_probe_upstream_matches_fairseqs_own_model(release_shapes, shape, wavs, fairseq_reference):
    """The probes' upstream of the shaped file == fairseq's own model of the original checkpoint."""
    up = load_upstream(release_shapes[shape]["path"], shape)
    assert isinstance(up, HookedUpstream) and up.num_layers == EXPECTED[shape][1] + 1
    assert up.info["source"] == EXPECTED[shape][6] and up.normalize == EXPECTED[shape][3]
    wav, pad = wavs
    states, frame_pad = up(wav, pad)
    ref = fairseq_reference(release_shapes[shape]["original"], wav, pad)
    valid = ~frame_pad
    assert torch.equal(frame_pad, ref["frame_pad"])
    # float32 summation order: up to 4e-6 apart measured on the normalised Large-style model, 0 on the rest
    torch.testing.assert_close(states[-1][valid], ref["final"][valid], rtol=0, atol=1e-5)
    for k in range(1, up.num_layers - 1):  # the probes' state k is the output of layer k
        torch.testing.assert_close(states[k][valid], ref["layers"][k][valid], rtol=0, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_inspect_checkpoint_says_what_it_found(release_shapes, shape, capsys):
    assert inspect_main([release_shapes[shape]["path"]]) == 0
    out = capsys.readouterr().out
    kind, layers, dim, normalize, _, dropped, source = EXPECTED[shape]
    lines = dict(line.split(None, 1) for line in out.strip().splitlines())
    assert (lines["kind"], lines["layers"], lines["dim"], lines["normalize"], lines["source"]) == \
        (kind, str(layers), str(dim), str(normalize), source)
    assert all(k in lines["heads_dropped"] for k in dropped)


def test_fairseqs_own_loader_fails_on_the_2021_shape(release_shapes):
    """Why the shared loader exists: fairseq rebuilds the task from cfg.task.label_dir (fairseq #3624)."""
    from fairseq import checkpoint_utils

    with pytest.raises(FileNotFoundError, match=r"authors/librispeech/labels/dict\.lyr9\.km500\.txt"):
        checkpoint_utils.load_model_ensemble_and_task([release_shapes["hubert_2021"]["path"]])


def test_inspect_checkpoint_cli_on_the_2021_shape(release_shapes):
    path = release_shapes["hubert_2021"]["path"]
    proc = subprocess.run([sys.executable, "-m", "fairseq_plugins.inspect_checkpoint", path], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no task_state" in proc.stdout and "label_embs_concat" in proc.stdout


def test_head_keys_are_dropped_with_one_log_line(release_shapes, caplog):
    path = release_shapes["hubert_2021"]["path"]
    with caplog.at_level(logging.INFO, logger="fairseq_plugins.modules.backbones"):
        load_backbone(path)
    lines = [r.getMessage() for r in caplog.records if "head key" in r.getMessage()]
    assert lines == [f"{path}: dropped 3 head key(s) that are not part of the encoder: "
                     "final_proj.bias, final_proj.weight, label_embs_concat"]


def test_any_other_mismatch_stays_an_error(release_shapes, tmp_path):
    state = load_checkpoint_state(release_shapes["hubert_2021"]["path"])
    state["model"]["encoder.layers.0.extra.weight"] = torch.zeros(3)
    del state["model"]["encoder.layers.1.fc2.bias"]
    path = str(tmp_path / "mismatch.pt")
    torch.save(state, path)
    with pytest.raises(BackboneCheckpointError) as err:
        load_backbone(path)
    assert str(err.value) == (f"{path}: weights do not match the architecture in its config: 1 missing "
                              "['encoder.layers.1.fc2.bias'], 1 unexpected ['encoder.layers.0.extra.weight'], "
                              "0 with another shape []")


def test_describe_names_the_training_state(tiny_hubert):
    """inspect_checkpoint on a checkpoint saved by fairseq-hydra-train also says how far it trained."""
    info = describe(tiny_hubert["ckpt"])
    assert info["num_updates"] == 20 and info["kind"] == "hubert"


@pytest.mark.parametrize("shape", ["wav2vec2_prehydra", "hubert_2021", "wavlm_release"])
def test_laser_model_encodes_every_backbone_kind(release_shapes, shape):
    """LASER's model reads layer k of every backbone kind the loader returns: fairseq's Wav2Vec2Model takes
    ``layer`` (0-based) and returns a dict where HuBERT / WavLM take ``output_layer`` (1-based) and return a
    tuple (the wav2vec 2.0 path used to pass ``output_layer`` to a function that has no such argument)."""
    from fairseq_plugins.models.laser_finetune import LaserFinetuneModel, LaserFinetuneModelConfig

    torch.manual_seed(0)
    model = LaserFinetuneModel.build_model(LaserFinetuneModelConfig(checkpoint=release_shapes[shape]["path"],
                                                                   output_layer=1)).eval()
    wav = torch.randn(1, 16000)
    with torch.no_grad():
        x, pad = model._encode(model.backbone, wav, None)
        full = model.extract_features(wav)[0]
        out = model(wav)
    dim = load_backbone(release_shapes[shape]["path"]).embed_dim
    assert x.shape == (1, 49, dim) and full.shape == (1, 49, dim) and pad is None
    assert load_backbone(release_shapes[shape]["path"]).num_layers >= 2
    assert not torch.allclose(x, full)  # layer 1 is not the last layer
    assert out["x"].shape == (1, 49, 256) and torch.allclose(out["x"].norm(dim=-1), torch.ones(1, 49))
