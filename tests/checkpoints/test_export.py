"""Export of every encoder shape to Hugging Face transformers (a save_pretrained folder checked in a fresh process
that never imports the plugin) and to safetensors in the fairseq layout (read back by the plugin)."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from fairseq_plugins.evaluate.upstream import load_upstream
from fairseq_plugins.export_laser import export
from fairseq_plugins.modules.backbones import load_backbone
from fairseq_plugins.modules.hf_convert import POS_CONV_G, to_hf_state_dict

pytestmark = pytest.mark.slow
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HF_SHAPES = {"hubert_2021": "HubertModel", "hubert_large_2021": "HubertModel", "hubert_ctc": "HubertModel",
             "wav2vec2_prehydra": "HubertModel", "wavlm_release": "WavLMModel"}

# run by the test in a fresh interpreter: transformers only, no fairseq, no plugin
HF_RUN = r'''
import sys, torch, transformers
from safetensors.torch import load_file, save_file
folder, inp, out = sys.argv[1:4]
x = load_file(inp)
pre = transformers.AutoFeatureExtractor.from_pretrained(folder)
model = transformers.AutoModel.from_pretrained(folder).eval()
attention_mask = (~x["pad"].bool()).long()
with torch.no_grad():
    o = model(x["wav"], attention_mask=attention_mask, output_hidden_states=True)
    valid = model._get_feature_vector_attention_mask(o.last_hidden_state.size(1), attention_mask)
res = {f"hidden_{i}": h.clone().contiguous() for i, h in enumerate(o.hidden_states)}
res["last"] = o.last_hidden_state.clone().contiguous()
res["valid"] = valid.to(torch.uint8)
save_file(res, out)
assert not any(m.startswith(("fairseq", "fairseq_plugins")) for m in sys.modules), "plugin/fairseq imported"
print(type(model).__name__, type(pre).__name__, pre.do_normalize)
'''


def conv_frames(n: int) -> int:
    """Frames of the conv stack of the test models ([(10,5)] + [(3,2)] * 4 + [(2,2)] * 2) for n samples."""
    for k, st in [(10, 5)] + [(3, 2)] * 4 + [(2, 2)] * 2:
        n = (n - k) // st + 1
    return n


@pytest.fixture(scope="module")
def aligned_wavs(wavs):
    """The padded batch with the shorter utterance cut to a length at which fairseq HuBERT/WavLM's frame mask
    (a frame is valid when any sample of its S // T chunk is) equals transformers' (the conv output-length
    formula). At other lengths fairseq lets one more frame into attention than transformers, so the padded
    item differs between the two libraries (fairseq's own batching effect); the unpadded item never does."""
    wav, pad = wavs
    s = wav.size(1)
    t = conv_frames(s)
    chunk = (s - s % t) // t
    short = int((~pad).sum(1).argmin())
    n = int((~pad[short]).sum())
    while -(-n // chunk) != conv_frames(n):
        n -= 1
    wav, pad = wav.clone(), pad.clone()
    wav[short, n:], pad[short, n:] = 0.0, True
    return wav, pad


@pytest.mark.parametrize("shape", sorted(HF_SHAPES))
def test_hf_export_matches_fairseqs_own_model(release_shapes, shape, aligned_wavs, fairseq_reference, tmp_path):
    """The CLI writes the folder (its own fresh-process check must pass); then, independently, transformers
    alone loads the folder in another fresh process and runs a padded batch of two real utterances; its hidden
    states are compared here with fairseq's own model of the fairseq-hydra-train checkpoint the shape was made
    from, and the saved feature extractor normalises exactly when the checkpoint does."""
    folder = str(tmp_path / "hf")
    proc = subprocess.run([sys.executable, "-m", "fairseq_plugins.export_laser", release_shapes[shape]["path"],
                           "--format", "hf", "--out", folder], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"as transformers {HF_SHAPES[shape]}" in proc.stdout
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= set(os.listdir(folder))
    with open(os.path.join(folder, "config.json")) as f:
        assert json.load(f)["architectures"] == [HF_SHAPES[shape]]

    wav, pad = aligned_wavs
    ref = fairseq_reference(release_shapes[shape]["original"], wav, pad)
    # the model's input: fairseq's normalised waveform when the checkpoint says normalize (the saved feature
    # extractor's do_normalize does this for HF users, with its own epsilon)
    save_file({"wav": ref["input"], "pad": pad.to(torch.uint8)}, str(tmp_path / "in.safetensors"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, "-c", HF_RUN, folder, str(tmp_path / "in.safetensors"),
                          str(tmp_path / "out.safetensors")], cwd=str(tmp_path), capture_output=True, text=True,
                         timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-4000:]
    assert run.stdout.split() == [HF_SHAPES[shape], "Wav2Vec2FeatureExtractor", str(ref["normalize"])]
    hf = load_file(str(tmp_path / "out.safetensors"))
    valid = hf["valid"].bool()
    assert torch.equal(valid, ~ref["frame_pad"]) and not valid.all()
    torch.testing.assert_close(hf["last"][valid], ref["final"][valid], rtol=0, atol=1e-5)
    for k, layer in ref["layers"].items():
        torch.testing.assert_close(hf[f"hidden_{k}"][valid], layer[valid], rtol=0, atol=1e-5, msg=f"layer {k}")


@pytest.mark.parametrize("shape", ["hubert_2021", "hubert_large_2021", "hubert_ctc", "wav2vec2_prehydra",
                                   "wavlm_release", "hubert_today"])
def test_safetensors_export_loads_back(release_shapes, shape, wavs, tmp_path):
    path, folder = release_shapes[shape]["path"], str(tmp_path / "st")
    info = export(path, folder, fmt="safetensors")
    assert set(os.listdir(folder)) == {"config.json", "model.safetensors"}
    a, b = load_backbone(path), load_backbone(folder)
    assert info["tensors"] == len(a.model.state_dict())
    assert (b.kind, b.num_layers, b.embed_dim, b.normalize) == (a.kind, a.num_layers, a.embed_dim, a.normalize)
    assert b.source.startswith("safetensors export (")
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    wav, pad = wavs
    up_a, up_b = load_upstream(path, "a"), load_upstream(folder, "b")
    for x, y in zip(up_a(wav, pad)[0], up_b(wav, pad)[0]):
        assert torch.equal(x, y)


def test_weight_norm_names_follow_the_hf_model():
    """transformers #31633: the positional conv's weight-norm parameters are named after torch's API."""
    state = {"encoder.pos_conv.0.weight_g": torch.ones(1), "encoder.pos_conv.0.weight_v": torch.zeros(1)}
    new = to_hf_state_dict(state, {POS_CONV_G})
    assert set(new) == {POS_CONV_G, "encoder.pos_conv_embed.conv.parametrizations.weight.original1"}
    assert torch.equal(new[POS_CONV_G], torch.ones(1))
    old = to_hf_state_dict(state, {"encoder.pos_conv_embed.conv.weight_g"})
    assert set(old) == {"encoder.pos_conv_embed.conv.weight_g", "encoder.pos_conv_embed.conv.weight_v"}
    with pytest.raises(KeyError, match="no HF name for quantizer.vars"):
        to_hf_state_dict({"quantizer.vars": torch.ones(1)}, set())
