"""``mgf``: multi-granularity pre-training on fairseq's HuBERT encoder (Zhao, Yin, Luo, Zhao, Tang, Zeng, Zha,
"MGF: multi-granularity framework for self-supervised speech representation learning", arXiv 2102.01930).

Only the abstract is public: generative learning at small time scales, masked contrastive learning at phoneme
scale, discriminative learning at large time scales. Every choice it leaves open is a field of
:class:`MgfConfig` (table in examples/mgf/README.md). The encoder is the plugin's shared HuBERT encoder
(:class:`~fairseq_plugins.modules.hubert_encoder.SeededHubertEncoder`: same parameter names as fairseq's
``HubertModel``, so fairseq's CTC fine-tuning and the probes take it; span masks keyed by (seed, update, rank,
micro-batch)). One masked forward carries two kinds of spans drawn from the same keys: phoneme-length spans
(``mask_prob``, ``mask_length``, stream TIME) and short frame-scale spans (``frame_mask_prob``,
``frame_mask_length``, stream FINE_TIME; a frame covered by both counts for the phoneme scale). Heads:

- frame scale: :class:`~fairseq_plugins.modules.heads.ReconstructionHead` on the output of encoder layer
  ``frame_layer`` (1-based, a low layer by default) predicts the log-mel
  (:class:`~fairseq_plugins.modules.heads.LogMelTarget`, one frame per encoder frame) of the frame-scale-masked
  frames;
- phoneme scale: a frame-wise head on the last layer predicts, for phoneme-span-masked frames, the target
  ``phone_target``: ``unmasked_layer`` = the output of layer ``phone_target_layer`` of an unmasked pass of the
  same encoder, under stop-gradient (no graph is built for it); ``ema`` = the same layer of an EMA teacher
  (data2vec style: a frozen copy of the encoder updated after every update with ``ema_decay``, saved in the
  checkpoint so a resumed run continues it exactly); ``quantised`` = wav2vec 2.0's target: fairseq's
  :class:`~fairseq.modules.GumbelVectorQuantizer` (``latent_vars`` x ``latent_groups`` codebook, Gumbel
  temperature ``latent_temp`` decayed per update) over the unmasked conv features (after ``layer_norm`` and
  ``dropout_features``, before ``post_extract_proj``) of the phoneme-masked frames, then ``project_q``; not
  detached, so the InfoNCE trains the quantiser and the conv stack as in wav2vec 2.0, and the criterion adds
  wav2vec 2.0's codebook diversity term (``prob_perplexity``);
- utterance scale: masked mean pooling of the last layer (of the masked pass, or of an unmasked pass with
  ``utt_input=unmasked``) of each of the two segments (views) of every utterance ->
  :class:`~fairseq_plugins.modules.heads.ProjectorMLP` -> NT-Xent in the criterion.

Input layout as ``simsiam_recon``: ``source`` is (V*B) x L, view-major, V = 2 segments per utterance
(``multiview_audio_pretraining`` with ``num_views: 2``). Registers the model ``mgf`` with config
:class:`MgfConfig`.
"""
import logging
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import torch
from fairseq.dataclass import ChoiceEnum
from fairseq.models.hubert.hubert import HubertModel
from fairseq.modules import GumbelVectorQuantizer

from fairseq_plugins.compat import register
from fairseq_plugins.modules.heads import ProjectorMLP, ReconstructionHead
from fairseq_plugins.modules.hubert_encoder import SeededHubertConfig, SeededHubertEncoder
from fairseq_plugins.modules.span_mask import FINE_TIME, seeded_span_mask

logger = logging.getLogger(__name__)

MODEL_NAME = "mgf"
PHONE_TARGET_CHOICES = ChoiceEnum(["unmasked_layer", "ema", "quantised"])
UTT_INPUT_CHOICES = ChoiceEnum(["masked", "unmasked"])
TEACHER_PARTS = ("feature_extractor", "layer_norm", "post_extract_proj", "encoder")


@dataclass
class MgfConfig(SeededHubertConfig):
    """HuBERT's encoder config (``mask_prob``/``mask_length`` are the phoneme-scale spans) plus MGF's heads."""

    mask_prob: float = field(
        default=0.4, metadata={"help": "phoneme scale: share of frames covered by phoneme-length spans (before "
                                       "overlaps); design choice"})
    mask_length: int = field(
        default=8, metadata={"help": "phoneme scale: span length in frames (5-10 frames of 20 ms ~ a phone)"})
    frame_mask_prob: float = field(
        default=0.1, metadata={"help": "frame scale: share of frames covered by short spans (before overlaps)"})
    frame_mask_length: int = field(
        default=2, metadata={"help": "frame scale: span length in frames (1-2)"})
    frame_layer: int = field(
        default=4, metadata={"help": "frame scale: encoder layer (1-based) that feeds the log-mel head; a low "
                                     "layer, where fine detail lives"})
    phone_target: PHONE_TARGET_CHOICES = field(
        default="unmasked_layer",
        metadata={"help": "phoneme-scale target: 'unmasked_layer' (stop-gradient unmasked pass of the same "
                          "encoder), 'ema' (EMA teacher, data2vec style) or 'quantised' (wav2vec 2.0's Gumbel "
                          "quantiser over the unmasked conv features, trained by the loss)"})
    phone_target_layer: int = field(
        default=0, metadata={"help": "layer (1-based) of the target pass; 0 = the last layer"})
    phone_head_hidden_dim: int = field(
        default=0, metadata={"help": "hidden dim of the phoneme-scale prediction head (0: one linear layer)"})
    latent_vars: int = field(
        default=320, metadata={"help": "phone_target=quantised: codewords per group (wav2vec 2.0: 320)"})
    latent_groups: int = field(
        default=2, metadata={"help": "phone_target=quantised: codebook groups (wav2vec 2.0: 2)"})
    latent_dim: int = field(
        default=0, metadata={"help": "phone_target=quantised: quantised vector dim before project_q "
                                     "(0: encoder_embed_dim); must divide by latent_groups"})
    latent_temp: Tuple[float, float, float] = field(
        default=(2, 0.5, 0.999995),
        metadata={"help": "phone_target=quantised: Gumbel softmax temperature (start, end, decay per update), "
                          "wav2vec 2.0's"})
    ema_decay: float = field(
        default=0.999, metadata={"help": "EMA teacher decay per update (phone_target=ema)"})
    utt_input: UTT_INPUT_CHOICES = field(
        default="masked",
        metadata={"help": "utterance scale pools the masked pass ('masked', no extra cost) or a second, "
                          "unmasked pass ('unmasked')"})
    utt_proj_dim: int = field(default=256, metadata={"help": "utterance projection output dim"})
    utt_proj_hidden_dim: int = field(default=2048, metadata={"help": "utterance projection hidden dim"})
    utt_proj_layers: int = field(default=2, metadata={"help": "linear layers of the utterance projection"})


@register("model", MODEL_NAME, dataclass=MgfConfig)
class MgfModel(SeededHubertEncoder):
    """See the module docstring. Built by the ``multiview_audio_pretraining`` task."""

    PRETRAINING_MODULES = ("recon_head", "phone_head", "utt_projector", "ema_teacher", "quantizer", "project_q")

    def __init__(self, cfg: MgfConfig, task_cfg) -> None:
        super().__init__(cfg, task_cfg)
        n_layers = cfg.encoder_layers
        if not 1 <= cfg.frame_layer <= n_layers:
            raise ValueError(f"model.frame_layer={cfg.frame_layer}: expected 1..encoder_layers={n_layers}")
        if not 0 <= cfg.phone_target_layer <= n_layers:
            raise ValueError(f"model.phone_target_layer={cfg.phone_target_layer}: expected 0 (last) .. "
                             f"encoder_layers={n_layers}")
        if cfg.encoder_layerdrop > 0:
            raise ValueError(f"model.encoder_layerdrop={cfg.encoder_layerdrop}: mgf reads fixed layers "
                             "(frame_layer, phone_target_layer), set it to 0")
        if not 0.0 < cfg.ema_decay < 1.0:
            raise ValueError(f"model.ema_decay={cfg.ema_decay}: expected 0 < decay < 1")
        dim = cfg.encoder_embed_dim
        self.recon_head = ReconstructionHead(dim, cfg.recon_n_mels, cfg.recon_head_hidden_dim)
        self.phone_head = ReconstructionHead(dim, dim, cfg.phone_head_hidden_dim)
        self.utt_projector = ProjectorMLP(dim, cfg.utt_proj_hidden_dim, cfg.utt_proj_dim, cfg.utt_proj_layers)
        self.ema_teacher = self.quantizer = self.project_q = None
        if cfg.phone_target == "quantised":
            # wav2vec 2.0's target quantiser (fairseq's class and wav2vec 2.0's arguments), over the conv features
            vq_dim = cfg.latent_dim or dim
            if vq_dim % cfg.latent_groups:
                raise ValueError(f"model.latent_dim={vq_dim} (0 = encoder_embed_dim) must divide by "
                                 f"model.latent_groups={cfg.latent_groups}")
            self.quantizer = GumbelVectorQuantizer(
                dim=self.embed, num_vars=cfg.latent_vars, temp=cfg.latent_temp, groups=cfg.latent_groups,
                combine_groups=False, vq_dim=vq_dim, time_first=True)
            self.project_q = torch.nn.Linear(vq_dim, dim)
        if cfg.phone_target == "ema":
            # a second HuBERT built from the same config (deepcopy fails on the weight-normed pos_conv), its
            # encoder parts loaded with the student's weights
            twin = HubertModel(cfg, task_cfg, [None])
            self.ema_teacher = torch.nn.ModuleDict({name: getattr(twin, name) for name in TEACHER_PARTS
                                                    if getattr(self, name) is not None})
            for name, module in self.ema_teacher.items():
                module.load_state_dict(getattr(self, name).state_dict())
            self.ema_teacher.requires_grad_(False)
            # the update count the teacher has followed, saved with it so a resumed run steps like a straight one
            self.ema_teacher.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self._scales = (True, True)  # (frame, phone) spans drawn by the next masked forward
        self._mask_parts: Dict[str, Optional[torch.Tensor]] = {}

    @classmethod
    def build_model(cls, cfg: MgfConfig, task):
        return cls(cfg, task.cfg)

    # ------------------------------------------------------------------ masks
    def time_mask(self, shape: Tuple[int, int], padding_mask: Optional[torch.Tensor],
                  keys: Tuple[int, ...]) -> Optional[torch.Tensor]:
        """Union of the phoneme-scale spans (``keys + (TIME,)``) and the frame-scale spans (``keys +
        (FINE_TIME,)``) of the scales switched on for this forward; the parts are kept in ``_mask_parts``
        (``phone``, ``frame``: B x T bool or None; ``frame`` excludes frames also covered by ``phone``)."""
        frame_on, phone_on = self._scales
        phone = frame = None
        if phone_on and self.mask_prob > 0:
            phone = super().time_mask(shape, padding_mask, keys)
        if frame_on and self.cfg.frame_mask_prob > 0:
            frame = seeded_span_mask(shape, padding_mask, self.cfg.frame_mask_prob, self.cfg.frame_mask_length,
                                     keys + (FINE_TIME,), self.mask_selection, self.mask_other, min_masks=1)
            if phone is not None:
                frame = frame & ~phone
        self._mask_parts = {"phone": phone, "frame": frame, "keys": keys}
        if phone is None and frame is None:
            return None
        return phone if frame is None else frame if phone is None else phone | frame

    # ------------------------------------------------------------------ EMA teacher
    def set_num_updates(self, num_updates: int) -> None:
        """Also steps the EMA teacher once per completed update: fairseq calls this before every training
        forward with the update number n; the teacher steps (towards the student after update n - 1) when n is
        one more than the count it has followed (``ema_teacher.updates``, in the checkpoint). A checkpoint load
        (called before the weights are loaded, with a jump) does not step it; the first forward after a resume
        then makes the step a straight run makes at that forward."""
        if self.ema_teacher is not None and self.training and int(num_updates) == int(self.ema_teacher.updates) + 1:
            self.ema_step()
            self.ema_teacher.updates.fill_(int(num_updates))
        super().set_num_updates(num_updates)

    @torch.no_grad()
    def ema_step(self) -> None:
        """``teacher = decay * teacher + (1 - decay) * student`` for every parameter; buffers copied."""
        d = self.cfg.ema_decay
        for name, teacher in self.ema_teacher.items():
            student = getattr(self, name)
            for ps, pt in zip(student.parameters(), teacher.parameters()):
                pt.mul_(d).add_(ps.detach().to(pt.dtype), alpha=1 - d)
            for bs, bt in zip(student.buffers(), teacher.buffers()):
                bt.copy_(bs)

    @torch.no_grad()
    def teacher_layer(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor], layer: int) -> torch.Tensor:
        """Output ``B x T x C`` of layer ``layer`` (1-based) of the unmasked EMA teacher (in eval mode: no
        dropout)."""
        parts = {name: getattr(self, name) for name in self.ema_teacher}
        was = self.training
        try:
            for name, module in self.ema_teacher.items():
                setattr(self, name, module)
            self.eval()
            enc = self.encode_features(source, padding_mask)
            return self.run_transformer(enc["features"], enc["padding_mask"], False, layer)["x"]
        finally:
            for name, module in parts.items():
                setattr(self, name, module)
            self.train(was)

    # ------------------------------------------------------------------ quantised targets
    def quantised_targets(self, conv: torch.Tensor, mask: torch.Tensor) -> Dict[str, torch.Tensor]:
        """wav2vec 2.0's targets of the masked frames: ``project_q(quantizer(dropout_features(conv)))``, the
        quantiser run on the masked frames only (as wav2vec 2.0 quantises ``unmasked_features[mask_indices]``, so
        its perplexities are over those frames). ``conv`` B x T x C (layer-normed conv features), ``mask`` B x T
        bool -> ``phone_target`` B x T x D (zeros elsewhere, with its graph) and the quantiser's statistics
        (none when no frame is masked)."""
        if not mask.any():
            return {"phone_target": conv.new_zeros(mask.shape + (self.project_q.out_features,))}
        q = self.quantizer(self.dropout_features(conv[mask]).unsqueeze(0), produce_targets=False)
        y = self.project_q(q["x"][0])
        target = y.new_zeros(mask.shape + (y.size(-1),))
        target[mask] = y
        return {"phone_target": target, "prob_perplexity": q["prob_perplexity"],
                "code_perplexity": q["code_perplexity"], "num_vars": q["num_vars"],
                "quantizer_temp": torch.tensor(float(q["temp"]))}

    # ------------------------------------------------------------------ forward
    def forward(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None, num_views: int = 2,
                frame: bool = True, phone: bool = True, utt: bool = True,
                target_source: Optional[torch.Tensor] = None, features_only: bool = False,
                output_layer: Optional[int] = None, **unused) -> Dict[str, torch.Tensor]:
        """Pre-training forward on a view-major batch.

        Args:
            source: (V*B) x L waveforms, row ``v*B + b`` = segment v of utterance b; padding_mask: (V*B) x L.
            frame / phone / utt: compute that scale (a scale that is off draws no masks and runs no head).
            target_source: (V*B) x L clean waveforms for the log-mel targets (default ``source``).
        Returns:
            dict with ``x`` (V*B) x T x C (last layer of the masked pass), ``padding_mask`` (V*B) x T or None,
            ``mask_indices``, ``features_pen``; frame: ``frame_pred``, ``frame_target`` (V*B) x T x n_mels,
            ``frame_mask`` (V*B) x T; phone: ``phone_pred``, ``phone_target`` (V*B) x T x C (no
            graph, except ``quantised``), ``phone_mask``, ``mask_keys`` (the (seed, update, rank, micro-batch)
            keys of the masks, for the distractor draw); with ``phone_target=quantised`` the target keeps its
            graph (zeros outside ``phone_mask``) and ``prob_perplexity``, ``code_perplexity``, ``num_vars``,
            ``quantizer_temp`` come with it; utt: ``pooled`` V x B x C, ``utt_z`` V x B x D.
        """
        enc = self.encode_features(source, padding_mask)
        pad = enc["padding_mask"]
        mask = (frame or phone) and not features_only
        self._scales = (frame, phone)
        try:
            main = self.run_transformer(enc["features"], pad, mask, output_layer)
            parts = self._mask_parts if mask else {}
        finally:
            self._scales, self._mask_parts = (True, True), {}
        x = main["x"]
        out = {"x": x, "padding_mask": pad, "mask_indices": main["mask_indices"],
               "features_pen": enc["features_pen"], "num_views": num_views, "mask_keys": parts.get("keys")}
        if features_only:
            out["layer_results"] = main["layer_results"]
            return out
        keep = None if pad is None else ~pad
        if frame and parts.get("frame") is not None:
            low = main["layer_results"][self.cfg.frame_layer - 1][0].transpose(0, 1)
            wav = source if target_source is None else target_source
            out["frame_pred"] = self.recon_head(low)
            out["frame_target"] = self.recon_targets(wav, x.size(1), pad)
            out["frame_mask"] = parts["frame"] if keep is None else parts["frame"] & keep
        if phone and parts.get("phone") is not None:
            layer = self.cfg.phone_target_layer or None
            out["phone_pred"] = self.phone_head(x)
            out["phone_mask"] = parts["phone"] if keep is None else parts["phone"] & keep
            if self.quantizer is not None:
                out.update(self.quantised_targets(enc["conv"], out["phone_mask"]))
            elif self.ema_teacher is not None:
                out["phone_target"] = self.teacher_layer(source, padding_mask, layer or self.cfg.encoder_layers)
            else:
                with torch.no_grad():
                    out["phone_target"] = self.run_transformer(enc["features"].detach(), pad, False, layer)["x"]
        if utt:
            if num_views != 2 or x.size(0) % 2:
                raise ValueError(f"the utterance scale needs 2 segments per utterance in a view-major batch "
                                 f"(task.num_views=2): got num_views={num_views}, {x.size(0)} rows")
            xs = x
            if mask and self.cfg.utt_input == "unmasked":
                xs = self.run_transformer(enc["features"], pad, False)["x"]
            B = x.size(0) // 2
            out["pooled"] = pooled = self.masked_mean(xs, pad).view(2, B, -1)
            out["utt_z"] = self.utt_projector(pooled.reshape(2 * B, -1)).view(2, B, -1)
        return out
