"""Log-mel front end and a running mean/std normaliser whose statistics live in the checkpoint.

Used by SLICER (Seth, Ghosh, Umesh, Manocha; "SLICER: Learning universal audio representations using
low-resource self-supervised pre-training", ICASSP 2023, arXiv 2211.01519), whose input pipeline is BYOL-A's:
64-bin log-mel, n_fft 1024, 25 ms window, hop 160 (10 ms), 60-7800 Hz at 16 kHz, then a normalisation with
statistics gathered over the first part of training. The mel filterbank comes from librosa (Slaney mel
scale, area-normalised, as torchaudio/nnAudio in BYOL-A use a close variant) and is kept as a torch buffer, so
the front end runs on any device and in a batch. Registers nothing.
"""
import logging
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn

logger = logging.getLogger(__name__)


class LogMelFrontend(nn.Module):
    """Waveform ``B x S`` -> log-mel ``B x n_mels x T`` with ``T = S // hop_length + 1`` (centred STFT).

    Args:
        sample_rate, n_fft, win_length, hop_length, n_mels, f_min, f_max: STFT / filterbank settings.
        eps: added to the mel power before the log.
    """

    def __init__(self, sample_rate: int = 16000, n_fft: int = 1024, win_length: int = 400,
                 hop_length: int = 160, n_mels: int = 64, f_min: float = 60.0, f_max: float = 7800.0,
                 eps: float = 1e-8):
        super().__init__()
        import librosa

        if win_length > n_fft:
            raise ValueError(f"win_length={win_length} must not exceed n_fft={n_fft}")
        self.n_fft, self.win_length, self.hop_length, self.n_mels, self.eps = n_fft, win_length, hop_length, \
            n_mels, eps
        fb = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=f_min, fmax=f_max)
        self.register_buffer("fbank", torch.from_numpy(fb).float(), persistent=False)  # n_mels x (n_fft/2+1)
        self.register_buffer("window", torch.hann_window(win_length), persistent=False)

    def num_frames(self, num_samples: torch.Tensor) -> torch.Tensor:
        return num_samples // self.hop_length + 1

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(wav.float(), self.n_fft, hop_length=self.hop_length, win_length=self.win_length,
                          window=self.window, center=True, return_complex=True)  # B x (n_fft/2+1) x T
        power = spec.real.pow(2) + spec.imag.pow(2)
        return torch.log(torch.matmul(self.fbank, power) + self.eps)


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
