"""WavLM backbone and its released checkpoint format.

WavLM ("WavLM: Large-Scale Self-Supervised Pre-Training for Full Stack Speech Processing", Chen et al.,
arXiv 2110.13900) is a HuBERT-style encoder -- the wav2vec 2.0 convolutional feature extractor, a projection,
a convolutional positional embedding and a Transformer -- whose self-attention adds a T5-style bucketed
relative position bias (owned by layer 0 and shared by all layers) rescaled per head and per query frame by a
gate computed from the layer input (gated relative position bias, ``gru_rel_pos``). fairseq has no WavLM, so
this module builds it from fairseq's own pieces (``ConvFeatureExtractionModel``, ``TransformerEncoder``'s
positional convolution and layer norms, ``TransformerSentenceEncoderLayer``, ``MultiheadAttention``'s
projections, ``HubertModel``'s masking/padding helpers) and adds only the attention maths. Parameter names
are those of the authors' ``WavLM`` class (microsoft/unilm, ``wavlm/WavLM.py``), so the released files --
plain ``torch.save({'cfg': dict, 'model': state_dict})`` -- load strictly with :func:`load_wavlm_release` and
are written back with :func:`save_wavlm_release`. This module registers nothing; the pre-trainable fairseq
model ``wavlm`` lives in :mod:`fairseq_plugins.models.wavlm`.
"""
import ast
import logging
import math
import os
import pickle
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq import utils
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.models.hubert.hubert import HubertModel
from fairseq.models.wav2vec.utils import pad_to_multiple
from fairseq.models.wav2vec.wav2vec2 import (
    EXTRACTOR_MODE_CHOICES,
    MASKING_DISTRIBUTION_CHOICES,
    ConvFeatureExtractionModel,
    TransformerEncoder,
    TransformerSentenceEncoderLayer,
)
from fairseq.modules import LayerNorm, MultiheadAttention
from fairseq.modules.checkpoint_activations import checkpoint_wrapper

from fairseq_plugins.compat import first_line
from fairseq_plugins.data.audio import normalize_waveform  # noqa: F401  (the one home; re-exported for WavLM users)
from fairseq_plugins.modules.backbones import BackboneCheckpointError, strict_load

logger = logging.getLogger(__name__)

#: cfg keys of a released WavLM file, in the order of the WavLM-Base+ cfg as public code copies it (it ends
#: with ``expand_attention_head_size: -1``), plus ``normalize``, which the authors' ``WavLMConfig`` reads.
RELEASE_CFG_KEYS: Tuple[str, ...] = (
    "extractor_mode", "encoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim",
    "encoder_attention_heads", "activation_fn", "dropout", "attention_dropout", "activation_dropout",
    "encoder_layerdrop", "dropout_input", "dropout_features", "layer_norm_first", "conv_feature_layers",
    "conv_bias", "feature_grad_mult", "mask_length", "mask_prob", "mask_selection", "mask_other",
    "no_mask_overlap", "mask_min_space", "mask_channel_length", "mask_channel_prob", "mask_channel_selection",
    "mask_channel_other", "no_mask_channel_overlap", "mask_channel_min_space", "conv_pos", "conv_pos_groups",
    "relative_position_embedding", "num_buckets", "max_distance", "gru_rel_pos", "expand_attention_head_size",
    "normalize",
)

#: cfg keys that change the parameters or the maths of a trained model (the rest are training settings).
ARCHITECTURE_KEYS: Tuple[str, ...] = (
    "extractor_mode", "encoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim",
    "encoder_attention_heads", "activation_fn", "layer_norm_first", "conv_feature_layers", "conv_bias",
    "conv_pos", "conv_pos_groups",
    "relative_position_embedding", "num_buckets", "max_distance", "gru_rel_pos",
)

#: Top-level modules/parameters of the backbone; every release key starts with one of them.
BACKBONE_PREFIXES: Tuple[str, ...] = (
    "feature_extractor", "post_extract_proj", "mask_emb", "encoder", "layer_norm",
)

# Defaults of the authors' WavLMConfig class where they differ from WavLMConfig below (= WavLM-Base).
# A release cfg that lacks a key means the authors' default, so these are used for missing keys when loading.
_AUTHORS_DEFAULTS: Dict[str, Any] = {
    "relative_position_embedding": False, "max_distance": 1280, "gru_rel_pos": False,
    "encoder_layerdrop": 0.0, "dropout_input": 0.0, "dropout_features": 0.0, "feature_grad_mult": 1.0,
    "mask_prob": 0.65,
}

# Top-level keys that only fairseq training checkpoints have.
_FAIRSEQ_CHECKPOINT_KEYS = ("args", "optimizer_history", "task_state", "extra_state", "last_optimizer_state",
                            "criterion")


@dataclass
class WavLMRelativePositionConfig(FairseqDataclass):
    """The four WavLM-only architecture fields (shared by WavLMConfig and the pre-training config)."""

    relative_position_embedding: bool = field(
        default=True, metadata={"help": "add the bucketed relative position bias to the attention logits"}
    )
    num_buckets: int = field(
        default=320, metadata={"help": "number of relative position buckets (half per direction)"}
    )
    max_distance: int = field(
        default=800, metadata={"help": "distance (frames) from which all offsets share the last bucket"}
    )
    gru_rel_pos: bool = field(
        default=True, metadata={"help": "gate the relative position bias per head and query frame "
                                        "(grep_linear, grep_a)"}
    )


@dataclass
class WavLMConfig(WavLMRelativePositionConfig):
    """Every field of a released WavLM cfg (plus one runtime option); defaults are WavLM-Base's."""

    extractor_mode: EXTRACTOR_MODE_CHOICES = field(
        default="default",
        metadata={"help": "feature extractor norm: 'default' = one group norm in the first conv block "
                          "(Base), 'layer_norm' = a layer norm in every block (Large, with normalize=True)"},
    )
    encoder_layers: int = field(default=12, metadata={"help": "number of Transformer layers"})
    encoder_embed_dim: int = field(default=768, metadata={"help": "Transformer model dimension"})
    encoder_ffn_embed_dim: int = field(default=3072, metadata={"help": "Transformer feed-forward dimension"})
    encoder_attention_heads: int = field(default=12, metadata={"help": "number of attention heads"})
    activation_fn: ChoiceEnum(utils.get_available_activation_fns()) = field(
        default="gelu", metadata={"help": "feed-forward activation function"}
    )
    dropout: float = field(default=0.1, metadata={"help": "dropout in the Transformer"})
    attention_dropout: float = field(default=0.1, metadata={"help": "dropout on attention weights"})
    activation_dropout: float = field(default=0.0, metadata={"help": "dropout after the FFN activation"})
    encoder_layerdrop: float = field(default=0.05, metadata={"help": "probability of skipping a layer"})
    dropout_input: float = field(default=0.1, metadata={"help": "dropout on the projected conv features"})
    dropout_features: float = field(
        default=0.1, metadata={"help": "dropout on the unmasked features (pre-training targets)"}
    )
    layer_norm_first: bool = field(
        default=False, metadata={"help": "pre-LN Transformer (Large) instead of post-LN (Base)"}
    )
    conv_feature_layers: str = field(
        default="[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2",
        metadata={"help": "conv feature extractor as a python list expression of (dim, kernel, stride)"},
    )
    conv_bias: bool = field(default=False, metadata={"help": "bias in the feature extractor convolutions"})
    feature_grad_mult: float = field(
        default=0.1, metadata={"help": "gradient scale for the feature extractor (0 = frozen)"}
    )
    mask_length: int = field(default=10, metadata={"help": "length of a time mask span (frames)"})
    mask_prob: float = field(default=0.8, metadata={"help": "probability of a frame starting a mask span"})
    mask_selection: MASKING_DISTRIBUTION_CHOICES = field(
        default="static", metadata={"help": "distribution of mask span lengths"}
    )
    mask_other: float = field(default=0.0, metadata={"help": "secondary mask length argument (non-static)"})
    no_mask_overlap: bool = field(default=False, metadata={"help": "forbid overlapping time mask spans"})
    mask_min_space: int = field(default=1, metadata={"help": "min gap between spans when no_mask_overlap"})
    mask_channel_length: int = field(default=10, metadata={"help": "length of a channel mask span"})
    mask_channel_prob: float = field(default=0.0, metadata={"help": "probability of channel masking"})
    mask_channel_selection: MASKING_DISTRIBUTION_CHOICES = field(
        default="static", metadata={"help": "distribution of channel mask span lengths"}
    )
    mask_channel_other: float = field(default=0.0, metadata={"help": "secondary channel mask length arg"})
    no_mask_channel_overlap: bool = field(default=False, metadata={"help": "no overlapping channel masks"})
    mask_channel_min_space: int = field(default=1, metadata={"help": "min gap between channel mask spans"})
    conv_pos: int = field(default=128, metadata={"help": "kernel size of the positional convolution"})
    conv_pos_groups: int = field(default=16, metadata={"help": "groups of the positional convolution"})
    expand_attention_head_size: int = field(
        default=-1, metadata={"help": "stored by the released files; only -1 (no expansion) is supported"}
    )
    normalize: bool = field(
        default=False,
        metadata={"help": "the model expects per-utterance zero-mean unit-variance waveforms (Large: True); "
                          "apply normalize_waveform() to the input, extract_features does not"},
    )
    required_seq_len_multiple: int = field(
        default=1,
        metadata={"help": "not a release key: pad the frame sequence inside the encoder to a multiple of "
                          "this (fp16 speed); padded frames are masked, so outputs do not change"},
    )


def parse_conv_feature_layers(spec: str) -> List[Tuple[int, int, int]]:
    """Evaluate a ``conv_feature_layers`` string such as ``"[(512,10,5)] + [(512,3,2)] * 4"`` without eval().

    fairseq and the authors' code ``eval()`` this string; a release file's cfg is untrusted input, so only
    list/tuple literals of ints combined with ``+`` and ``*`` are accepted.
    """
    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.Tuple):
            return tuple(ev(e) for e in node.elts)
        if isinstance(node, ast.List):
            return [ev(e) for e in node.elts]
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Mult):
                if any(isinstance(v, int) and not 0 <= v <= 1024 for v in (left, right)):
                    raise ValueError(f"conv_feature_layers repeat count out of range in {spec!r}")
                return left * right
            return left + right
        raise ValueError(f"conv_feature_layers may only contain int tuples, lists, + and *: {spec!r}")

    layers = ev(ast.parse(spec, mode="eval").body)
    if not (isinstance(layers, list) and layers
            and all(isinstance(t, tuple) and len(t) == 3 and all(v > 0 for v in t) for t in layers)):
        raise ValueError(f"conv_feature_layers must be a non-empty list of (dim, kernel, stride): {spec!r}")
    return layers


def check_supported(cfg: Any) -> None:
    """Raise ValueError when ``cfg`` (WavLMConfig-like) asks for something this implementation lacks."""
    problems = []
    if str(cfg.extractor_mode) not in ("default", "layer_norm"):
        problems.append(f"extractor_mode={cfg.extractor_mode!r} (supported: 'default', 'layer_norm')")
    if str(cfg.activation_fn) not in utils.get_available_activation_fns():
        problems.append(f"activation_fn={cfg.activation_fn!r} (the authors' 'glu' FFN is not implemented)")
    if getattr(cfg, "expand_attention_head_size", -1) not in (-1, None):
        problems.append(f"expand_attention_head_size={cfg.expand_attention_head_size} (only -1)")
    if cfg.encoder_embed_dim % cfg.encoder_attention_heads:
        problems.append(f"encoder_embed_dim={cfg.encoder_embed_dim} is not divisible by "
                        f"encoder_attention_heads={cfg.encoder_attention_heads}")
    if problems:
        raise ValueError("unsupported WavLM configuration: " + "; ".join(problems))


def relative_position_bucket(relative_position: torch.Tensor, num_buckets: int,
                             max_distance: int) -> torch.Tensor:
    """T5-style bidirectional buckets of ``key - query`` offsets (long tensor of the same shape).

    Half of the buckets per direction; offsets below a quarter of ``num_buckets`` get their own bucket, larger
    ones share log-spaced buckets up to ``max_distance``, beyond which everything maps to the last bucket.
    """
    half = num_buckets // 2
    buckets = (relative_position > 0).long() * half
    distance = relative_position.abs()
    max_exact = half // 2
    # clamp only protects log(0) in the branch that torch.where discards
    log_ratio = torch.log(distance.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact)
    large = (max_exact + (log_ratio * (half - max_exact)).long()).clamp(max=half - 1)
    return buckets + torch.where(distance < max_exact, distance, large)


class WavLMSelfAttention(MultiheadAttention):
    """fairseq self-attention (``q_proj``/``k_proj``/``v_proj``/``out_proj``) plus WavLM's position bias.

    Extra parameters, named as in the released files: ``relative_attention_bias`` (Embedding num_buckets x H,
    only where ``has_relative_attention_bias``), ``grep_linear`` (Linear head_dim -> 8) and ``grep_a``
    (1 x H x 1 x 1) when ``gru_rel_pos``. The gate is computed from the layer input (not the projected query),
    as in the authors' fast path and in HF transformers:
    ``g_a, g_b = sigmoid(sum4(grep_linear(x_h)))``, ``bias_h = (g_a * (g_b * grep_a - 1) + 2) * bias``.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0,
                 has_relative_attention_bias: bool = False, num_buckets: int = 320, max_distance: int = 800,
                 gru_rel_pos: bool = False) -> None:
        super().__init__(embed_dim, num_heads, dropout=dropout, self_attention=True)
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.relative_attention_bias = (
            nn.Embedding(num_buckets, num_heads) if has_relative_attention_bias else None
        )
        self.gru_rel_pos = gru_rel_pos
        if gru_rel_pos:
            self.grep_linear = nn.Linear(self.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, num_heads, 1, 1))

    def compute_bias(self, query_length: int, key_length: int) -> torch.Tensor:
        """Relative position bias, H x T_q x T_k (needs ``relative_attention_bias``)."""
        device = self.relative_attention_bias.weight.device
        offsets = (torch.arange(key_length, device=device)[None, :]
                   - torch.arange(query_length, device=device)[:, None])
        buckets = relative_position_bucket(offsets, self.num_buckets, self.max_distance)
        return self.relative_attention_bias(buckets).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None,
                position_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Self-attention over ``x`` (T x B x C); ``key_padding_mask`` B x T (True = pad); ``position_bias``
        H x T x T from :meth:`compute_bias` of layer 0 (or None). Returns T x B x C."""
        tsz, bsz, dim = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:  # T x B x C -> B x H x T x d
            return t.reshape(tsz, bsz, self.num_heads, self.head_dim).permute(1, 2, 0, 3)

        attn_mask = None
        if position_bias is not None:
            bias = position_bias.unsqueeze(0).to(x.dtype)  # 1 x H x T x T
            if self.gru_rel_pos:
                gates = self.grep_linear(heads(x)).view(bsz, self.num_heads, tsz, 2, 4).sum(-1)
                gate_a, gate_b = torch.sigmoid(gates).chunk(2, dim=-1)  # each B x H x T x 1
                bias = (gate_a * (gate_b * self.grep_a - 1.0) + 2.0) * bias
            attn_mask = bias
        if key_padding_mask is not None:
            pad = torch.zeros(bsz, 1, 1, tsz, dtype=x.dtype, device=x.device)
            pad = pad.masked_fill(key_padding_mask[:, None, None, :].bool(), float("-inf"))
            attn_mask = pad if attn_mask is None else attn_mask + pad
        out = F.scaled_dot_product_attention(
            heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x)), attn_mask=attn_mask,
            dropout_p=self.dropout_module.p if self.training else 0.0,
        )
        return self.out_proj(out.permute(2, 0, 1, 3).reshape(tsz, bsz, dim))


class WavLMEncoderLayer(TransformerSentenceEncoderLayer):
    """fairseq's wav2vec 2.0 Transformer layer (same parameter names) with :class:`WavLMSelfAttention`."""

    def __init__(self, cfg: Any, has_relative_attention_bias: bool) -> None:
        super().__init__(
            embedding_dim=cfg.encoder_embed_dim, ffn_embedding_dim=cfg.encoder_ffn_embed_dim,
            num_attention_heads=cfg.encoder_attention_heads, dropout=cfg.dropout,
            attention_dropout=cfg.attention_dropout, activation_dropout=cfg.activation_dropout,
            activation_fn=str(cfg.activation_fn), layer_norm_first=cfg.layer_norm_first,
        )
        self.self_attn = WavLMSelfAttention(
            cfg.encoder_embed_dim, cfg.encoder_attention_heads, dropout=cfg.attention_dropout,
            has_relative_attention_bias=has_relative_attention_bias, num_buckets=cfg.num_buckets,
            max_distance=cfg.max_distance, gru_rel_pos=cfg.gru_rel_pos,
        )

    def forward(self, x: torch.Tensor, self_attn_padding_mask: Optional[torch.Tensor] = None,
                position_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        """T x B x C -> T x B x C (post-LN, or pre-LN when ``layer_norm_first``)."""
        residual = x
        if self.layer_norm_first:
            x = self.self_attn_layer_norm(x)
        x = self.self_attn(x, key_padding_mask=self_attn_padding_mask, position_bias=position_bias)
        x = residual + self.dropout1(x)
        if not self.layer_norm_first:
            x = self.self_attn_layer_norm(x)
        residual = x
        if self.layer_norm_first:
            x = self.final_layer_norm(x)
        x = self.fc2(self.dropout2(self.activation_fn(self.fc1(x))))
        x = residual + self.dropout3(x)
        if not self.layer_norm_first:
            x = self.final_layer_norm(x)
        return x


class WavLMTransformerEncoder(TransformerEncoder):
    """fairseq's wav2vec 2.0 encoder (``pos_conv``, ``layer_norm``, init, layer-drop) with WavLM layers.

    ``forward(x, padding_mask=None, layer=None)`` is fairseq's: it returns ``(x, layer_results)`` and applies
    the final ``layer_norm`` of a pre-LN model only when ``layer`` is None. Unlike fairseq/the authors,
    ``layer_results`` is a list of B x T x C tensors: the input of layer 1 (after the positional convolution)
    followed by the output of every layer run. The relative position bias is computed once per forward from
    layer 0's table, so layer-drop of layer 0 does not switch the bias off for the other layers (the authors'
    code loses it then; HF never drops layer 0). Evaluation is unaffected.
    """

    def build_encoder_layer(self, args: Any, layer_idx: int = 0, **kwargs: Any) -> nn.Module:
        layer = WavLMEncoderLayer(args, has_relative_attention_bias=args.relative_position_embedding
                                  and layer_idx == 0)
        if getattr(args, "checkpoint_activations", False):
            layer = checkpoint_wrapper(layer)
        return layer

    def extract_features(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None,
                         tgt_layer: Optional[int] = None, min_layer: int = 0,
                         corpus_key: Optional[Any] = None) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """x: B x T x C; padding_mask: B x T (True = pad); tgt_layer: 0-based last layer to run.

        Returns (B x T x C, list of B x T x C); ``min_layer``/``corpus_key`` exist for fairseq's signature.
        """
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x, pad_length = pad_to_multiple(x, self.required_seq_len_multiple, dim=-2, value=0)
        if pad_length > 0:
            if padding_mask is None:
                padding_mask = x.new_zeros((x.size(0), x.size(1) - pad_length), dtype=torch.bool)
            padding_mask = F.pad(padding_mask, (0, pad_length), value=True)
        x = F.dropout(x, p=self.dropout, training=self.training)

        attn = self.layers[0].self_attn
        position_bias = (attn.compute_bias(x.size(1), x.size(1))
                         if attn.relative_attention_bias is not None else None)
        x = x.transpose(0, 1)  # T x B x C
        layer_results = [x]
        for i, layer in enumerate(self.layers):
            if not self.training or self.layerdrop == 0 or np.random.random() > self.layerdrop:
                x = layer(x, self_attn_padding_mask=padding_mask, position_bias=position_bias)
            layer_results.append(x)
            if i == tgt_layer:
                break
        valid = x.size(0) - pad_length
        layer_results = [h.transpose(0, 1)[:, :valid] for h in layer_results]
        return layer_results[-1], layer_results


class WavLMFeaturesMixin:
    """``encode``/``extract_features`` for any HuBERT-shaped module (``feature_extractor``, ``layer_norm``,
    ``post_extract_proj``, ``dropout_input``, ``mask_emb``, ``encoder`` and HubertModel's
    ``forward_features``/``forward_padding_mask``/``apply_mask``): the backbone and the fairseq model
    share it."""

    def encode(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None, mask: bool = False,
               output_layer: Optional[int] = None) -> Dict[str, Any]:
        """Run the backbone.

        Args:
            source: B x S waveform at 16 kHz (normalised first when ``cfg.normalize``: see
                :func:`normalize_waveform`).
            padding_mask: B x S bool, True at padded samples (fairseq's convention).
            mask: replace random spans of frames by ``mask_emb`` (pre-training style masking).
            output_layer: 1-based layer to stop after (no final layer norm then, as in fairseq/the authors).

        Returns:
            dict with ``x`` (B x T x C output), ``padding_mask`` (B x T bool or None), ``features``
            (B x T x C projected conv features), ``layer_results`` (list of B x T x C: entry 0 is the input of
            layer 1 after the positional convolution, entry i the output of layer i) and ``mask_indices``.
        """
        features = self.forward_features(source).transpose(1, 2)
        features = self.layer_norm(features)
        if padding_mask is not None:
            padding_mask = self.forward_padding_mask(features, padding_mask)
        if self.post_extract_proj is not None:
            features = self.post_extract_proj(features)
        features = self.dropout_input(features)
        mask_indices = None
        x = features
        if mask:
            x, mask_indices = self.apply_mask(features.clone(), padding_mask, None)
        x, layer_results = self.encoder(
            x, padding_mask=padding_mask, layer=None if output_layer is None else output_layer - 1
        )
        return {"x": x, "padding_mask": padding_mask, "features": features, "layer_results": layer_results,
                "mask_indices": mask_indices}

    def extract_features(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None,
                         mask: bool = False, ret_conv: bool = False, output_layer: Optional[int] = None,
                         ret_layer_results: bool = False) -> Tuple[Any, Optional[torch.Tensor]]:
        """The authors' / fairseq HuBERT signature (arguments as in :meth:`encode`).

        Returns ``(feature, padding_mask)``, or ``((feature, layer_results), padding_mask)`` when
        ``ret_layer_results``; feature is B x T x C (``features`` when ``ret_conv`` else ``x``) and
        layer_results a list of B x T x C (the authors return (T x B x C, attn) pairs here instead).
        """
        res = self.encode(source, padding_mask=padding_mask, mask=mask, output_layer=output_layer)
        feature = res["features"] if ret_conv else res["x"]
        if ret_layer_results:
            feature = (feature, res["layer_results"])
        return feature, res["padding_mask"]


class WavLMBackbone(WavLMFeaturesMixin, nn.Module):
    """The released WavLM model: conv feature extractor -> ``layer_norm`` -> ``post_extract_proj`` ->
    (``mask_emb``) -> :class:`WavLMTransformerEncoder`. ``forward`` = :meth:`encode`."""

    forward_features = HubertModel.forward_features
    forward_padding_mask = HubertModel.forward_padding_mask
    apply_mask = HubertModel.apply_mask

    def __init__(self, cfg: WavLMConfig) -> None:
        super().__init__()
        check_supported(cfg)
        self.cfg = cfg
        conv_layers = parse_conv_feature_layers(cfg.conv_feature_layers)
        self.embed = conv_layers[-1][0]
        self.feature_extractor = ConvFeatureExtractionModel(
            conv_layers=conv_layers, dropout=0.0, mode=str(cfg.extractor_mode), conv_bias=cfg.conv_bias
        )
        self.post_extract_proj = (
            nn.Linear(self.embed, cfg.encoder_embed_dim) if self.embed != cfg.encoder_embed_dim else None
        )
        for name in ("mask_prob", "mask_selection", "mask_other", "mask_length", "no_mask_overlap",
                     "mask_min_space", "mask_channel_prob", "mask_channel_selection", "mask_channel_other",
                     "mask_channel_length", "no_mask_channel_overlap", "mask_channel_min_space",
                     "feature_grad_mult"):
            setattr(self, name, getattr(cfg, name))
        self.dropout_input = nn.Dropout(cfg.dropout_input)
        self.dropout_features = nn.Dropout(cfg.dropout_features)
        self.mask_emb = nn.Parameter(torch.FloatTensor(cfg.encoder_embed_dim).uniform_())
        self.encoder = WavLMTransformerEncoder(cfg)
        self.layer_norm = LayerNorm(self.embed)

    def forward(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None, mask: bool = False,
                output_layer: Optional[int] = None) -> Dict[str, Any]:
        return self.encode(source, padding_mask=padding_mask, mask=mask, output_layer=output_layer)

    def release_state_dict(self) -> Dict[str, torch.Tensor]:
        """The parameters under their release names (a plain dict of detached tensors)."""
        return {k: v.detach() for k, v in self.state_dict().items()}


# ----------------------------------------------------------------------------------------------------------
# Release format IO
# ----------------------------------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value


def release_cfg_dict(cfg: Any, **overrides: Any) -> Dict[str, Any]:
    """The release cfg dict (:data:`RELEASE_CFG_KEYS`, plain python values) from a WavLMConfig, a fairseq
    model config (WavLMPretrainConfig / DictConfig) or a mapping; keys it lacks take WavLMConfig's
    defaults."""
    defaults = WavLMConfig()
    out = {}
    for key in RELEASE_CFG_KEYS:
        if key in overrides:
            value = overrides[key]
        elif isinstance(cfg, Mapping) and key in cfg:
            value = cfg[key]
        else:
            value = getattr(cfg, key, getattr(defaults, key))
        value = _plain(value)
        if not isinstance(value, (bool, int, float, str)):
            raise TypeError(f"release cfg value {key}={value!r} is not a plain bool/int/float/str")
        out[key] = value
    return out


def wavlm_config_from_release(cfg: Mapping[str, Any], source: str = "<cfg>") -> WavLMConfig:
    """WavLMConfig from a release cfg dict. Missing keys take the authors' class defaults (logged); unknown
    keys are ignored with a warning, like the authors' loader which stores them without using them."""
    known = {f.name for f in fields(WavLMConfig)} - {"_name", "required_seq_len_multiple"}
    unknown = sorted(set(cfg) - known)
    if unknown:
        logger.warning("%s: ignoring cfg keys this WavLM does not use: %s", source, unknown)
    missing = sorted(known - set(cfg))
    values = {k: _plain(v) for k, v in cfg.items() if k in known}
    for key in missing:
        if key in _AUTHORS_DEFAULTS:
            values[key] = _AUTHORS_DEFAULTS[key]
    if missing:
        logger.info("%s: cfg keys absent, using the authors' defaults: %s", source,
                    {k: values.get(k, getattr(WavLMConfig(), k)) for k in missing})
    cfg_obj = WavLMConfig(**values)
    check_supported(cfg_obj)
    return cfg_obj


def _describe_keys(keys: List[Any], limit: int = 12) -> str:
    keys = [repr(k) for k in keys]
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return "[" + ", ".join(keys[:limit]) + more + "]"


def _looks_like_fairseq(ckpt: Mapping[str, Any]) -> bool:
    """fairseq training checkpoints: their extra top-level keys, or a cfg with model/task sections."""
    if any(k in ckpt for k in _FAIRSEQ_CHECKPOINT_KEYS):
        return True
    cfg = ckpt.get("cfg")
    return isinstance(cfg, Mapping) and "model" in cfg and "task" in cfg


def _fairseq_hint(name: str, keys: str) -> str:
    return (
        f"{name} is not a released WavLM checkpoint ({{'cfg': dict, 'model': state_dict}}): this looks like "
        f"a fairseq checkpoint (top-level keys {keys}). Load it with "
        f"fairseq.checkpoint_utils.load_model_ensemble_and_task([path]) after "
        f"fairseq.utils.import_user_module(Namespace(user_dir=<path to fairseq_plugins>)); a checkpoint of "
        f"this package's 'wavlm' model converts to the release format with model.export_release(out_path)."
    )


def validate_release_checkpoint(ckpt: Any, name: str) -> None:
    """Raise :class:`BackboneCheckpointError` unless ``ckpt`` is ``{'cfg': dict, 'model': {str: Tensor}}``."""
    if not isinstance(ckpt, Mapping):
        raise BackboneCheckpointError(
            f"{name} is not a released WavLM checkpoint: expected a dict with keys 'cfg' and 'model', "
            f"found a {type(ckpt).__name__}"
        )
    keys = _describe_keys(list(ckpt.keys()))
    if _looks_like_fairseq(ckpt):
        raise BackboneCheckpointError(_fairseq_hint(name, keys))
    if "cfg" not in ckpt or "model" not in ckpt:
        bare = all(isinstance(v, torch.Tensor) for v in ckpt.values()) and len(ckpt) > 0
        raise BackboneCheckpointError(
            f"{name} is not a released WavLM checkpoint: expected a dict with keys 'cfg' and 'model', found "
            f"keys {keys}" + (" (a bare state_dict: its cfg is missing)" if bare else "")
        )
    if not isinstance(ckpt["cfg"], dict):
        raise BackboneCheckpointError(f"{name}: 'cfg' must be a plain dict, found {type(ckpt['cfg']).__name__}")
    state = ckpt["model"]
    if not isinstance(state, Mapping):
        raise BackboneCheckpointError(f"{name}: 'model' must be a state_dict, found {type(state).__name__}")
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise BackboneCheckpointError(
            f"{name}: 'model' entries that are not tensors: {_describe_keys(not_tensors)}"
        )


def load_wavlm_release(path_or_state: Union[str, "os.PathLike[str]", Mapping[str, Any]],
                       name: Optional[str] = None) -> Tuple[WavLMBackbone, WavLMConfig]:
    """Build a :class:`WavLMBackbone` from a released WavLM file (or its loaded dict) and load it strictly.

    The file is read with ``torch.load(path, map_location='cpu', weights_only=True)``: release files are plain
    dicts and tensors, and nothing in them is executed (``conv_feature_layers`` is parsed, not eval'd).
    Returns ``(model, cfg)``, the model in eval mode. Raises :class:`BackboneCheckpointError` (a ValueError)
    naming the file and what was found when it is not a release file, and listing every missing/unexpected
    key.
    """
    if isinstance(path_or_state, (str, os.PathLike)):
        name = os.fspath(path_or_state)
        try:
            ckpt = torch.load(name, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, EOFError, RuntimeError) as e:  # not a (safe) torch pickle
            reason = first_line(str(e))
            if any(s in str(e) for s in ("fairseq", "omegaconf", "argparse")):
                raise BackboneCheckpointError(_fairseq_hint(name, f"unreadable: {reason}")) from e
            raise BackboneCheckpointError(
                f"{name} is not a released WavLM checkpoint: it cannot be read with weights_only=True "
                f"({reason}); release files hold only a cfg dict and tensors"
            ) from e
    else:
        name = name or "<in-memory checkpoint>"
        ckpt = path_or_state
    validate_release_checkpoint(ckpt, name)
    cfg = wavlm_config_from_release(ckpt["cfg"], source=name)
    model = WavLMBackbone(cfg)
    strict_load(model, ckpt["model"], name, what="the WavLM architecture of its cfg")
    model.eval()
    logger.info("loaded WavLM release checkpoint %s (%d layers, dim %d)", name, cfg.encoder_layers,
                cfg.encoder_embed_dim)
    return model, cfg


def save_wavlm_release(model: Union[nn.Module, Mapping[str, torch.Tensor]], cfg: Any,
                       path: Union[str, "os.PathLike[str]"]) -> None:
    """Write ``{'cfg': dict, 'model': state_dict}`` exactly as the released files are laid out.

    ``model``: a :class:`WavLMBackbone`, anything with ``release_state_dict()`` (the fairseq ``wavlm`` model
    drops its pre-training heads there) or a state dict with release key names. ``cfg``: anything
    :func:`release_cfg_dict` accepts. The state dict is checked against the architecture of ``cfg`` before
    anything is written (raises :class:`BackboneCheckpointError`), and the file is written atomically; it loads
    with ``torch.load(path, weights_only=True)`` and with the authors' code.
    """
    if isinstance(model, Mapping):
        state = dict(model)
    elif hasattr(model, "release_state_dict"):
        state = model.release_state_dict()
    else:
        state = model.state_dict()
    state = {k: v.detach().cpu().clone() for k, v in state.items()}
    cfg_dict = release_cfg_dict(cfg)
    # build the architecture once to check keys and shapes: what is written must load strictly
    strict_load(WavLMBackbone(wavlm_config_from_release(cfg_dict)), state, f"export to {os.fspath(path)}",
                what="the WavLM architecture of its cfg")
    tmp = f"{os.fspath(path)}.tmp"
    torch.save({"cfg": cfg_dict, "model": state}, tmp)
    os.replace(tmp, path)
    logger.info("wrote WavLM release checkpoint %s (%d tensors)", os.fspath(path), len(state))
