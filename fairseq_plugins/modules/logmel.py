"""The plugin's one log-mel implementation, and a running mean/std normaliser whose statistics live in the checkpoint.

:class:`LogMel` maps a waveform batch to ``log(mel power + eps)`` with librosa's (Slaney) mel filterbank kept as a
torch buffer, so it runs on any device and in a batch. Every setting is a parameter, so each caller's pipeline
is one configuration of it:

- SLICER (Seth, Ghosh, Umesh, Manocha; ICASSP 2023, arXiv 2211.01519), as in the authors' code (LAPE,
  ``src/utils/utils.py`` ``MelSpectrogramLibrosa``: librosa 0.8.1 ``stft`` with n_fft 1024, its default window
  = n_fft, hop 160, ``center=True`` with reflect padding, 64 bins, 60-7800 Hz): ``framing="centered"``
  (:class:`LogMelFrontend`, used by :mod:`fairseq_plugins.models.slicer`);
- the masked-reconstruction target of ``simsiam_recon``: frames cut exactly like a wav2vec 2.0 / HuBERT conv stack
  (400-sample window, 320 hop, no padding), ``framing="valid"`` (:class:`fairseq_plugins.modules.heads.LogMelTarget`);
- the ``logmel`` baseline upstream of the probes: 80 bins, 25 ms window, one frame per 20 ms label frame,
  ``framing="label"`` (:class:`fairseq_plugins.evaluate.upstream.LogMelUpstream`).

The ``centered`` framing runs ``torch.stft``; ``valid`` and ``label`` cut frames with ``unfold`` and zero-pad
each windowed frame to ``n_fft`` (the same power spectrum as a window centred in an ``n_fft`` frame). Registers
nothing.
"""
import logging
from typing import Optional, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

FRAMINGS = ("centered", "valid", "label")
PAD_MODES = ("reflect", "constant")


class LogMel(nn.Module):
    """Waveform ``B x S`` -> log-mel ``B x n_mels x T`` (``time_first``: ``B x T x n_mels``).

    Args:
        sample_rate, n_fft, win_length, hop_length, n_mels: STFT / filterbank sizes (``n_fft >= win_length``;
            Hann window of ``win_length`` samples, periodic).
        f_min, f_max: filterbank range in Hz (``f_max=None``: ``sample_rate / 2``).
        eps: added to the mel power before the log.
        framing: ``centered`` (frame ``t`` centred on sample ``t * hop``, the signal padded by ``n_fft // 2``
            on both sides with ``pad_mode``: ``T = S // hop + 1``; librosa / torch.stft ``center=True``),
            ``valid`` (frame ``t`` = samples ``[t * hop, t * hop + win)``, no padding: ``T = 1 + (S - win) //
            hop``, 0 when ``S < win``), ``label`` (frame ``t`` centred on sample ``t * hop + hop / 2``, i.e.
            starting ``(win - hop) // 2`` samples before ``t * hop``, zero padding: ``T = S // hop``).
        pad_mode: ``reflect`` (librosa < 0.10 and torch.stft default) or ``constant`` (zeros); ``centered`` only.
        time_first: return ``B x T x n_mels`` instead of ``B x n_mels x T``.
    """

    def __init__(self, sample_rate: int = 16000, n_fft: int = 1024, win_length: int = 1024, hop_length: int = 160,
                 n_mels: int = 64, f_min: float = 60.0, f_max: Optional[float] = 7800.0, eps: float = 1e-8,
                 framing: str = "centered", pad_mode: str = "reflect", time_first: bool = False):
        super().__init__()
        import librosa

        if framing not in FRAMINGS:
            raise ValueError(f"log-mel framing={framing!r}: expected one of {', '.join(FRAMINGS)}")
        if pad_mode not in PAD_MODES:
            raise ValueError(f"log-mel pad_mode={pad_mode!r}: expected one of {', '.join(PAD_MODES)}")
        if win_length > n_fft:
            raise ValueError(f"win_length={win_length} must not exceed n_fft={n_fft}")
        if hop_length <= 0:
            raise ValueError(f"hop_length={hop_length} must be positive")
        self.sample_rate, self.n_fft, self.win_length, self.hop_length = sample_rate, n_fft, win_length, hop_length
        self.n_mels, self.eps, self.framing, self.pad_mode, self.time_first = n_mels, eps, framing, pad_mode, \
            time_first
        fb = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=f_min, fmax=f_max)
        self.register_buffer("fbank", torch.from_numpy(fb).float(), persistent=False)  # n_mels x (n_fft/2+1)
        self.register_buffer("window", torch.hann_window(win_length), persistent=False)

    def num_frames(self, num_samples: Union[int, torch.Tensor]) -> Union[int, torch.Tensor]:
        """Frames of an utterance of ``num_samples`` samples (an int or a tensor of lengths)."""
        hop, win = self.hop_length, self.win_length
        if self.framing == "centered":
            return num_samples // hop + 1
        if self.framing == "label":
            return num_samples // hop
        if isinstance(num_samples, torch.Tensor):
            return torch.where(num_samples < win, torch.zeros_like(num_samples), 1 + (num_samples - win) // hop)
        return 0 if num_samples < win else 1 + (num_samples - win) // hop

    def power(self, wav: torch.Tensor) -> torch.Tensor:
        """Power spectrogram ``B x (n_fft/2+1) x T`` of ``B x S`` float32 waveforms."""
        wav = wav.float()
        if self.framing == "centered":
            spec = torch.stft(wav, self.n_fft, hop_length=self.hop_length, win_length=self.win_length,
                              window=self.window, center=True, pad_mode=self.pad_mode, return_complex=True)
            return spec.real.pow(2) + spec.imag.pow(2)
        n = wav.size(-1)
        frames = int(self.num_frames(n))
        if frames == 0:
            return wav.new_zeros(wav.size(0), self.n_fft // 2 + 1, 0)
        if self.framing == "label":
            wav = F.pad(wav, ((self.win_length - self.hop_length) // 2, self.win_length))
        cut = wav.unfold(-1, self.win_length, self.hop_length)[:, :frames] * self.window  # B x T x win
        return torch.fft.rfft(cut, n=self.n_fft).abs().pow(2).transpose(1, 2)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        out = torch.log(torch.matmul(self.fbank, self.power(wav)) + self.eps)  # B x n_mels x T
        return out.transpose(1, 2) if self.time_first else out


class LogMelFrontend(LogMel):
    """SLICER's front end: :class:`LogMel` with the authors' settings as defaults (``centered`` framing),
    ``B x S -> B x n_mels x T`` with ``T = S // hop_length + 1``."""

    def __init__(self, sample_rate: int = 16000, n_fft: int = 1024, win_length: int = 1024,
                 hop_length: int = 160, n_mels: int = 64, f_min: float = 60.0, f_max: float = 7800.0,
                 eps: float = 1e-8, pad_mode: str = "reflect"):
        super().__init__(sample_rate, n_fft, win_length, hop_length, n_mels, f_min, f_max, eps,
                         framing="centered", pad_mode=pad_mode)


class RunningNorm(nn.Module):
    """Global (scalar) mean/std normalisation of log-mels, BYOL-A's ``RunningNorm``.

    While ``training`` and fewer than ``max_updates`` batches have been absorbed, :meth:`update` adds the batch's
    sum, sum of squares and count to float64 buffers (all-reduced over workers when torch.distributed is
    initialised, so every worker normalises identically); afterwards the statistics are frozen. The buffers
    are in the state dict, so a checkpoint (and a resumed run) normalises exactly as training did.
    """

    def __init__(self, max_updates: int = 1000, eps: float = 1e-5):
        super().__init__()
        self.max_updates, self.eps = max_updates, eps
        self.register_buffer("total", torch.zeros((), dtype=torch.float64))
        self.register_buffer("total_sq", torch.zeros((), dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, x: torch.Tensor, contribute: bool = True) -> None:
        """Absorb the statistics of ``x``; ``contribute=False`` (a worker's placeholder batch) still joins the
        all-reduce, with zeros. A batch counts towards ``max_updates`` when some worker contributed to it."""
        if int(self.updates) >= self.max_updates:
            return
        x = x.double()
        stats = torch.stack([x.sum(), x.pow(2).sum(), torch.tensor(float(x.numel()), dtype=torch.float64,
                                                                    device=x.device)])
        if not contribute:
            stats.zero_()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(stats)
        if float(stats[2]) == 0:
            return
        self.total += stats[0].to(self.total)
        self.total_sq += stats[1].to(self.total_sq)
        self.count += stats[2].to(self.count)
        self.updates += 1

    def mean_std(self):
        if float(self.count) == 0:
            return 0.0, 1.0
        mean = self.total / self.count
        var = (self.total_sq / self.count - mean * mean).clamp_min(0)
        return float(mean), float(var.sqrt()) + self.eps

    def forward(self, x: torch.Tensor, update: Optional[bool] = None, contribute: bool = True) -> torch.Tensor:
        """Normalise ``x``; first absorb its statistics when ``update`` (default: while training), see
        :meth:`update` for ``contribute``."""
        if update if update is not None else self.training:
            self.update(x, contribute=contribute)
        mean, std = self.mean_std()
        return (x - mean) / std
