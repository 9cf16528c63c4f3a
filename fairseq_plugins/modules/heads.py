"""Small heads shared by the plugin's self-supervised models: SimSiam's projector and predictor (Chen & He,
"Exploring Simple Siamese Representation Learning", CVPR 2021, arXiv 2011.10566), a frame reconstruction head,
and a log-mel target computed in torch from librosa's mel filterbank. First used by ``simsiam_recon``
(positive-sample contrast + masked reconstruction, Zhang et al., Journal on Communications 2022); MGF's
frame-scale reconstruction can reuse the last two. Nothing is registered here.
"""
import logging
from typing import Optional

import torch
import torch.nn as nn

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


class LogMelTarget(nn.Module):
    """``log(mel + eps)`` of a waveform, framed like a wav2vec2/HuBERT conv stack.

    Frame ``t`` covers samples ``[t*hop, t*hop + win)`` (no centring, no padding), so with ``win`` = the
    conv stack's receptive field (400) and ``hop`` = its stride (320) there is exactly one target per encoder
    frame: ``T = 1 + (L - win) // hop``. Hann window, zero-padded to ``n_fft``, power spectrum, librosa's
    (Slaney) mel filterbank kept as a non-persistent buffer (rebuilt from the config, never stored in
    checkpoints). ``B x L -> B x T x n_mels``, computed without gradient.
    """

    def __init__(self, sample_rate: int = 16000, n_mels: int = 80, win_length: int = 400,
                 hop_length: int = 320, n_fft: Optional[int] = None, eps: float = 1e-5, f_min: float = 0.0,
                 f_max: Optional[float] = None):
        super().__init__()
        import librosa

        n_fft = n_fft or 1 << (int(win_length) - 1).bit_length()
        if n_fft < win_length:
            raise ValueError(f"n_fft={n_fft} is shorter than win_length={win_length}")
        fb = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=f_min, fmax=f_max)
        self.register_buffer("mel_fb", torch.from_numpy(fb).float(), persistent=False)  # n_mels x (n_fft/2+1)
        self.register_buffer("window", torch.hann_window(win_length, periodic=True), persistent=False)
        self.win_length, self.hop_length, self.n_fft, self.eps = int(win_length), int(hop_length), n_fft, eps
        self.n_mels = n_mels

    def num_frames(self, num_samples: int) -> int:
        return 0 if num_samples < self.win_length else 1 + (num_samples - self.win_length) // self.hop_length

    @torch.no_grad()
    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        wav = wav.float()
        if wav.size(-1) < self.win_length:
            return wav.new_zeros(wav.size(0), 0, self.n_mels)
        frames = wav.unfold(-1, self.win_length, self.hop_length) * self.window  # B x T x win
        spec = torch.fft.rfft(frames, n=self.n_fft).abs().pow(2)  # B x T x (n_fft/2+1)
        return torch.log(spec @ self.mel_fb.t() + self.eps)
