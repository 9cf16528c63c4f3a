"""Model ``slicer``: SLICER's student-teacher network on log-mel spectrograms.

SLICER (Seth, Ghosh, Umesh, Manocha; "SLICER: Learning universal audio representations using low-resource
self-supervised pre-training", ICASSP 2023, arXiv 2211.01519): a BYOL-A CNN encoder (2048-d, max + mean
pooling over time), an instance head (128-d, MoCo InfoNCE against a queue of teacher keys) and a cluster head
(softmax over K = 128, Contrastive-Clustering loss); the teacher is an EMA copy (momentum 0.999) of encoder +
heads. The model takes waveform crops and does everything on the spectrogram side itself: log-mel front end,
running normalisation, and the two augmented views. Each view goes through the authors' chain (LAPE
``src/augmentations/__init__.py``: normalise -> log-mixup-exp -> random resize crop -> k-mix, each mixer with its
own FIFO bank; ``model.mix_mode=mixup_kmix``); ``kmix`` / ``mixup`` / ``none`` keep one mixer (or none) before
the crop (:mod:`fairseq_plugins.data.spec_augment`). Registers the model ``slicer``.

State kept in the checkpoint (buffers / parameters): teacher, MoCo queue + pointer, the normaliser's
statistics, the k-mix centroids (fitted by the task before the first epoch, see
:mod:`fairseq_plugins.tasks.slicer_pretraining`), the number of updates the teacher has absorbed and (as extra
state, ``model.save_mix_bank``) the mix banks.

Teacher EMA (``model.ema_stepping``): ``per_update`` steps once per finished update (fairseq's
``set_num_updates``); ``per_view`` is the authors' stepping (LAPE ``src/upstream/slicer/upstream_expert.py``:
``forward`` calls ``_momentum_update_key_encoder`` before each of the two teacher passes of a training step), so
view 2's keys come from a teacher stepped once and view 1's from one stepped twice with the same student.

Distributed training: teacher keys are all-gathered from every worker (rank order) before they enter the
queue, so all workers keep the same queue; BN statistics are kept from leaking the positive pairing by
*local shuffle-BN*: the student encodes its batch in ``bn_groups`` contiguous groups and the teacher encodes a
random permutation of the batch in ``bn_groups`` groups, so a query and its positive key are normalised with
statistics of different sample sets (MoCo's shuffle-BN over ``bn_groups`` GPUs, emulated on each worker).

Mixed precision (``common.fp16`` / ``common.bf16``): fairseq casts the whole model to half precision; this model
keeps the log-mel front end, the normaliser, the k-mix centroids, the MoCo queue and the whole teacher in their
own precision (float32, float64 statistics), so the EMA with momentum 0.999 is not lost to fp16 rounding. The
views are made in float32 and cast to the student's precision; the criterion computes the losses in float32.

End-of-epoch dummy batches under DDP (fairseq runs a worker with no batch left on a copy of its first batch and
zeroes the loss): the task passes ``dummy_batch=True``; the worker then still takes part in every collective
(normaliser all-reduce, key all-gather) but contributes no statistics, no keys and no bank items.

For downstream probes, :meth:`SlicerModel.extract_features` exposes an ``encoder.layers``-structured frame
encoder (see :class:`SlicerFrameEncoder`) so ``python -m fairseq_plugins.evaluate`` reads two 2048-d states.
"""
import copy
import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from fairseq.dataclass import FairseqDataclass
from fairseq.models import BaseFairseqModel
from torch import nn

from fairseq_plugins.compat import register
from fairseq_plugins.data.spec_augment import (
    KMIX_METRICS,
    PARTNER_RULES,
    MixBank,
    assign_clusters,
    random_resize_crop,
)
from fairseq_plugins.modules.logmel import LogMelFrontend, RunningNorm
from fairseq_plugins.modules.precision import apply_keeping

logger = logging.getLogger(__name__)

MODEL_NAME = "slicer"
MIX_MODES = ("mixup_kmix", "kmix", "mixup", "none")
EMA_STEPPINGS = ("per_update", "per_view")


@dataclass
class SlicerConfig(FairseqDataclass):
    sample_rate: int = field(default=16000, metadata={"help": "input sample rate"})
    n_fft: int = field(default=1024, metadata={"help": "STFT size"})
    win_length: int = field(
        default=1024, metadata={"help": "STFT window (authors / BYOL-A: 1024 = n_fft, librosa's default; this "
                                        "plugin used 400 = 25 ms before)"})
    stft_pad_mode: str = field(
        default="reflect", metadata={"help": "padding of the centred STFT: reflect (librosa 0.8.1 in the authors' "
                                             "code, torch.stft) or constant (zeros, librosa >= 0.10)"})
    hop_length: int = field(default=160, metadata={"help": "STFT hop (10 ms)"})
    n_mels: int = field(default=64, metadata={"help": "mel bins (must be a multiple of 8)"})
    f_min: float = field(default=60.0, metadata={"help": "lowest mel frequency (Hz)"})
    f_max: float = field(default=7800.0, metadata={"help": "highest mel frequency (Hz)"})
    norm_updates: int = field(
        default=1000, metadata={"help": "batches whose log-mel statistics the running normaliser absorbs before "
                                        "it freezes (BYOL-A: the first epochs)"})
    conv_channels: int = field(default=64, metadata={"help": "channels of the 3 conv blocks"})
    embed_dim: int = field(default=2048, metadata={"help": "encoder output size"})
    dropout: float = field(default=0.3, metadata={"help": "dropout between the two encoder Linear layers"})
    instance_dim: int = field(default=128, metadata={"help": "instance head output (MoCo key size)"})
    num_clusters: int = field(default=128, metadata={"help": "K of the cluster head"})
    cluster_hidden: int = field(default=2048, metadata={"help": "hidden size of the cluster head"})
    ema_momentum: float = field(default=0.999, metadata={"help": "teacher EMA momentum"})
    queue_size: int = field(default=65536, metadata={"help": "MoCo queue length (teacher keys)"})
    enqueue_both_views: bool = field(
        default=True, metadata={"help": "enqueue the teacher keys of both views (else only view 1's)"})
    bn_groups: int = field(
        default=2, metadata={"help": "local shuffle-BN groups per worker (1 = off, the authors' behaviour: their "
                                     "DDP shuffle never runs); each group needs >= 2 items"})
    ema_stepping: str = field(
        default="per_update", metadata={"help": f"teacher EMA: one of {EMA_STEPPINGS}; per_view = the authors' "
                                                "(one EMA step before each of the two teacher passes)"})
    mix_mode: str = field(
        default="mixup_kmix", metadata={"help": f"spectrogram mixing, one of {MIX_MODES}: mixup_kmix = the "
                                                "authors' chain log-mixup-exp -> random resize crop -> k-mix (two "
                                                "banks); kmix / mixup = that one mixer, then the crop; none"})
    mix_alpha: float = field(default=0.4, metadata={"help": "mixing ratio ~ U(0, alpha) (BYOL-A 0.4)"})
    mix_bank_size: int = field(default=2048, metadata={"help": "FIFO bank of past spectrograms (per mixer)"})
    save_mix_bank: bool = field(
        default=True, metadata={"help": "save the mix bank in checkpoints (exact resume; mix_bank_size x n_mels "
                                        "x frames floats, ~50 MB at the paper's size)"})
    kmix_clusters: int = field(default=4, metadata={"help": "k of the k-means of k-mix (paper 4)"})
    kmix_metric: str = field(
        default="cosine", metadata={"help": f"k-mix k-means and cluster assignment: one of {KMIX_METRICS} (authors: "
                                            "cosine = spherical k-means)"})
    kmix_rule: str = field(
        default="farthest", metadata={"help": f"k-mix partner cluster: one of {PARTNER_RULES} (authors: farthest)"})
    rrc: bool = field(default=True, metadata={"help": "BYOL-A random resize crop (after log-mixup-exp, before "
                                                      "k-mix in mixup_kmix; after the mixer otherwise)"})
    rrc_virtual_scale: List[float] = field(default_factory=lambda: [1.0, 1.5],
                                           metadata={"help": "virtual canvas scale (freq, time)"})
    rrc_freq_scale: List[float] = field(default_factory=lambda: [0.6, 1.5], metadata={"help": "crop freq scale"})
    rrc_time_scale: List[float] = field(default_factory=lambda: [0.6, 1.5], metadata={"help": "crop time scale"})


class ConvBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> maxpool2 on ``B x C x F x T``."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)


class FrameLayer(nn.Module):
    """Dropout -> Linear -> ReLU on ``T x B x C`` (fairseq layer layout)."""

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc(self.dropout(x)))


class SlicerFrameEncoder(nn.Module):
    """The part of the BYOL-A encoder after its first Linear: ``B x T x 2048 -> B x T x 2048``.

    It holds ``layers`` (one :class:`FrameLayer`) so that the evaluation probes read the first Linear's output
    (state 0) and the encoder output (state 1) with their hooks; both are 2048-d frames at 12.5 Hz.
    """

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList([FrameLayer(dim, dropout)])

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = x.transpose(0, 1)
        for layer in self.layers:
            h = layer(h)
        return h.transpose(0, 1)


class SlicerEncoder(nn.Module):
    """BYOL-A CNN: normalised log-mel ``B x F x T`` -> frames ``B x T/8 x D`` (``features``) / ``B x D`` pooled."""

    def __init__(self, n_mels: int, channels: int, dim: int, dropout: float):
        super().__init__()
        if n_mels % 8:
            raise ValueError(f"model.n_mels={n_mels}: must be a multiple of 8 (three 2x2 max-pools)")
        self.convs = nn.Sequential(ConvBlock(1, channels), ConvBlock(channels, channels), ConvBlock(channels, channels))
        self.fc1 = nn.Linear(channels * (n_mels // 8), dim)
        self.encoder = SlicerFrameEncoder(dim, dropout)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.convs(x.unsqueeze(1))  # B x C x F/8 x T/8
        b, c, f, t = h.shape
        h = h.permute(0, 3, 2, 1).reshape(b, t, f * c)  # BYOL-A's (F, C) flattening order
        return self.encoder(F.relu(self.fc1(h)))

    @staticmethod
    def pool(frames: torch.Tensor, frame_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """max + mean over time (BYOL-A), ``B x T x D -> B x D``; ``frame_mask`` True marks padding."""
        if frame_mask is None:
            return frames.max(dim=1).values + frames.mean(dim=1)
        keep = (~frame_mask).unsqueeze(-1).to(frames)
        mx = frames.masked_fill(frame_mask.unsqueeze(-1), float("-inf")).max(dim=1).values
        return mx + (frames * keep).sum(1) / keep.sum(1).clamp_min(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x))


class SlicerNet(nn.Module):
    """Encoder + heads (the part the teacher copies)."""

    def __init__(self, cfg: SlicerConfig):
        super().__init__()
        self.backbone = SlicerEncoder(cfg.n_mels, cfg.conv_channels, cfg.embed_dim, cfg.dropout)
        self.instance_head = nn.Linear(cfg.embed_dim, cfg.instance_dim)
        self.cluster_head = nn.Sequential(nn.Linear(cfg.embed_dim, cfg.cluster_hidden), nn.ReLU(),
                                          nn.Linear(cfg.cluster_hidden, cfg.num_clusters))

    def forward(self, x: torch.Tensor, with_clusters: bool = True) -> Dict[str, torch.Tensor]:
        h = self.backbone(x)
        out = {"q": F.normalize(self.instance_head(h), dim=1)}
        if with_clusters:
            out["c"] = torch.softmax(self.cluster_head(h), dim=1)
        return out


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@torch.no_grad()
def gather_keys(keys: torch.Tensor) -> torch.Tensor:
    """All-gather ``N_r x D`` keys of every worker (sizes may differ) in rank order; identity for 1 worker."""
    if _world() == 1:
        return keys
    n = torch.tensor([keys.size(0)], device=keys.device)
    sizes = [torch.zeros_like(n) for _ in range(_world())]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    padded = keys.new_zeros(max(sizes), keys.size(1))
    padded[: keys.size(0)] = keys
    out = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(out, padded.contiguous())
    return torch.cat([o[:s] for o, s in zip(out, sizes)])


def grouped(fn, x: torch.Tensor, groups: int, perm: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """Run ``fn`` on ``groups`` chunks of ``x`` (optionally permuted first) and restore the original order."""
    groups = max(1, min(groups, x.size(0) // 2))
    xs = x if perm is None else x[perm]
    outs = [fn(chunk) for chunk in torch.chunk(xs, groups)]
    out = {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
    if perm is not None:
        inv = torch.empty_like(perm)
        inv[perm] = torch.arange(perm.numel(), device=perm.device)
        out = {k: v[inv] for k, v in out.items()}
    return out


@register("model", MODEL_NAME, dataclass=SlicerConfig)
class SlicerModel(BaseFairseqModel):
    def __init__(self, cfg: SlicerConfig):
        super().__init__()
        if cfg.mix_mode not in MIX_MODES:
            raise ValueError(f"model.mix_mode={cfg.mix_mode!r}: expected one of {', '.join(MIX_MODES)}")
        if cfg.kmix_metric not in KMIX_METRICS:
            raise ValueError(f"model.kmix_metric={cfg.kmix_metric!r}: expected one of {', '.join(KMIX_METRICS)}")
        if cfg.kmix_rule not in PARTNER_RULES:
            raise ValueError(f"model.kmix_rule={cfg.kmix_rule!r}: expected one of {', '.join(PARTNER_RULES)}")
        if cfg.ema_stepping not in EMA_STEPPINGS:
            raise ValueError(f"model.ema_stepping={cfg.ema_stepping!r}: expected one of {', '.join(EMA_STEPPINGS)}")
        self.cfg = cfg
        self.frontend = LogMelFrontend(cfg.sample_rate, cfg.n_fft, cfg.win_length, cfg.hop_length, cfg.n_mels,
                                       cfg.f_min, cfg.f_max, pad_mode=cfg.stft_pad_mode)
        self.norm = RunningNorm(cfg.norm_updates)
        self.student = SlicerNet(cfg)
        self.teacher = copy.deepcopy(self.student)
        self.teacher.requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(cfg.queue_size, cfg.instance_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        self.register_buffer("kmix_centroids", torch.zeros(cfg.kmix_clusters, cfg.n_mels))
        self.register_buffer("kmix_ready", torch.zeros((), dtype=torch.bool))
        self.bank = MixBank(cfg.mix_bank_size)  # log-mixup-exp's bank (k-mix's in mix_mode=kmix)
        self.kmix_bank = MixBank(cfg.mix_bank_size)  # k-mix's own bank in mix_mode=mixup_kmix

    @classmethod
    def build_model(cls, cfg: SlicerConfig, task=None) -> "SlicerModel":
        return cls(cfg)

    def _precision_kept(self) -> List[torch.Tensor]:
        """Tensors whose dtype a model-wide cast (``half()``, ``to(torch.bfloat16)``) must not change."""
        kept = [self.queue, self.kmix_centroids]
        for module in (self.frontend, self.norm, self.teacher):
            kept += list(module.parameters()) + list(module.buffers())
        return kept

    def _apply(self, fn, recurse: bool = True):
        # fairseq's fp16/bf16 training casts the whole model (trainer: model.half()); keep the front end,
        # statistics, centroids, queue and teacher in their precision and only let them follow device moves
        return apply_keeping(super()._apply, fn, self._precision_kept(), recurse)

    def get_extra_state(self) -> Dict[str, Optional[torch.Tensor]]:
        """The mix bank travels in the state dict (``_extra_state``) so that a resumed run mixes exactly as an
        uninterrupted one would (``model.save_mix_bank=false`` leaves it out: it then refills after a resume)."""
        if not self.cfg.save_mix_bank:
            return {}
        return {"bank_items": self.bank.items, "bank_labels": self.bank.labels,
                "kmix_bank_items": self.kmix_bank.items, "kmix_bank_labels": self.kmix_bank.labels}

    def set_extra_state(self, state) -> None:
        for prefix, bank in (("bank", self.bank), ("kmix_bank", self.kmix_bank)):
            if state and state.get(f"{prefix}_items") is not None:
                bank.items = state[f"{prefix}_items"].to(self.queue.device)
                bank.labels = state[f"{prefix}_labels"].to(self.queue.device)

    # the evaluation probes look for a module with `layers`: the student's frame encoder
    @property
    def encoder(self) -> SlicerFrameEncoder:
        return self.student.backbone.encoder

    def uses_kmix(self) -> bool:
        return self.cfg.mix_mode in ("kmix", "mixup_kmix")

    def needs_kmix_centroids(self) -> bool:
        return self.uses_kmix() and not bool(self.kmix_ready)

    @torch.no_grad()
    def set_kmix_centroids(self, centroids: torch.Tensor) -> None:
        if tuple(centroids.shape) != tuple(self.kmix_centroids.shape):
            raise ValueError(f"k-mix centroids of shape {tuple(centroids.shape)}; the model expects "
                             f"{tuple(self.kmix_centroids.shape)} (model.kmix_clusters x model.n_mels)")
        self.kmix_centroids.copy_(centroids)
        self.kmix_ready.fill_(True)

    # ---------------------------------------------------------------------------------------------- teacher
    @torch.no_grad()
    def ema_step(self) -> None:
        """``teacher = m * teacher + (1 - m) * student`` for every parameter (buffers are the teacher's own)."""
        m = self.cfg.ema_momentum
        for pt, ps in zip(self.teacher.parameters(), self.student.parameters()):
            pt.mul_(m).add_(ps.detach().to(pt.dtype), alpha=1.0 - m)

    def set_num_updates(self, num_updates: int) -> None:
        """fairseq calls this before every training forward with the number of finished updates: the teacher
        absorbs each finished update exactly once (also across a resume: ``ema_updates`` is in the checkpoint)."""
        super().set_num_updates(num_updates)
        if self.cfg.ema_stepping == "per_update" and self.training and num_updates > int(self.ema_updates):
            self.ema_step()
            self.ema_updates.fill_(num_updates)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write ``N x D`` keys into the FIFO queue at the pointer, wrapping around."""
        keys = keys[-self.queue.size(0):]
        n, size = keys.size(0), self.queue.size(0)
        ptr = int(self.queue_ptr)
        idx = (torch.arange(n, device=keys.device) + ptr) % size
        self.queue[idx] = keys.to(self.queue)
        self.queue_ptr.fill_((ptr + n) % size)

    # ---------------------------------------------------------------------------------------------- input
    def logmel(self, source: torch.Tensor, update_norm: bool = False, contribute: bool = True):
        """``B x S`` waveform -> (raw log-mel, normalised log-mel), both ``B x F x T`` float32."""
        with torch.no_grad():
            raw = self.frontend(source)
            return raw, self.norm(raw, update=update_norm, contribute=contribute)

    def _student_dtype(self) -> torch.dtype:
        return self.student.instance_head.weight.dtype

    def _crop(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        if not cfg.rrc:
            return x
        return random_resize_crop(x, tuple(cfg.rrc_virtual_scale), tuple(cfg.rrc_freq_scale),
                                  tuple(cfg.rrc_time_scale))

    @torch.no_grad()
    def augment(self, x: torch.Tensor, labels: Optional[torch.Tensor]):
        """One view of the normalised log-mels ``x`` (``B x F x T``) -> ``(view, kmix_input)``; ``kmix_input`` is
        what k-mix received in ``mixup_kmix`` (pushed into k-mix's bank afterwards), else None."""
        cfg = self.cfg
        if cfg.mix_mode == "mixup_kmix":  # the authors' chain: log-mixup-exp -> random resize crop -> k-mix
            cropped = self._crop(self.bank.mix(x, cfg.mix_alpha))
            return self.kmix_bank.mix(cropped, cfg.mix_alpha, labels, self.kmix_centroids, cfg.kmix_rule), cropped
        if cfg.mix_mode != "none":
            x = self.bank.mix(x, cfg.mix_alpha, labels, self.kmix_centroids if labels is not None else None,
                              cfg.kmix_rule)
        return self._crop(x), None

    def make_views(self, source: torch.Tensor, dummy_batch: bool = False):
        raw, x = self.logmel(source, update_norm=self.training, contribute=not dummy_batch)
        if not self.training:
            return x, x
        labels = None
        if self.uses_kmix():
            if not bool(self.kmix_ready):
                raise RuntimeError("model.mix_mode=kmix but the k-mix centroids were never fitted: the task "
                                   "slicer_pretraining fits them before the first epoch (or call "
                                   "set_kmix_centroids)")
            labels = assign_clusters(raw.mean(dim=2), self.kmix_centroids, self.cfg.kmix_metric)
        (v1, k_in1), (v2, k_in2) = self.augment(x, labels), self.augment(x, labels)
        if self.cfg.mix_mode != "none" and not dummy_batch:
            self.bank.push(x, labels if self.cfg.mix_mode == "kmix" else None)
            if self.cfg.mix_mode == "mixup_kmix":  # k-mix's bank holds what k-mix saw: both cropped views
                self.kmix_bank.push(torch.cat([k_in1, k_in2]), torch.cat([labels, labels]))
        return v1, v2

    # ---------------------------------------------------------------------------------------------- forward
    def forward(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None,
                dummy_batch: bool = False, **kwargs):
        """``source`` ``B x S`` equal-length crops -> dict with ``q1, q2`` (student queries ``B x 128``), ``k1,
        k2`` (teacher keys), ``c1, c2`` (student cluster assignments ``B x K``) and ``negatives`` (the queue
        before this batch's keys were added, ``N x 128``). ``dummy_batch``: fairseq's placeholder batch of a
        worker without data (see the module doc): nothing of it enters the normaliser, queue or bank."""
        v1, v2 = self.make_views(source, dummy_batch)
        g = self.cfg.bn_groups
        dt = self._student_dtype()
        s1 = grouped(self.student, v1.to(dt), g)
        s2 = grouped(self.student, v2.to(dt), g)
        with torch.no_grad():
            b = source.size(0)

            def teacher(x):
                return self.teacher(x, with_clusters=False)

            if self.training and self.cfg.ema_stepping == "per_view":
                # the authors' order: forward(q=view 1, k=view 2) then forward(q=view 2, k=view 1), each
                # stepping the teacher first
                self.ema_step()
                k2 = grouped(teacher, v2, g, torch.randperm(b, device=source.device) if g > 1 else None)["q"]
                self.ema_step()
                k1 = grouped(teacher, v1, g, torch.randperm(b, device=source.device) if g > 1 else None)["q"]
            else:
                k1 = grouped(teacher, v1, g, torch.randperm(b, device=source.device) if g > 1 else None)["q"]
                k2 = grouped(teacher, v2, g, torch.randperm(b, device=source.device) if g > 1 else None)["q"]
            negatives = self.queue.clone()
            if self.training:
                keys = torch.cat([k1, k2]) if self.cfg.enqueue_both_views else k1
                self.enqueue(gather_keys(keys[:0] if dummy_batch else keys))
        return {"q1": s1["q"], "q2": s2["q"], "c1": s1["c"], "c2": s2["c"], "k1": k1, "k2": k2,
                "negatives": negatives}

    def extract_features(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None, mask=False,
                         **kwargs) -> Dict[str, torch.Tensor]:
        """Frozen features for downstream use: ``x`` frames ``B x T' x 2048`` (T' = T/8 at 12.5 Hz),
        ``pooled`` ``B x 2048`` (max + mean over time, the paper's utterance embedding), ``padding_mask``."""
        _, x = self.logmel(source, update_norm=False)
        frames = self.student.backbone.features(x.to(self._student_dtype()))
        frame_mask = None
        if padding_mask is not None and padding_mask.any():
            n = self.frontend.num_frames((~padding_mask).sum(1)) // 8
            frame_mask = torch.arange(frames.size(1), device=frames.device)[None] >= n[:, None]
        return {"x": frames, "pooled": SlicerEncoder.pool(frames, frame_mask), "padding_mask": frame_mask}
