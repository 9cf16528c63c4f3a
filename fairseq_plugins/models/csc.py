"""``csc``: contrastive separative coding on a wav2vec2/HuBERT encoder.

Paper: Wang, Lam, Su, Yu, "Contrastive Separative Coding for Self-supervised Representation Learning" (ICASSP
2021, arXiv 2103.00816); only the abstract is public, so every choice below is a field of :class:`CscConfig`
(listed with its default in examples/csc/README.md). The input is a view-major batch of K interfered
conditions of B target utterances (``multiview_audio_pretraining`` with ``view_augmentations`` of
``interferer(...)`` specs, ``aligned_views`` and ``clean_target``; :mod:`fairseq_plugins.data.multiview_dataset`).

- Shared encoder: :class:`~fairseq_plugins.modules.hubert_encoder.SeededHubertEncoder` (fairseq's HuBERT
  conv front end + transformer, seeded span masks, unused by default: ``mask_prob`` 0), held as ``backbone``.
- (a) Separation head (:class:`StftMaskSeparator`): a sigmoid mask on the mixture's STFT (``sep_n_fft`` /
  ``sep_hop_length``, Hann window) predicted from the encoder frames (linearly interpolated to the STFT frame
  rate), inverted by iSTFT to a waveform estimate of the clean target; trained with negative SI-SNR.
- (b) Per-condition speaker vectors ``e_k``: attentive pooling (:class:`AttentivePooling`) of the encoder
  frames of condition k (in the encoder's own space: the embedding is shared by all tasks).
- (c) Cross-attention (:class:`ConditionCrossAttention`): for condition k the query is its own bottom-up
  embedding ``e_k``, keys and values are the K condition vectors of the same utterance; the softmax weights sum
  to 1 over the K conditions and ``g_k = sum_j a_kj e_j`` is the global speaker vector.
  ``cross_attention=false`` uses the mean of the condition vectors (the ablation).
- vMF head: ``mu_k = W g_k`` (no bias) and a concentration ``kappa`` (learned in log space or fixed), for the
  negative-free contrastive loss of :mod:`fairseq_plugins.losses.csc` on the encoder frames.

For probes, :meth:`CscModel.extract_features` returns ``(frames B x T x C, padding_mask)`` like
``HubertModel.extract_features`` and also ``["speaker"]``, the attentively pooled speaker embedding ``B x C``.
Checkpoints load through fairseq's loader (``python -m fairseq_plugins.evaluate`` picks it for plugin training
models). Registers the model ``csc`` with config :class:`CscConfig`.
"""
import logging
import math
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from fairseq.models import BaseFairseqModel
from torch import nn

from fairseq_plugins.compat import register
from fairseq_plugins.modules.hubert_encoder import FeatureOutput, SeededHubertConfig, SeededHubertEncoder
from fairseq_plugins.modules.precision import apply_keeping

logger = logging.getLogger(__name__)

MODEL_NAME = "csc"


@dataclass
class CscConfig(SeededHubertConfig):
    """HuBERT's encoder config (the ``recon_*`` fields are unused) plus CSC's heads."""

    mask_prob: float = field(
        default=0.0, metadata={"help": "span-mask probability of the encoder input; CSC's pretext task is "
                                       "separation, so 0 (no masking) by default"})
    sep_n_fft: int = field(default=512, metadata={"help": "STFT size of the separation mask (32 ms at 16 kHz)"})
    sep_hop_length: int = field(default=160, metadata={"help": "STFT hop of the separation mask (10 ms)"})
    sep_hidden_dim: int = field(
        default=0, metadata={"help": "hidden dim of the mask head (0: one linear layer from the encoder frames)"})
    pool_hidden_dim: int = field(default=128, metadata={"help": "hidden dim of the attentive pooling scorer"})
    attention_dim: int = field(default=128, metadata={"help": "query/key dim of the cross-attention"})
    cross_attention: bool = field(
        default=True, metadata={"help": "global speaker vector by cross-attention over the K conditions "
                                        "(false: the mean of the condition vectors)"})
    kappa_init: float = field(default=10.0, metadata={"help": "initial vMF concentration (> 0)"})
    learn_kappa: bool = field(default=True, metadata={"help": "learn the vMF concentration (else fixed)"})


class StftMaskSeparator(nn.Module):
    """``(frames N x T x D, mixture N x L) -> estimate N x L``: a sigmoid mask on the mixture's STFT
    (``n_fft`` / ``hop``; F = n_fft/2+1 bins, S = L/hop+1 frames) from the frames interpolated to S."""

    def __init__(self, dim: int, n_fft: int, hop: int, hidden: int = 0):
        super().__init__()
        if not 0 < hop <= n_fft:
            raise ValueError(f"sep_hop_length={hop} must lie in (0, sep_n_fft={n_fft}]")
        bins = n_fft // 2 + 1
        self.n_fft, self.hop = int(n_fft), int(hop)
        self.proj = nn.Linear(dim, bins) if hidden <= 0 else nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, bins))
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def forward(self, x: torch.Tensor, wav: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns the estimate ``N x L`` (float32) and the mask ``N x F x S``."""
        wav = wav.float()
        spec = torch.stft(wav, self.n_fft, self.hop, window=self.window.float(), center=True,
                          return_complex=True)
        feats = F.interpolate(x.transpose(1, 2), size=spec.size(-1), mode="linear", align_corners=False)
        mask = torch.sigmoid(self.proj(feats.transpose(1, 2)).float()).transpose(1, 2)
        est = torch.istft(spec * mask, self.n_fft, self.hop, window=self.window.float(), center=True,
                          length=wav.size(-1))
        return est, mask


class AttentivePooling(nn.Module):
    """``(N x T x D, N x T padding or None) -> N x D``: softmax-weighted mean of the valid frames."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        s = self.score(x).squeeze(-1).float()
        if padding_mask is not None:
            s = s.masked_fill(padding_mask, float("-inf"))
        w = torch.softmax(s, dim=1).to(x.dtype)
        return torch.einsum("nt,ntd->nd", w, x)


class ConditionCrossAttention(nn.Module):
    """``e: K x B x D -> (g K x B x D, attn B x K x K)``: for each utterance b and condition k, query
    ``q(e_k)``, keys ``k(e_j)``, values ``e_j`` over its K conditions; ``attn[b, k]`` sums to 1 over j. With
    ``enabled=False`` every row of ``attn`` is ``1/K`` (g = mean of the condition vectors)."""

    def __init__(self, dim: int, attention_dim: int, enabled: bool = True):
        super().__init__()
        self.enabled = bool(enabled)
        self.query = nn.Linear(dim, attention_dim) if enabled else None
        self.key = nn.Linear(dim, attention_dim) if enabled else None
        self.scale = 1.0 / math.sqrt(attention_dim)

    def forward(self, e: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        K, B, _ = e.shape
        eb = e.transpose(0, 1)  # B x K x D
        if self.enabled:
            scores = torch.einsum("bka,bja->bkj", self.query(eb), self.key(eb)).float() * self.scale
            attn = torch.softmax(scores, dim=-1)
        else:
            attn = e.new_full((B, K, K), 1.0 / K, dtype=torch.float32)
        g = torch.einsum("bkj,bjd->bkd", attn.to(e.dtype), eb)
        return g.transpose(0, 1), attn


class CscHead(nn.Module):
    """Speaker side of CSC: attentive pooling, cross-attention over the conditions, vMF mean projection and
    concentration (see the module docstring)."""

    def __init__(self, cfg: CscConfig):
        super().__init__()
        dim = cfg.encoder_embed_dim
        if cfg.kappa_init <= 0:
            raise ValueError(f"model.kappa_init={cfg.kappa_init} must be positive")
        self.pool = AttentivePooling(dim, cfg.pool_hidden_dim)
        self.cross = ConditionCrossAttention(dim, cfg.attention_dim, cfg.cross_attention)
        self.mu_proj = nn.Linear(dim, dim, bias=False)
        log_kappa = torch.tensor(math.log(cfg.kappa_init))
        if cfg.learn_kappa:
            self.log_kappa = nn.Parameter(log_kappa)
        else:
            self.register_buffer("log_kappa", log_kappa)

    def kappa(self) -> torch.Tensor:
        return self.log_kappa.float().exp()


@register("model", MODEL_NAME, dataclass=CscConfig)
class CscModel(BaseFairseqModel):
    """See the module docstring. Built by the ``multiview_audio_pretraining`` task."""

    PRETRAINING_MODULES = ("sep_head", "csc_head")

    def __init__(self, cfg: CscConfig, task_cfg) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = SeededHubertEncoder(cfg, task_cfg)
        dim = cfg.encoder_embed_dim
        self.sep_head = StftMaskSeparator(dim, cfg.sep_n_fft, cfg.sep_hop_length, cfg.sep_hidden_dim)
        self.csc_head = CscHead(cfg)

    @classmethod
    def build_model(cls, cfg: CscConfig, task):
        tcfg = task.cfg
        if not getattr(tcfg, "aligned_views", False) or not getattr(tcfg, "clean_target", False):
            raise ValueError("model csc needs time-aligned conditions with the clean target: set "
                             "task.aligned_views=true and task.clean_target=true")
        return cls(cfg, tcfg)

    def _apply(self, fn, recurse: bool = True):
        # fairseq's bf16/fp16 training casts the whole model: the STFT window stays float32
        return apply_keeping(super()._apply, fn, [self.sep_head.window] if self.sep_head is not None else [],
                             recurse)

    def speaker_embedding(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """The pooled speaker embedding ``N x D`` of encoder frames ``N x T x D``."""
        return self.csc_head.pool(x, padding_mask)

    def forward(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None, num_views: int = 1,
                target_source: Optional[torch.Tensor] = None, sep: bool = True, csc: bool = True,
                features_only: bool = False, **unused) -> Dict[str, torch.Tensor]:
        """Pre-training forward on a view-major batch of K = ``num_views`` conditions of B utterances.

        Args:
            source: (K*B) x L mixtures, row ``k*B + b`` = condition k of utterance b.
            padding_mask: (K*B) x L, True at padding samples (or None).
            target_source: (K*B) x L clean targets (unused here; the criterion compares against them).
            sep / csc: compute the separation head / the speaker side.
        Returns:
            dict with ``x`` (K*B) x T x D frames, ``padding_mask`` (K*B) x T or None, ``features_pen``;
            with ``sep``: ``est`` (K*B) x L float32 estimates of the clean target; with ``csc``: ``spk``
            K x B x D condition vectors, ``g`` K x B x D global speaker vectors, ``attn`` B x K x K
            (``attn[b, k, j]``: weight of condition j in ``g_k``), ``mu`` (K*B) x D, ``kappa`` scalar.
        """
        enc = self.backbone.encode_features(source, padding_mask)
        frame_pad = enc["padding_mask"]
        run = self.backbone.run_transformer(enc["features"], frame_pad, self.backbone.mask_prob > 0 and self.training)
        x = run["x"]
        out = {"x": x, "padding_mask": frame_pad, "features_pen": enc["features_pen"], "num_views": num_views}
        if features_only:
            return out
        if sep:
            out["est"], _ = self.sep_head(x, source)
        if csc:
            K = int(num_views)
            if K < 1 or x.size(0) % K:
                raise ValueError(f"a view-major batch of {x.size(0)} rows cannot hold num_views={num_views}")
            e = self.speaker_embedding(x, frame_pad).view(K, x.size(0) // K, -1)
            g, attn = self.csc_head.cross(e)
            out.update(spk=e, g=g, attn=attn, mu=self.csc_head.mu_proj(g).reshape(x.size(0), -1),
                       kappa=self.csc_head.kappa())
        return out

    def extract_features(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None,
                         mask: bool = False, ret_conv: bool = False, output_layer: Optional[int] = None,
                         **unused) -> FeatureOutput:
        """``(frames B x T x C, padding_mask B x T or None)`` as ``HubertModel.extract_features``; with the
        last layer (no ``output_layer``, no ``ret_conv``) and the speaker head present, ``["speaker"]`` is the
        pooled speaker embedding ``B x C`` (else None)."""
        feats = self.backbone.extract_features(source, padding_mask, mask=mask, ret_conv=ret_conv,
                                               output_layer=output_layer)
        speaker = None
        if self.csc_head is not None and output_layer is None and not ret_conv:
            speaker = self.speaker_embedding(feats[0], feats[1])
        feats._extra["speaker"] = speaker
        return feats

    @property
    def has_separation_head(self) -> bool:
        """Whether :meth:`separate` can run (False after :meth:`remove_pretraining_modules`)."""
        return self.sep_head is not None

    def separate(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The separation head's estimate of the clean target, ``N x L`` float32, from mixtures ``N x L``
        (no masking; the probes' SI-SNR improvement report calls it in eval mode)."""
        if not self.has_separation_head:
            raise ValueError("this csc model has no separation head (remove_pretraining_modules dropped it)")
        return self.forward(source, padding_mask, num_views=1, sep=True, csc=False)["est"]

    def set_num_updates(self, num_updates: int) -> None:
        super().set_num_updates(num_updates)  # reaches the backbone (it keys the span masks)

    def remove_pretraining_modules(self) -> None:
        """Drop the separation and speaker heads (encoder only)."""
        self.backbone.remove_pretraining_modules()
        for name in self.PRETRAINING_MODULES:
            setattr(self, name, None)

    def get_extra_losses(self, net_output):
        return [], []
