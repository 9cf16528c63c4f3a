"""Hugging Face transformers export of a loaded backbone: the weight-name mapping, the config, and a check.

fairseq HuBERT / wav2vec 2.0 encoders become ``transformers.HubertModel`` and WavLM encoders (release files
or the plugin's ``wavlm`` model) ``transformers.WavLMModel``, written with ``save_pretrained`` (``config.json``
+ ``model.safetensors``, plus a ``preprocessor_config.json`` whose ``do_normalize`` is the checkpoint's
``normalize``: HF models do not normalise the waveform themselves). :func:`to_hf_state_dict` is the one
fairseq -> HF weight-name mapping: the export uses it and so do the parity tests. Its only subtle part is the
weight-normed positional convolution: fairseq stores ``weight_g`` / ``weight_v``, transformers
``parametrizations.weight.original0`` / ``original1`` (torch >= 2.1) or ``weight_g`` / ``weight_v`` (older
torch); the target names are read from the HF model itself (transformers #31633 is this bug in HF's own
converter).

:func:`export_hf` verifies what it wrote in a fresh Python process that imports transformers but never this
plugin: the folder loads with no missing, unexpected or mis-shaped weight, and every hidden state of a
padded batch (``B x T x C``: the input of layer 1, each layer's output, the final output, HF's
``output_hidden_states`` convention) is within ``atol`` of the fairseq model's on the valid frames, whose
masks must agree, and ``last_hidden_state`` within ``atol`` of the final output. The masks are a real difference
between the libraries: fairseq HuBERT / WavLM call a frame valid when any sample of its ``S // T`` chunk is,
transformers uses the conv output-length formula (fairseq wav2vec 2.0 does too), so at some lengths a padded
item lets one more frame into attention in fairseq than in transformers and the two disagree on that item; the
check's batch (32000 and 20000 samples) is at lengths where both masks agree.
"""
import json
import logging
import os
import subprocess
import sys
import tempfile
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from fairseq_plugins.modules.backbones import Backbone, BackboneCheckpointError

logger = logging.getLogger(__name__)

#: per-layer module names, fairseq (and WavLM release) -> transformers
LAYER_MAP = {
    "self_attn.grep_a": "attention.gru_rel_pos_const",
    "self_attn.grep_linear": "attention.gru_rel_pos_linear",
    "self_attn.relative_attention_bias": "attention.rel_attn_embed",
    "self_attn.q_proj": "attention.q_proj", "self_attn.k_proj": "attention.k_proj",
    "self_attn.v_proj": "attention.v_proj", "self_attn.out_proj": "attention.out_proj",
    "self_attn_layer_norm": "layer_norm", "fc1": "feed_forward.intermediate_dense",
    "fc2": "feed_forward.output_dense", "final_layer_norm": "final_layer_norm",
}
POS_CONV_G = "encoder.pos_conv_embed.conv.parametrizations.weight.original0"


def to_hf_state_dict(state: Mapping[str, torch.Tensor], hf_keys) -> Dict[str, torch.Tensor]:
    """fairseq / WavLM-release weight names -> HF ``HubertModel`` / ``WavLMModel`` names; raises ``KeyError``
    on a key it does not know. ``hf_keys``: the HF model's ``state_dict()`` keys (they decide the
    weight-norm names)."""
    g, v = (("parametrizations.weight.original0", "parametrizations.weight.original1")
            if POS_CONV_G in hf_keys else ("weight_g", "weight_v"))
    fixed = {"mask_emb": "masked_spec_embed", "layer_norm.weight": "feature_projection.layer_norm.weight",
             "layer_norm.bias": "feature_projection.layer_norm.bias",
             "post_extract_proj.weight": "feature_projection.projection.weight",
             "post_extract_proj.bias": "feature_projection.projection.bias",
             "encoder.pos_conv.0.bias": "encoder.pos_conv_embed.conv.bias",
             "encoder.pos_conv.0.weight_g": f"encoder.pos_conv_embed.conv.{g}",
             "encoder.pos_conv.0.weight_v": f"encoder.pos_conv_embed.conv.{v}",
             "encoder.layer_norm.weight": "encoder.layer_norm.weight",
             "encoder.layer_norm.bias": "encoder.layer_norm.bias"}
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if key in fixed:
            new = fixed[key]
        elif key.startswith("feature_extractor.conv_layers."):
            # block = Sequential(conv, dropout, norm, gelu); layer-norm mode wraps the norm as (T, LN, T)
            block = {"0": "conv", "2": "layer_norm"}[parts[3]]
            new = f"feature_extractor.conv_layers.{parts[2]}.{block}.{parts[-1]}"
        elif key.startswith("encoder.layers."):
            rest = ".".join(parts[3:])
            prefix = next((p for p in LAYER_MAP if rest == p or rest.startswith(p + ".")), None)
            if prefix is None:
                raise KeyError(f"no HF name for {key}")
            new = f"encoder.layers.{parts[2]}.{LAYER_MAP[prefix]}{rest[len(prefix):]}"
        else:
            raise KeyError(f"no HF name for {key}")
        out[new] = value
    return out


def is_wavlm(model: nn.Module) -> bool:
    from fairseq_plugins.modules.wavlm import WavLMTransformerEncoder

    return isinstance(getattr(model, "encoder", None), WavLMTransformerEncoder)


def _arch(backbone: Backbone) -> Dict[str, Any]:
    """The architecture fields of the backbone's config (fairseq model cfg or WavLM cfg) as a plain dict."""
    cfg = backbone.spec.get("cfg") if backbone.kind == "wavlm" else backbone.spec.get("model")
    if cfg is None:
        raise BackboneCheckpointError(f"backbone spec without an architecture config: {sorted(backbone.spec)}")
    return dict(cfg)


def hf_config(backbone: Backbone):
    """The ``transformers.HubertConfig`` / ``WavLMConfig`` of ``backbone``; raises for what HF cannot express."""
    import transformers

    from fairseq_plugins.modules.wavlm import parse_conv_feature_layers

    a = _arch(backbone)
    wavlm = is_wavlm(backbone.model)
    problems = []
    if a.get("activation_fn", "gelu") != "gelu":
        problems.append(f"activation_fn={a.get('activation_fn')}")
    if int(a.get("pos_conv_depth", 1)) != 1:
        problems.append(f"pos_conv_depth={a.get('pos_conv_depth')}")
    if a.get("conv_pos_batch_norm", False):
        problems.append("conv_pos_batch_norm=true")
    if str(a.get("layer_type", "transformer")) != "transformer":
        problems.append(f"layer_type={a.get('layer_type')}")
    if wavlm and not (a.get("relative_position_embedding", True) and a.get("gru_rel_pos", True)):
        problems.append("WavLM without gated relative position bias")
    if problems:
        raise BackboneCheckpointError(f"transformers has no equivalent of {', '.join(problems)}; export with "
                                      f"--format safetensors or fairseq instead")
    layers = parse_conv_feature_layers(a["conv_feature_layers"])
    common = dict(
        hidden_size=a["encoder_embed_dim"], num_hidden_layers=a["encoder_layers"],
        num_attention_heads=a["encoder_attention_heads"], intermediate_size=a["encoder_ffn_embed_dim"],
        hidden_act="gelu", feat_extract_activation="gelu",
        conv_dim=[d for d, _, _ in layers], conv_kernel=[k for _, k, _ in layers],
        conv_stride=[s for _, _, s in layers], conv_bias=bool(a.get("conv_bias", False)),
        feat_extract_norm="group" if str(a.get("extractor_mode", "default")) == "default" else "layer",
        do_stable_layer_norm=bool(a.get("layer_norm_first", False)), num_conv_pos_embeddings=a["conv_pos"],
        num_conv_pos_embedding_groups=a["conv_pos_groups"], layer_norm_eps=1e-5,
        hidden_dropout=a.get("dropout", 0.1), attention_dropout=a.get("attention_dropout", 0.1),
        activation_dropout=a.get("activation_dropout", 0.0), feat_proj_dropout=a.get("dropout_input", 0.0),
        layerdrop=a.get("encoder_layerdrop", 0.0), architectures=["WavLMModel" if wavlm else "HubertModel"],
    )
    if wavlm:
        return transformers.WavLMConfig(num_buckets=a["num_buckets"], max_bucket_distance=a["max_distance"],
                                        **common)
    return transformers.HubertConfig(feat_proj_layer_norm=True, conv_pos_batch_norm=False, **common)


def to_hf_model(backbone: Backbone) -> nn.Module:
    """A ``transformers`` model with ``backbone``'s architecture and weights, every HF weight filled."""
    import transformers

    cfg = hf_config(backbone)
    hf = (transformers.WavLMModel if is_wavlm(backbone.model) else transformers.HubertModel)(cfg).eval()
    hf_keys = set(hf.state_dict())
    state = {k: v.detach().cpu() for k, v in backbone.model.state_dict().items()}
    if "post_extract_proj.weight" not in state:  # conv width == model width: fairseq has no projection
        dim = cfg.hidden_size
        state["post_extract_proj.weight"], state["post_extract_proj.bias"] = torch.eye(dim), torch.zeros(dim)
    mapped = to_hf_state_dict(state, hf_keys)
    missing, unexpected = sorted(hf_keys - set(mapped)), sorted(set(mapped) - hf_keys)
    if missing or unexpected:
        raise BackboneCheckpointError(f"mapping to transformers {type(hf).__name__} is incomplete: "
                                      f"{len(missing)} HF weights unfilled {missing}, {len(unexpected)} without "
                                      f"an HF name {unexpected}")
    hf.load_state_dict(mapped, strict=True)
    return hf


def fairseq_hidden_states(model: nn.Module, wav: torch.Tensor,
                          padding_mask: Optional[torch.Tensor]) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """Hidden states of a fairseq / WavLM backbone, to compare with HF's ``output_hidden_states``.

    ``wav``: B x S, ``padding_mask``: B x S bool (True = padding) or None. Returns ``(L + 2`` tensors
    ``B x T x C``: the input of layer 1, the outputs of layers 1 .. L, the final output (after the final
    layer norm of a pre-LN model; = the output of layer L otherwise), ``B x T`` frame padding mask). HF's
    ``hidden_states`` are the first ``L`` of these plus, depending on the transformers version, the output of
    layer L (transformers 5) or the final output (transformers 4); its ``last_hidden_state`` is the final one.
    """
    layers = model.encoder.layers
    captured: Dict[str, torch.Tensor] = {}
    outs: List[torch.Tensor] = []

    def pre(module, args, kwargs):
        captured.setdefault("input", args[0] if args else kwargs["x"])

    def post(module, args, output):
        outs.append(output[0] if isinstance(output, tuple) else output)

    handles = [layers[0].register_forward_pre_hook(pre, with_kwargs=True)]
    handles += [layer.register_forward_hook(post) for layer in layers]
    try:
        with torch.no_grad():
            res = model.extract_features(wav, padding_mask=padding_mask, mask=False)
    finally:
        for h in handles:
            h.remove()
    x, frame_mask = (res["x"], res["padding_mask"]) if isinstance(res, dict) else res  # wav2vec 2.0: a dict
    t = x.size(1)
    states = [captured["input"].transpose(0, 1)[:, :t]] + [h.transpose(0, 1)[:, :t] for h in outs] + [x]
    if frame_mask is None:
        frame_mask = torch.zeros(x.shape[:2], dtype=torch.bool)
    return states, frame_mask


#: The check run in a fresh interpreter: argv = [hf folder, reference .safetensors, atol]; prints one JSON line.
VERIFY_SCRIPT = r'''
import json, sys
import torch, transformers
from safetensors.torch import load_file
folder, ref_path, atol = sys.argv[1], sys.argv[2], float(sys.argv[3])
model, info = transformers.AutoModel.from_pretrained(folder, output_loading_info=True)
bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
model.eval()
ref = load_file(ref_path)
wav, pad = ref["wav"], ref["padding_mask"].bool()
with torch.no_grad():
    out = model(wav, attention_mask=(~pad).long(), output_hidden_states=True)
    valid = model._get_feature_vector_attention_mask(out.last_hidden_state.size(1), (~pad).long()).bool()
ours = [ref[f"state_{i}"] for i in range(sum(k.startswith("state_") for k in ref))]  # L + 2
masks_agree = bool(torch.equal(valid, ~ref["frame_mask"].bool()))
def diff(a, b):
    return max(float((a[i][valid[i]] - b[i][valid[i]]).abs().max()) for i in range(a.size(0)))
hs = out.hidden_states
n = len(ours) - 2  # L
diffs = [diff(ours[i], hs[i]) for i in range(min(n, len(hs)))]
last = {"layer_output": diff(ours[n], hs[n]), "final": diff(ours[n + 1], hs[n])} if len(hs) == n + 1 else {}
convention = min(last, key=last.get) if last else None
if convention:
    diffs.append(last[convention])
diffs.append(diff(ours[n + 1], out.last_hidden_state))
res = {"class": type(model).__name__, "loading_problems": bad, "hidden_states": len(hs), "layers": n,
       "last_hidden_state_convention": convention, "masks_agree": masks_agree, "max_abs_diff": diffs,
       "plugin_imported": "fairseq_plugins" in sys.modules, "fairseq_imported": "fairseq" in sys.modules}
res["ok"] = (not bad and len(hs) == n + 1 and masks_agree and max(diffs) <= atol
             and not res["plugin_imported"])
print(json.dumps(res))
'''


def verification_batch(seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(B=2 x 32000 waveform, padding mask)``: item 1 holds 20000 samples and zeros after them."""
    g = torch.Generator().manual_seed(seed)
    wav = 0.1 * torch.randn(2, 32000, generator=g)
    pad = torch.zeros(2, 32000, dtype=torch.bool)
    pad[1, 20000:] = True
    wav[pad] = 0.0
    return wav, pad


def verify_hf_export(backbone: Backbone, folder: str, atol: float = 1e-5) -> Dict[str, Any]:
    """Load ``folder`` with transformers in a fresh process (no plugin) and compare every hidden state with
    ``backbone``'s on :func:`verification_batch`. Returns the check's JSON; raises ``RuntimeError`` if it
    fails."""
    from safetensors.torch import save_file

    wav, pad = verification_batch()
    states, frame_mask = fairseq_hidden_states(backbone.model.eval(), wav, pad)
    ref = {"wav": wav, "padding_mask": pad.to(torch.uint8), "frame_mask": frame_mask.to(torch.uint8)}
    ref.update({f"state_{i}": s.contiguous() for i, s in enumerate(states)})
    with tempfile.TemporaryDirectory() as tmp:
        ref_path = os.path.join(tmp, "reference.safetensors")
        save_file(ref, ref_path)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "1")
        proc = subprocess.run([sys.executable, "-c", VERIFY_SCRIPT, os.path.abspath(folder), ref_path,
                               repr(atol)], capture_output=True, text=True, timeout=600, cwd=tmp, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{folder}: transformers could not load/run the export:\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    if not res["ok"]:
        raise RuntimeError(f"{folder}: the transformers model does not reproduce the fairseq one: {res}")
    return res


def export_hf(backbone: Backbone, out_dir: str, atol: float = 1e-5) -> Dict[str, Any]:
    """Write ``backbone`` as a transformers ``save_pretrained`` folder and verify it (:func:`verify_hf_export`).
    Returns ``{"class", "folder", "max_abs_diff", ...}``."""
    import transformers

    hf = to_hf_model(backbone)
    os.makedirs(out_dir, exist_ok=True)
    hf.save_pretrained(out_dir)
    transformers.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                          do_normalize=bool(backbone.normalize),
                                          return_attention_mask=True).save_pretrained(out_dir)
    res = verify_hf_export(backbone, out_dir, atol)
    res["folder"] = os.path.abspath(out_dir)
    logger.info("exported %s to %s; fresh-process check: %d hidden states + last_hidden_state, max |diff| %.2e",
                res["class"], out_dir, res["hidden_states"], max(res["max_abs_diff"]))
    return res
