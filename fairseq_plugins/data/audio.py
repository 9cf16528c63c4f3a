"""The one audio reader of the plugin (every task and the evaluation probes) and the one waveform normalisation.

:func:`read_audio` returns a 1-D float32 waveform and refuses, with :class:`AudioError`, every file that would
otherwise be trained on silently wrong: unreadable, 0 samples, a sample rate other than the task's, more than
one channel (unless downmixing was asked for), a sample count that differs from the manifest's, a WAV whose
header promises more data than the file holds (truncated copy), and NaN / Inf samples. The message names the
manifest and its line (when the file came from one), the path, and what was expected and found. Downmixing
stereo is a choice, so it is off by default (``downmix=True``, the tasks' ``downmix_stereo`` field) and logged
when it acts. Resampling is a choice too (``resample=True``, soxr "HQ", used by the corpus builders that
convert source recordings to 16 kHz, never by the training tasks), and so is reading headerless PCM
(``raw=(rate, subtype)``, e.g. codec2's 8 kHz signed 16-bit ``.raw`` files).

:class:`ManifestAudioDataset` plugs the reader into fairseq's :class:`~fairseq.data.FileAudioDataset`
(whose own ``__getitem__`` averages channels silently, names no file on a wrong rate and accepts wrong counts).

:func:`normalize_waveform` is per-utterance zero mean / unit variance (fairseq's task ``normalize``, WavLM
Large's ``normalize``): ``B x S -> B x S`` or ``S -> S``, over the valid samples when a padding mask is given.
"""
import logging
import os
import re
from types import SimpleNamespace
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

_DATA_CHUNK = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.M)
_BLOCK_ALIGN = re.compile(r"Block Align\s*:\s*(\d+)")
_STREAMING_SIZES = (0, 0xFFFFFFFF, 0x7FFFFFFF)  # placeholders of writers that could not seek back
_downmix_logged = set()


class AudioError(ValueError):
    """An audio file cannot be used as it is; the message names the manifest line, the file and the problem."""


def where(manifest: Optional[str] = None, line: Optional[int] = None) -> str:
    """``"manifest:line: "`` (or ``""``) for error messages."""
    if not manifest:
        return ""
    return f"{manifest}:{line}: " if line else f"{manifest}: "


def truncation(info) -> Optional[str]:
    """For a WAV whose data chunk is shorter than its header says: ``"its header says N samples, the file holds
    M"``; None otherwise (libsndfile itself silently reads the shorter length)."""
    extra = getattr(info, "extra_info", "") or ""
    m = _DATA_CHUNK.search(extra)
    if not m:
        return None
    declared, actual = int(m.group(1)), int(m.group(2))
    if declared in _STREAMING_SIZES or declared <= actual:
        return None
    b = _BLOCK_ALIGN.search(extra)
    align = int(b.group(1)) if b else 1
    return f"its header says {declared // align} samples, the file holds {actual // align}"


def _raw_info(path: str, raw: Tuple[int, str]):
    """``sf.info``'s fields for a headerless mono little-endian PCM file (libsndfile cannot guess them)."""
    import soundfile as sf

    rate, subtype = raw
    with sf.SoundFile(path, samplerate=rate, channels=1, subtype=subtype, format="RAW", endian="LITTLE") as f:
        frames = f.frames
    width = {"PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8}.get(subtype, 1)
    extra = os.path.getsize(path) % width
    return SimpleNamespace(frames=frames, samplerate=rate, channels=1, extra_info="",
                           raw_kwargs=dict(samplerate=rate, channels=1, subtype=subtype, format="RAW",
                                           endian="LITTLE"),
                           partial=f"{extra} trailing bytes do not make a whole {subtype} sample" if extra else None)


def read_audio(path: str, sample_rate: int, expected_samples: Optional[int] = None,
               manifest: Optional[str] = None, line: Optional[int] = None, downmix: bool = False,
               start: int = 0, frames: int = -1, resample: bool = False,
               raw: Optional[Tuple[int, str]] = None) -> np.ndarray:
    """Read ``path`` (or ``frames`` samples from ``start``) as a 1-D float32 array, checked.

    Args:
        sample_rate: the rate the caller needs; another rate raises (resample the corpus first).
        expected_samples: the manifest's sample count; a different file length raises.
        manifest / line: where the path came from, for the message.
        downmix: average the channels of a multi-channel file (logged) instead of raising.
        resample: convert a file at another rate to ``sample_rate`` (soxr "HQ") instead of raising;
            ``expected_samples``, ``start`` and ``frames`` then count the file's own samples.
        raw: ``(rate, subtype)`` of a headerless mono little-endian PCM file, e.g. ``(8000, "PCM_16")``.
    """
    import soundfile as sf

    at = where(manifest, line)
    try:
        info = _raw_info(path, raw) if raw is not None else sf.info(path)
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError / TypeError for broken files
        if not os.path.exists(path):
            raise AudioError(f"{at}{path}: file not found") from None
        raise AudioError(f"{at}{path}: unreadable audio: {str(e).strip() or type(e).__name__}") from None
    total = int(info.frames)
    if total <= 0:
        said = f" (the manifest says {expected_samples})" if expected_samples is not None else ""
        raise AudioError(f"{at}{path}: 0 samples (empty file): expected at least 1{said}")
    if getattr(info, "partial", None):
        raise AudioError(f"{at}{path}: truncated: {info.partial} (an interrupted copy, or not {raw})")
    if int(info.samplerate) != int(sample_rate) and not resample:
        raise AudioError(f"{at}{path}: sample rate {info.samplerate} Hz, expected {sample_rate} Hz "
                         f"(resample the corpus and rebuild the manifest)")
    if info.channels != 1 and not downmix:
        raise AudioError(f"{at}{path}: {info.channels} channels, expected mono (convert the file, or set "
                         f"task.downmix_stereo=true to average the channels)")
    truncated = truncation(info)
    if truncated:
        raise AudioError(f"{at}{path}: truncated: {truncated} (an interrupted copy?)")
    if expected_samples is not None and int(expected_samples) != total:
        raise AudioError(f"{at}{path}: the manifest says {expected_samples} samples, the file has {total} "
                         f"(the file changed after the manifest was written: rebuild it with "
                         f"python -m manifests.build_manifest)")
    try:
        wav, _ = sf.read(path, start=start, frames=frames, dtype="float32", always_2d=True,
                         **getattr(info, "raw_kwargs", {}))
    except Exception as e:
        raise AudioError(f"{at}{path}: decoding failed: {str(e).strip() or type(e).__name__}") from None
    if frames < 0 and wav.shape[0] != total - start:
        raise AudioError(f"{at}{path}: decoded {wav.shape[0]} samples, the header says {total - start}")
    if wav.shape[1] != 1:
        key = os.path.dirname(manifest or path)
        if key not in _downmix_logged:
            _downmix_logged.add(key)
            logger.warning("%s%s: %d channels averaged to mono (downmix_stereo=true; logged once per folder)",
                           at, path, wav.shape[1])
        wav = wav.mean(axis=1, keepdims=True)
    wav = wav[:, 0]
    bad = ~np.isfinite(wav)
    if bad.any():
        first = int(np.argmax(bad))
        raise AudioError(f"{at}{path}: {int(bad.sum())} non-finite samples (NaN/Inf), the first at sample "
                         f"{start + first}: expected finite audio")
    if int(info.samplerate) != int(sample_rate):  # resample=True (checked above)
        import soxr

        wav = soxr.resample(wav, int(info.samplerate), int(sample_rate), quality="HQ").astype(np.float32)
    return np.ascontiguousarray(wav)


def normalize_waveform(source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None,
                       eps: float = 1e-5) -> torch.Tensor:
    """Per-utterance zero mean / unit variance over the valid samples (fairseq's ``F.layer_norm(wav,
    wav.shape)`` of the task option ``normalize``, and WavLM Large's). ``... x S -> ... x S``; padded samples
    (``padding_mask`` True) become 0."""
    if padding_mask is None:
        return F.layer_norm(source, source.shape[-1:], eps=eps)
    valid = (~padding_mask).to(source.dtype)
    count = valid.sum(-1, keepdim=True).clamp(min=1)
    mean = (source * valid).sum(-1, keepdim=True) / count
    var = (((source - mean) * valid) ** 2).sum(-1, keepdim=True) / count
    return (source - mean) / torch.sqrt(var + eps) * valid


class ManifestAudioDataset:
    """Mixin for subclasses of fairseq's ``FileAudioDataset``: reads item ``index`` with :func:`read_audio`.

    Call :meth:`init_reader` at the end of ``__init__``; it records the manifest line of every kept entry (fairseq
    drops the entries below ``min_sample_size`` and renumbers the rest). ``source`` is the raw mono waveform
    (``S`` float); normalisation, if any, is the subclass's business.
    """

    def init_reader(self, manifest_path: str, downmix: bool = False) -> None:
        self.manifest_path = os.path.abspath(manifest_path)
        self.downmix = bool(downmix)
        skipped = set(self.skipped_indices)
        total = len(self.sizes) + len(skipped)
        # entry i of the file (0-based, blank lines aside) is on line i + 2; fairseq skips blank lines nowhere
        self.manifest_lines = np.array([i + 2 for i in range(total) if i not in skipped], dtype=np.int64)

    def audio_path(self, index: int) -> str:
        fn = self.fnames[index]
        fn = fn if isinstance(self.fnames, list) else fn.as_py()
        return os.path.join(self.root_dir, self.text_compressor.decompress(fn))

    def read(self, index: int) -> np.ndarray:
        return read_audio(self.audio_path(index), self.sample_rate, expected_samples=int(self.sizes[index]),
                          manifest=self.manifest_path, line=int(self.manifest_lines[index]), downmix=self.downmix)

    def __getitem__(self, index: int):
        return {"id": index, "source": torch.from_numpy(self.read(index))}
