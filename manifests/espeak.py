"""A small ctypes wrapper over libespeak-ng (as shipped by the pip package ``espeakng-loader``) that turns a
sentence into int16 audio plus time-aligned phone intervals. The library runs in synchronous mode
(``AUDIO_OUTPUT_SYNCHRONOUS``) with phoneme events enabled (``espeakINITIALIZE_PHONEME_EVENTS``); every
``espeakEVENT_PHONEME`` carries the phoneme mnemonic and its absolute sample position, so consecutive events
give phone intervals ``[start, end)`` at espeak's native 22050 Hz. :meth:`Synthesis.resample` converts audio
(soxr) and boundaries (scaled, rounded) to another rate, e.g. 16 kHz. Phone labels are espeak's mnemonics with
the stress marks removed; every pause phoneme (``_``, ``_:``, ``_!`` ...) and the audio before the first
phoneme are labelled :data:`SIL`. libespeak-ng keeps synthesis state in C statics (pitch-flutter phase,
automatic gain, echo buffer) and uses libc ``rand()`` for breathy voices, so the same sentence comes out
differently depending on what was synthesised before. To make every utterance depend only on its own
arguments, :class:`Espeak` dlopens a private copy of the library and reloads it (``dlclose`` + ``dlopen``,
well under a millisecond) before each synthesis, and reseeds both random generators.
"""
import atexit
import ctypes
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np

logger = logging.getLogger(__name__)

SIL = "sil"
NATIVE_SAMPLE_RATE = 22050

# speak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_INITIALIZE_DONT_EXIT = 0x8000
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_EVENT_LIST_TERMINATED = 0
_EVENT_PHONEME = 7
_PARAM_RATE = 1
_PARAM_VOLUME = 2
_PARAM_PITCH = 3
_PARAM_RANGE = 4
_ERRORS = {-1: "EE_INTERNAL_ERROR", 1: "EE_BUFFER_FULL", 2: "EE_NOT_FOUND"}

# characters espeak puts in front of a phoneme mnemonic to mark stress / syllabicity
_STRESS_MARKS = "',%="

RATE_RANGE = (80, 450)  # words per minute
PITCH_RANGE = (0, 99)  # base pitch, 50 = voice default
PITCH_RANGE_RANGE = (0, 99)  # intonation range, 50 = voice default, 0 = monotone


class EspeakError(RuntimeError):
    """libespeak-ng failed or was called with invalid arguments."""


class EspeakNotAvailable(EspeakError):
    """libespeak-ng (the ``espeakng-loader`` package) cannot be found or loaded."""


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # milliseconds
        ("sample", ctypes.c_int),  # absolute sample index since the start of espeak_Synth
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                  ctypes.POINTER(_Event))


def normalize_phone(mnemonic: str) -> str:
    """espeak phoneme mnemonic -> phone label: stress marks stripped, pauses (``_...``) -> :data:`SIL`."""
    label = mnemonic.strip().lstrip(_STRESS_MARKS)
    if not label or label.startswith("_"):
        return SIL
    return label


def phone_intervals(events: List[Tuple[str, int]], num_samples: int) -> List[Tuple[str, int, int]]:
    """Contiguous ``(label, start, end)`` intervals covering ``[0, num_samples)`` from ``(mnemonic, sample)``
    phoneme events: an event's phone lasts until the next event, the last one until the end of the audio,
    audio before the first event is :data:`SIL`; empty intervals are dropped and neighbouring intervals with
    the same label are kept apart only when both are phones (two ``sil`` in a row are merged)."""
    out: List[Tuple[str, int, int]] = []
    points = [(SIL, 0)] + [(normalize_phone(m), min(max(int(s), 0), num_samples)) for m, s in events]
    for i, (label, start) in enumerate(points):
        end = points[i + 1][1] if i + 1 < len(points) else num_samples
        if end <= start:
            continue
        if out and out[-1][0] == SIL and label == SIL and out[-1][2] == start:
            out[-1] = (SIL, out[-1][1], end)
        else:
            out.append((label, start, end))
    return out


@dataclass
class Synthesis:
    """One synthesised sentence: int16 mono ``audio`` at ``sample_rate`` and contiguous phone intervals
    ``(label, start, end)`` in samples covering the whole signal; ``events`` are the raw phoneme events
    ``(mnemonic, sample)`` at the native rate."""

    audio: np.ndarray
    sample_rate: int
    phones: List[Tuple[str, int, int]]
    events: List[Tuple[str, int]] = field(default_factory=list)

    @property
    def num_samples(self) -> int:
        return int(len(self.audio))

    def phone_sequence(self) -> List[str]:
        """Phone labels in order, silences removed."""
        return [p for p, _, _ in self.phones if p != SIL]

    def frame_labels(self, hop: int = 320) -> List[str]:
        """``num_samples // hop`` labels; frame ``i`` takes the phone at sample ``hop * i + hop // 2``."""
        n = self.num_samples // hop
        centres = np.arange(n, dtype=np.int64) * hop + hop // 2
        starts = np.array([s for _, s, _ in self.phones], dtype=np.int64)
        idx = np.searchsorted(starts, centres, side="right") - 1
        return [self.phones[i][0] for i in idx]

    def resample(self, sample_rate: int) -> "Synthesis":
        """Resample the audio with soxr (high quality; scaled down if it would clip) and scale the phone
        boundaries to the new rate."""
        if sample_rate == self.sample_rate:
            return self
        import soxr

        y = soxr.resample(self.audio.astype(np.float32), self.sample_rate, sample_rate, quality="HQ")
        peak = float(np.max(np.abs(y))) if len(y) else 0.0
        if peak > 32767:  # resampling overshoot of a full-scale signal: scale down rather than clip
            y = y * (32767 / peak)
        audio = np.clip(np.rint(y), -32768, 32767).astype(np.int16)
        n = len(audio)
        ratio = sample_rate / self.sample_rate

        def scale(x: int) -> int:
            return min(int(round(x * ratio)), n)

        phones = []
        for label, start, end in self.phones:
            s, e = scale(start), scale(end)
            if e > s:
                phones.append((label, s, e))
        if phones:  # keep the intervals contiguous over the new length
            phones[0] = (phones[0][0], 0, phones[0][2])
            phones[-1] = (phones[-1][0], phones[-1][1], n)
        return Synthesis(audio=audio, sample_rate=sample_rate, phones=phones, events=list(self.events))


def _locate_library(library_path: Optional[str], data_path: Optional[str]) -> Tuple[str, str]:
    if library_path is None or data_path is None:
        try:
            import espeakng_loader
        except ImportError as e:
            raise EspeakNotAvailable(
                "libespeak-ng not found: install the pip package 'espeakng-loader' "
                "(pip install espeakng-loader==0.2.4, or pip install -e .[corpus]), "
                "or pass library_path= and data_path= explicitly") from e
        try:
            library_path = library_path or espeakng_loader.get_library_path()
            data_path = data_path or espeakng_loader.get_data_path()
        except Exception as e:  # the package raises RuntimeError when its data folder is missing
            raise EspeakNotAvailable(f"espeakng-loader is installed but incomplete: {e}; reinstall it "
                                     "(pip install --force-reinstall espeakng-loader==0.2.4)") from e
    if not os.path.isfile(library_path):
        raise EspeakNotAvailable(f"libespeak-ng shared library not found at {library_path}; "
                                 "install the pip package 'espeakng-loader'")
    if not os.path.isdir(data_path):
        raise EspeakNotAvailable(f"espeak-ng data folder not found at {data_path}; "
                                 "install the pip package 'espeakng-loader'")
    return library_path, data_path


class Espeak:
    """A libespeak-ng instance (a private copy of the shared library, so its C state is ours alone).

    Not thread-safe by itself; calls are serialised with a lock. With ``fresh_state=True`` (default) the
    library is reloaded before every synthesis, so the output depends only on the arguments.
    """

    def __init__(self, library_path: Optional[str] = None, data_path: Optional[str] = None,
                 fresh_state: bool = True, rand_seed: int = 0):
        src, self.data_path = _locate_library(library_path, data_path)
        self._tmpdir = tempfile.mkdtemp(prefix="espeak-ng-")
        atexit.register(shutil.rmtree, self._tmpdir, True)
        self._lib_path = os.path.join(self._tmpdir, os.path.basename(src))
        shutil.copyfile(src, self._lib_path)
        self.fresh_state = fresh_state
        self.rand_seed = int(rand_seed)
        self._lock = threading.Lock()
        self._lib = None
        self._dirty = False
        self._closed = False
        self._audio: List[bytes] = []
        self._events: List[Tuple[str, int]] = []
        self._callback = _SynthCallback(self._on_synth)  # keep a reference: C holds the pointer
        try:
            self._libc = ctypes.CDLL(None)
        except OSError:
            self._libc = None
        try:
            self._load()
        except EspeakNotAvailable as e:  # e.g. a temp dir mounted noexec: fall back to the installed file
            logger.warning("cannot load a private copy of libespeak-ng (%s); using %s itself", e, src)
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._lib_path = src
            self._load()
        self.version = self._version()

    # -- library life cycle -------------------------------------------------------------------------
    def _load(self) -> None:
        try:
            lib = ctypes.CDLL(self._lib_path)
        except OSError as e:
            raise EspeakNotAvailable(f"cannot load libespeak-ng from {self._lib_path}: {e}; "
                                     "reinstall the pip package 'espeakng-loader'") from e
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Terminate.restype = ctypes.c_int
        lib.espeak_Info.argtypes = [ctypes.c_void_p]
        lib.espeak_Info.restype = ctypes.c_char_p
        options = _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_DONT_EXIT
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, self.data_path.encode(), options)
        if rate <= 0:
            raise EspeakError(f"espeak_Initialize failed (returned {rate}) with data path {self.data_path}")
        if rate != NATIVE_SAMPLE_RATE:
            logger.warning("libespeak-ng reports %d Hz, expected %d Hz", rate, NATIVE_SAMPLE_RATE)
        self.native_rate = rate
        lib.espeak_SetSynthCallback(self._callback)
        self._lib = lib
        self._dirty = False

    def _unload(self) -> None:
        if self._lib is None:
            return
        import _ctypes

        self._lib.espeak_Terminate()
        _ctypes.dlclose(self._lib._handle)
        self._lib = None

    def reset(self) -> None:
        """Reload the library: all of its C state goes back to what a fresh process has."""
        with self._lock:
            self._ensure_open()
            self._unload()
            self._load()

    def _ensure_open(self) -> None:
        if self._closed:
            raise EspeakError("this Espeak instance is closed")

    def close(self) -> None:
        """Unload the library and delete its private copy; the instance cannot synthesise afterwards."""
        with self._lock:
            self._unload()
            self._closed = True
            shutil.rmtree(self._tmpdir, ignore_errors=True)

    def _version(self) -> str:
        v = self._lib.espeak_Info(None)
        return v.decode(errors="replace") if v else "unknown"

    # -- synthesis ------------------------------------------------------------------------------------
    def _on_synth(self, wav, numsamples, events) -> int:
        if wav and numsamples > 0:
            self._audio.append(ctypes.string_at(wav, numsamples * 2))
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            ev = events[i]
            if ev.type == _EVENT_PHONEME:
                name = bytes(ev.id.string).split(b"\0", 1)[0].decode("ascii", errors="replace")
                self._events.append((name, int(ev.sample)))
            i += 1
        return 0

    def _check(self, rc: int, what: str) -> None:
        if rc != 0:
            raise EspeakError(f"{what} failed: {_ERRORS.get(rc, rc)}")

    def synthesize(self, text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50,
                   pitch_range: int = 50, volume: int = 100) -> Synthesis:
        """Synthesise ``text`` with ``voice`` (language + optional variant, e.g. ``en-us+m3``, ``en+f2``).

        ``rate`` in words per minute (80-450), ``pitch`` and ``pitch_range`` 0-99 (50 = the voice's own);
        returns a :class:`Synthesis` at the native 22050 Hz.
        """
        for name, value, (lo, hi) in (("rate", rate, RATE_RANGE), ("pitch", pitch, PITCH_RANGE),
                                      ("pitch_range", pitch_range, PITCH_RANGE_RANGE),
                                      ("volume", volume, (0, 200))):
            if not lo <= int(value) <= hi:
                raise EspeakError(f"{name}={value} outside [{lo}, {hi}]")
        if not text.strip():
            raise EspeakError("cannot synthesise an empty text")
        with self._lock:
            self._ensure_open()
            if self.fresh_state and self._dirty:
                self._unload()
                self._load()
            lib = self._lib
            rc = lib.espeak_SetVoiceByName(voice.encode())
            if rc != 0:
                raise EspeakError(f"unknown espeak voice {voice!r} ({_ERRORS.get(rc, rc)}); names look like "
                                  f"'en-us', 'en-us+m3', 'en+f2' (voices in {self.data_path}/voices/!v)")
            self._check(lib.espeak_SetParameter(_PARAM_RATE, int(rate), 0), "espeak_SetParameter(rate)")
            self._check(lib.espeak_SetParameter(_PARAM_PITCH, int(pitch), 0), "espeak_SetParameter(pitch)")
            self._check(lib.espeak_SetParameter(_PARAM_RANGE, int(pitch_range), 0),
                        "espeak_SetParameter(range)")
            self._check(lib.espeak_SetParameter(_PARAM_VOLUME, int(volume), 0), "espeak_SetParameter(volume)")
            if hasattr(lib, "espeak_ng_SetRandSeed"):
                lib.espeak_ng_SetRandSeed(ctypes.c_long(self.rand_seed))
            if self._libc is not None:  # breathy voices call libc rand()
                self._libc.srand(ctypes.c_uint(self.rand_seed))
            self._audio, self._events = [], []
            data = text.encode("utf-8")
            self._dirty = True
            rc = lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            self._check(rc, f"espeak_Synth({text[:40]!r})")
            audio = np.frombuffer(b"".join(self._audio), dtype=np.int16).copy()
            events = list(self._events)
        if len(audio) == 0:
            raise EspeakError(f"espeak produced no audio for {text!r} with voice {voice!r}")
        return Synthesis(audio=audio, sample_rate=self.native_rate,
                         phones=phone_intervals(events, len(audio)), events=events)


_default: Optional[Espeak] = None
_default_lock = threading.Lock()


def get_engine() -> Espeak:
    """The process-wide default :class:`Espeak` instance (created on first use)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Espeak()
        return _default


def synthesize(text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50, pitch_range: int = 50,
               sample_rate: int = 16000) -> Synthesis:
    """Synthesise ``text`` with the default engine and resample it (and its phone boundaries) to
    ``sample_rate``."""
    return get_engine().synthesize(text, voice=voice, rate=rate, pitch=pitch,
                                   pitch_range=pitch_range).resample(sample_rate)
