"""The one waveform normalisation (fairseq_plugins.data.audio.normalize_waveform), used by the multi-view
dataset, the LASER model, WavLM and the probes' upstream: equal to fairseq's own dataset normalisation and to
per-utterance layer norm over the valid samples of a right-padded batch (the probes' former inline code)."""
import torch
import torch.nn.functional as F
from fairseq.data.audio.raw_audio_dataset import RawAudioDataset

from fairseq_plugins.data.audio import normalize_waveform
from fairseq_plugins.modules import wavlm


def test_matches_fairseq_dataset_normalize():
    wav = torch.randn(3000, generator=torch.Generator().manual_seed(0)) * 0.2 + 0.05
    ds = RawAudioDataset(sample_rate=16000, normalize=True)
    torch.testing.assert_close(normalize_waveform(wav), ds.postprocess(wav, 16000))


def test_padded_batch_matches_per_utterance_layer_norm():
    g = torch.Generator().manual_seed(1)
    wavs = torch.randn(3, 1000, generator=g) * torch.tensor([[0.1], [1.0], [3.0]]) + 0.5
    lengths = [1000, 640, 17]
    mask = torch.arange(1000)[None, :] >= torch.tensor(lengths)[:, None]
    out = normalize_waveform(wavs, mask)
    for b, n in enumerate(lengths):
        torch.testing.assert_close(out[b, :n], F.layer_norm(wavs[b, :n], (n,)), rtol=1e-4, atol=1e-5)
        assert (out[b, n:] == 0).all()
    assert wavlm.normalize_waveform is normalize_waveform  # one implementation, re-exported
