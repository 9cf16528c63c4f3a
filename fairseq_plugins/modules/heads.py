"""Small heads of the ``simsiam_recon`` model: SimSiam's projector and predictor (Chen & He,
"Exploring Simple Siamese Representation Learning", CVPR 2021, arXiv 2011.10566), a frame reconstruction head,
and the log-mel reconstruction target (one configuration of :class:`fairseq_plugins.modules.logmel.LogMel`).
Used by ``simsiam_recon`` (positive-sample contrast + masked reconstruction, Zhang et al., Journal on
Communications 2022). Nothing is registered here.
"""
import logging
from typing import Optional

import torch
import torch.nn as nn

from fairseq_plugins.modules.logmel import LogMel

logger = logging.getLogger(__name__)


class ProjectorMLP(nn.Module):
    """SimSiam projector: ``num_layers`` linear layers, each followed by BatchNorm, ReLU between them, and a
    final BatchNorm without affine parameters (as in the SimSiam code). ``N x in_dim -> N x out_dim``."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 3):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers={num_layers}: need at least one layer")
        layers = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers += [nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim),
                       nn.ReLU(inplace=True)]
            dim = hidden_dim
        layers += [nn.Linear(dim, out_dim, bias=False), nn.BatchNorm1d(out_dim, affine=False)]
        self.net = nn.Sequential(*layers)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PredictorMLP(nn.Module):
    """SimSiam predictor: bottleneck MLP ``dim -> hidden_dim (BN, ReLU) -> dim``. ``N x dim -> N x dim``."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ReconstructionHead(nn.Module):
    """Frame-wise regression head ``B x T x in_dim -> B x T x out_dim``: one linear layer, or
    ``Linear -> GELU -> Linear`` when ``hidden_dim > 0``."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 0):
        super().__init__()
        if hidden_dim > 0:
            self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))
        else:
            self.net = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LogMelTarget(LogMel):
    """``log(mel + eps)`` of a waveform, framed like a wav2vec2/HuBERT conv stack: :class:`LogMel` with
    ``framing="valid"``.

    Frame ``t`` covers samples ``[t*hop, t*hop + win)`` (no centring, no padding), so with ``win`` = the
    conv stack's receptive field (400) and ``hop`` = its stride (320) there is exactly one target per encoder
    frame: ``T = 1 + (L - win) // hop``. Hann window, zero-padded to ``n_fft`` (default: the next power of two),
    power spectrum, librosa's (Slaney) mel filterbank kept as a non-persistent buffer (rebuilt from the config,
    never stored in checkpoints). ``B x L -> B x T x n_mels``, computed without gradient.
    """

    def __init__(self, sample_rate: int = 16000, n_mels: int = 80, win_length: int = 400,
                 hop_length: int = 320, n_fft: Optional[int] = None, eps: float = 1e-5, f_min: float = 0.0,
                 f_max: Optional[float] = None):
        n_fft = n_fft or 1 << (int(win_length) - 1).bit_length()
        if n_fft < win_length:
            raise ValueError(f"n_fft={n_fft} is shorter than win_length={win_length}")
        super().__init__(sample_rate, n_fft, int(win_length), int(hop_length), n_mels, f_min, f_max, eps,
                         framing="valid", time_first=True)

    @torch.no_grad()
    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return super().forward(wav)
