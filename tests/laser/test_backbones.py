"""Released-checkpoint backbones: a weight-copy check against fairseq's own load and an independent parity check
against transformers' HubertModel, loading without label files, strict key checks, clear errors for the wrong
kind of file, freezing by module name, and export round trips."""
import os
import subprocess
import sys

import pytest
import torch

from fairseq_plugins.compat import load_checkpoint_state
from fairseq_plugins.models.laser_finetune import LaserFinetuneModelConfig, freeze_except, trainable_module_names
from fairseq_plugins.modules.backbones import (
    BackboneCheckpointError,
    build_backbone_from_spec,
    export_backbone,
    load_backbone,
)
from fairseq_plugins.modules.wavlm import WavLMBackbone, WavLMConfig, load_wavlm_release, save_wavlm_release

pytestmark = pytest.mark.slow  # every test here needs the session's fairseq-trained tiny HuBERT


@pytest.fixture(scope="module")
def released_hubert(tiny_hubert, tmp_path_factory):
    """The tiny HuBERT as a release would ship it: its task paths point nowhere (no label files, no dicts)."""
    state = load_checkpoint_state(tiny_hubert["ckpt"])
    state["cfg"]["task"]["data"] = "/nonexistent/manifests"
    state["cfg"]["task"]["label_dir"] = "/nonexistent/labels"
    state.pop("last_optimizer_state", None)
    path = str(tmp_path_factory.mktemp("release") / "hubert_tiny_release.pt")
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def wavlm_release(tmp_path_factory):
    torch.manual_seed(0)
    cfg = WavLMConfig(encoder_layers=3, encoder_embed_dim=64, encoder_ffn_embed_dim=128, encoder_attention_heads=4,
                      conv_feature_layers="[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2", conv_pos=16,
                      conv_pos_groups=4, num_buckets=32, max_distance=64)
    path = str(tmp_path_factory.mktemp("wavlm") / "wavlm_tiny.pt")
    save_wavlm_release(WavLMBackbone(cfg), cfg, path)
    return path


def test_hubert_weight_copy_equals_fairseqs_own_load(released_hubert):
    """A weight-copy check: our loader builds fairseq's HubertModel and copies the file's weights, so this
    compares fairseq with fairseq; it proves no weight is lost or misplaced, not that the maths is HuBERT's
    (the transformers test below checks that independently)."""
    from fairseq import checkpoint_utils

    b = load_backbone(released_hubert)
    assert (b.kind, b.embed_dim, b.num_layers, b.normalize) == ("hubert", 128, 4, False)
    ref = checkpoint_utils.load_model_ensemble_and_task([released_hubert])[0][0].eval()
    wav = torch.randn(2, 12000)
    pad = torch.zeros(2, 12000, dtype=torch.bool)
    pad[1, 9000:] = True
    with torch.no_grad():
        for layer in (None, 2):
            ours, our_pad = b.model.extract_features(wav, padding_mask=pad, mask=False, output_layer=layer)
            theirs, their_pad = ref.extract_features(wav, padding_mask=pad, mask=False, output_layer=layer)
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
            assert torch.equal(our_pad, their_pad)


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")
def test_hubert_matches_transformers_hubert_model(released_hubert):
    """Independent parity: transformers' own HubertModel implementation, given the fairseq-trained weights
    through the export's one name mapping (fairseq_plugins.modules.hf_convert), computes the same layers."""
    from fairseq_plugins.modules.hf_convert import to_hf_model

    b = load_backbone(released_hubert)
    hf = to_hf_model(b)
    torch.manual_seed(1)
    wav = torch.randn(2, 32000)
    pad = torch.zeros(2, 32000, dtype=torch.bool)
    pad[1, 20000:] = True
    wav[pad] = 0.0
    with torch.no_grad():
        for pm in (None, pad):
            out = hf(wav, attention_mask=None if pm is None else (~pm).long(), output_hidden_states=True)
            final, frame_pad = b.model.extract_features(wav, padding_mask=pm, mask=False)
            valid = torch.ones(final.shape[:2], dtype=torch.bool) if pm is None else \
                hf._get_feature_vector_attention_mask(final.size(1), (~pm).long()).bool()
            if pm is not None:
                assert torch.equal(valid, ~frame_pad) and not valid[1].all()
            torch.testing.assert_close(final[valid], out.last_hidden_state[valid], rtol=0, atol=1e-5)
            for layer in range(1, b.num_layers):  # fairseq's output_layer=k: the output of layer k
                ours, _ = b.model.extract_features(wav, padding_mask=pm, mask=False, output_layer=layer)
                torch.testing.assert_close(ours[valid], out.hidden_states[layer][valid], rtol=0, atol=1e-5,
                                           msg=f"layer {layer}")


def test_rebuild_from_spec_has_the_same_architecture(released_hubert, wavlm_release):
    for path in (released_hubert, wavlm_release):
        b = load_backbone(path)
        again = build_backbone_from_spec(b.spec)
        assert {k: v.shape for k, v in again.model.state_dict().items()} == \
            {k: v.shape for k, v in b.model.state_dict().items()}


def test_strict_load_reports_every_bad_key(released_hubert, tmp_path):
    state = load_checkpoint_state(released_hubert)
    del state["model"]["encoder.layers.0.fc1.weight"]
    state["model"]["encoder.extra.weight"] = torch.zeros(1)
    state["model"]["layer_norm.weight"] = torch.zeros(7)
    path = str(tmp_path / "broken.pt")
    torch.save(state, path)
    with pytest.raises(BackboneCheckpointError) as err:
        load_backbone(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: weights do not match the architecture in its config: 1 missing "
                          "['encoder.layers.0.fc1.weight'], 1 unexpected ['encoder.extra.weight'], 1 with another "
                          "shape ['layer_norm.weight: file (7,) vs model (64,)']")


@pytest.mark.parametrize("state,expected", [
    ({"weights": torch.zeros(1)}, "not a model checkpoint (no 'model' entry); found a dict with keys ['weights']"),
    ({"cfg": {"model": {"_name": "transformer"}}, "model": {}},
     "a fairseq checkpoint of model 'transformer' (TransformerModel); expected a pre-trained HuBERT, WavLM or "
     "wav2vec 2.0 backbone"),
    ({"cfg": {"foo": 1}, "model": {}}, "unknown checkpoint format: found a dict with keys ['cfg', 'model']"),
])
def test_wrong_kind_of_file_names_what_it_found(tmp_path, state, expected):
    path = str(tmp_path / "x.pt")
    torch.save(state, path)
    with pytest.raises(BackboneCheckpointError, match=None) as err:
        load_backbone(path)
    assert expected in str(err.value) and path in str(err.value)


def test_wavlm_release_loads_strictly(wavlm_release):
    b = load_backbone(wavlm_release)
    assert (b.kind, b.embed_dim, b.num_layers) == ("wavlm", 64, 3)
    ref, _ = load_wavlm_release(wavlm_release)
    wav = torch.randn(1, 8000)
    with torch.no_grad():
        torch.testing.assert_close(b.model.extract_features(wav)[0], ref.extract_features(wav)[0], rtol=0, atol=0)


def test_freezing_is_by_module_name(released_hubert):
    b = load_backbone(released_hubert)
    names = trainable_module_names(b, LaserFinetuneModelConfig(checkpoint=released_hubert))
    assert names == ["encoder.layers.2", "encoder.layers.3", "encoder.layer_norm"]
    trainable = freeze_except(b.model, names)
    assert trainable and all(t.startswith(("encoder.layers.2.", "encoder.layers.3.", "encoder.layer_norm."))
                             for t in trainable)
    frozen = [n for n, p in b.model.named_parameters() if not p.requires_grad]
    assert "encoder.layers.1.fc1.weight" in frozen and "feature_extractor.conv_layers.0.0.weight" in frozen
    with pytest.raises(ValueError, match=r"trainable module\(s\) \['encoder.layers.9'\] not found in the backbone"):
        freeze_except(b.model, ["encoder.layers.9"])


def test_hubert_export_loads_in_plain_fairseq(released_hubert, tmp_path):
    b = load_backbone(released_hubert)
    tuned = {k: v + 0.5 for k, v in b.model.state_dict().items()}
    out = str(tmp_path / "tuned.pt")
    assert export_backbone(tuned, released_hubert, out) == ("hubert", len(tuned))
    torch.save(tuned, str(tmp_path / "tuned_weights.pt"))
    # fairseq alone, no plugin import: only the Dictionary class is allow-listed by hand
    code = (
        "import torch, sys\n"
        "from fairseq.data.dictionary import Dictionary\n"
        "torch.serialization.add_safe_globals([Dictionary])\n"
        "from fairseq import checkpoint_utils\n"
        f"m = checkpoint_utils.load_model_ensemble_and_task([{out!r}])[0][0]\n"
        f"tuned = torch.load({str(tmp_path / 'tuned_weights.pt')!r})\n"
        f"orig = torch.load({released_hubert!r})['model']\n"
        "sd = m.state_dict()\n"
        "assert all(torch.equal(sd[k], v) for k, v in tuned.items()), 'tuned weights differ'\n"
        "assert torch.equal(sd['final_proj.weight'], orig['final_proj.weight'])\n"
        "assert 'fairseq_plugins' not in sys.modules\n"
        "print(type(m).__name__)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=str(tmp_path), env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "HubertModel"


def test_wavlm_export_round_trip(wavlm_release, tmp_path):
    b = load_backbone(wavlm_release)
    tuned = {k: v * 0.5 for k, v in b.model.release_state_dict().items()}
    out = str(tmp_path / "wavlm_tuned.pt")
    export_backbone(tuned, wavlm_release, out)
    model, _ = load_wavlm_release(out)
    back = model.release_state_dict()
    assert set(back) == set(tuned) and all(torch.equal(back[k], v) for k, v in tuned.items())
    assert set(torch.load(out, weights_only=True)) == {"cfg", "model"}


def test_export_refuses_weights_of_another_shape(released_hubert, tmp_path):
    with pytest.raises(BackboneCheckpointError, match=r"1 with another shape \['layer_norm.weight'\]"):
        export_backbone({"layer_norm.weight": torch.zeros(5)}, released_hubert, str(tmp_path / "o.pt"))
