"""The three log-mel pipelines (SLICER front end, simsiam_recon target, probes' logmel baseline) are configurations
of the one ``LogMel`` class: each gives what its former implementation gave (the former code is frozen below, as
it was at commit 9563a03), and the SLICER setting matches the authors' librosa pipeline."""
import librosa
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fairseq_plugins.evaluate.upstream import LogMelUpstream
from fairseq_plugins.modules.heads import LogMelTarget
from fairseq_plugins.modules.logmel import LogMel, LogMelFrontend


def _wav(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / 16000.0
    return (0.3 * torch.sin(2 * np.pi * 440 * t) + 0.05 * torch.randn(n, generator=g)).float()


def _old_frontend(wav, n_fft, win, hop, n_mels, fmin, fmax, eps=1e-8):
    fb = torch.from_numpy(librosa.filters.mel(sr=16000, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)).float()
    spec = torch.stft(wav.float(), n_fft, hop_length=hop, win_length=win, window=torch.hann_window(win),
                      center=True, return_complex=True)
    return torch.log(torch.matmul(fb, spec.real.pow(2) + spec.imag.pow(2)) + eps)


def _old_target(wav, n_mels=80, win=400, hop=320, eps=1e-5):
    n_fft = 1 << (win - 1).bit_length()
    fb = torch.from_numpy(librosa.filters.mel(sr=16000, n_fft=n_fft, n_mels=n_mels, fmin=0.0, fmax=None)).float()
    if wav.size(-1) < win:
        return wav.new_zeros(wav.size(0), 0, n_mels)
    frames = wav.unfold(-1, win, hop) * torch.hann_window(win, periodic=True)
    spec = torch.fft.rfft(frames, n=n_fft).abs().pow(2)
    return torch.log(spec @ fb.t() + eps)


def _old_upstream(wav, n_mels=80, win=400, hop=320):
    fb = torch.from_numpy(librosa.filters.mel(sr=16000, n_fft=win, n_mels=n_mels)).float()
    n_frames = wav.numel() // hop
    x = F.pad(wav.float().view(1, -1), ((win - hop) // 2, win)).view(-1)
    frames = x.unfold(0, win, hop)[:n_frames] * torch.hann_window(win)
    power = torch.fft.rfft(frames, dim=-1).abs().pow(2)
    return torch.log(power @ fb.t() + 1e-6)


@pytest.mark.parametrize("win", [400, 1024])
def test_slicer_frontend_equals_former_implementation(win):
    wav = torch.stack([_wav(15200, 0), _wav(15200, 1)])
    new = LogMelFrontend(16000, 1024, win, 160, 64, 60.0, 7800.0)(wav)
    old = _old_frontend(wav, 1024, win, 160, 64, 60.0, 7800.0)
    assert new.shape == old.shape == (2, 64, 15200 // 160 + 1)
    assert torch.equal(new, old)


@pytest.mark.parametrize("n", [399, 400, 16000, 16123])
def test_recon_target_equals_former_implementation(n):
    wav = torch.stack([_wav(n, 2), _wav(n, 3)])
    new, old = LogMelTarget()(wav), _old_target(wav)
    assert new.shape == old.shape == (2, 0 if n < 400 else 1 + (n - 400) // 320, 80)
    torch.testing.assert_close(new, old, atol=2e-5, rtol=0)


@pytest.mark.parametrize("n", [16000, 16123])
def test_logmel_upstream_equals_former_implementation(n):
    wav = _wav(n, 4)
    new, old = LogMelUpstream().extract(wav)[0], _old_upstream(wav)
    assert new.shape == old.shape == (n // 320, 80)
    torch.testing.assert_close(new, old, atol=2e-5, rtol=0)


def test_logmel_upstream_shorter_than_a_frame():
    # the former code raised inside torch.fft for fewer than 320 samples; now: zero frames
    assert LogMelUpstream().extract(_wav(300))[0].shape == (0, 80)


def test_authors_slicer_setting_matches_librosa_pipeline():
    """LAPE src/utils/utils.py MelSpectrogramLibrosa + extract_log_mel_spectrogram (librosa 0.8.1: stft default
    window = n_fft, centred, reflect padding)."""
    wav = _wav(15200, 5).numpy()
    x = librosa.stft(wav, n_fft=1024, hop_length=160, win_length=1024, center=True, pad_mode="reflect")
    fb = librosa.filters.mel(sr=16000, n_fft=1024, n_mels=64, fmin=60, fmax=7800)
    ref = np.log(fb @ (np.abs(x) ** 2) + np.finfo(np.float32).eps)
    ours = LogMel(eps=float(np.finfo(np.float32).eps))(torch.from_numpy(wav)[None])[0].numpy()
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=1e-3)
    # the former 400-sample window is a different pipeline, not a rounding difference
    other = LogMel(win_length=400)(torch.from_numpy(wav)[None])[0].numpy()
    assert np.abs(other - ref).max() > 0.1


def test_framings_frame_counts_and_bad_settings():
    for framing, expect in [("centered", 16000 // 160 + 1), ("valid", 1 + (16000 - 1024) // 160),
                            ("label", 16000 // 160)]:
        m = LogMel(framing=framing)
        assert m(_wav(16000)[None]).shape == (1, 64, expect) and m.num_frames(16000) == expect
        assert int(m.num_frames(torch.tensor([16000]))[0]) == expect
    with pytest.raises(ValueError, match="framing"):
        LogMel(framing="middle")
    with pytest.raises(ValueError, match="win_length"):
        LogMel(n_fft=512, win_length=1024)
