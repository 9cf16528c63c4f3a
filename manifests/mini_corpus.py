"""Builds a seeded, fully offline mini speech corpus with time-aligned phone labels, speaker labels, a
speaker-verification trial list and procedural background noise. Sentences come from a small built-in English
grammar (a few hundred words, no downloads); each speaker is an espeak-ng voice (accent + voice variant) with
its own speaking rate, pitch, pitch range and volume; audio is synthesised with libespeak-ng (pip package
``espeakng-loader``, see :mod:`manifests.espeak`), resampled to 16 kHz and padded with a little digital
silence. Train and valid share speakers (valid is about 10% of their utterances); test holds out about 25% of
the speakers, which is what speaker verification needs. Everything (audio bytes, side files, trial list,
noise, ``corpus.json``) is a pure function of the arguments: the same seed gives byte-identical outputs on the
same machine, and nothing records times or absolute paths except the manifests' first line (their root).

Label conventions: ``{split}.phn`` is the phone sequence without silences; ``{split}.phn50`` has one label per
20 ms frame (frame ``i`` covers samples ``[320 i, 320 i + 320)`` and takes the phone containing sample
``320 i + 160``; ``num_samples // 320`` frames), where silence (espeak pauses and the padding) is ``sil``.
So ``dict.phn.txt`` has no ``sil`` and ``dict.phn50.txt`` has it. Phones are espeak-ng's English phoneme
mnemonics without stress marks (e.g. ``D @2 k w I k``). ``test.trials`` lines are ``label utt_a utt_b`` (1 =
same speaker), balanced. Noise: ``noise/{kind}_{i:03d}.wav`` (1-2 s, 16 kHz) listed in ``manifest/noise.tsv``
with line-parallel kinds in ``manifest/noise.kind``: the procedural kinds of :mod:`fairseq_plugins.data.noise` plus
``tts_babble`` (five train utterances mixed). Run ``python -m manifests.mini_corpus --help``.
"""
import argparse
import itertools
import json
import logging
import os
import shutil
import sys
import time
import wave
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from fairseq_plugins.compat import cli_logging
from fairseq_plugins.data.manifest_io import words_to_letters, write_dictionary, write_lines, write_manifest
from manifests.trials import make_trials

logger = logging.getLogger(__name__)

CORPUS_VERSION = 1
SAMPLE_RATE = 16000
FRAME_HOP = 320  # 50 Hz labels
SPLITS = ("train", "valid", "test")
SIL = "sil"
_OWN_ENTRIES = {"audio", "noise", "manifest", "speakers.txt", "corpus.json"}

# ----------------------------------------------------------------------------------------------------
# speakers: espeak-ng accent x voice variant x prosody
ACCENTS = ("en-us", "en", "en-gb-x-rp", "en-us-nyc", "en-gb-scotland", "en-029", "en-gb-x-gbclan",
           "en-gb-x-gbcwmd")
MALE_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "Alex", "Andy", "Denis", "Diogo", "Gene", "Lee", "Mike",
    "antonio", "ed", "grandpa", "gustave", "ian", "iven", "john", "michel", "miguel", "norbert", "pablo",
    "paul", "quincy", "robert", "sandro", "travis", "victor", "klatt3", "klatt4", "edward", "david")
FEMALE_VARIANTS = ("f1", "f2", "f3", "f4", "f5", "Alicia", "Andrea", "Annie", "anika", "aunty", "belinda",
                   "grandma", "linda", "steph", "steph2", "shelby", "whisperf")
RATE_WPM = (135, 205)
PITCH = (30, 70)
PITCH_RANGE = (25, 80)
VOLUME = (50, 90)

# ----------------------------------------------------------------------------------------------------
# built-in vocabulary (letters only, so the letter dictionary is A-Z plus the word boundary "|")
_NOUNS = """
apple baby bag ball banana basket bed bell bicycle bird boat book bottle bowl box boy bread brother bus
cake camera candle car cat chair cheese chicken child city clock coat computer cookie cow cup desk doctor
dog door dress duck egg elephant farmer flower fork friend frog garden girl glass goat guitar hammer hat
horse jacket key kitten knife lamp leaf letter lion man map monkey mouse nurse orange painting pencil
phone piano picture pig pillow plate potato rabbit radio ring rock sandwich sheep shirt shoe sister spoon
star student table teacher tiger tomato towel toy tree truck umbrella wallet watch window wolf woman
"""
_IRREGULAR_PLURALS = {"child": "children", "man": "men", "woman": "women", "mouse": "mice", "sheep": "sheep",
                      "knife": "knives", "leaf": "leaves", "wolf": "wolves", "potato": "potatoes",
                      "tomato": "tomatoes"}
_ADJECTIVES = """
old new big small little tall short long heavy light dark bright red blue green yellow black white brown
orange purple pink grey happy sad angry quiet loud clean dirty warm cold hot soft hard young fresh sweet
empty full strong tired busy lazy clever funny friendly gentle shiny wooden broken famous strange lucky
beautiful
"""
_ADVERBS = """
quickly slowly quietly loudly happily sadly carefully early late again together alone outside upstairs
downstairs
"""
# (base, third person singular, past)
_TRANSITIVE = """
see sees saw | take takes took | make makes made | find finds found | bring brings brought | buy buys
bought | catch catches caught | hold holds held | keep keeps kept | leave leaves left | lose loses lost |
sell sells sold | send sends sent | throw throws threw | wear wears wore | draw draws drew | eat eats ate
| drink drinks drank | hide hides hid | break breaks broke | build builds built | carry carries carried |
choose chooses chose | forget forgets forgot | feed feeds fed | paint paints painted | clean cleans
cleaned | open opens opened | close closes closed | wash washes washed | fix fixes fixed | move moves
moved | push pushes pushed | pull pulls pulled | watch watches watched | like likes liked | want wants
wanted | need needs needed | visit visits visited | help helps helped | follow follows followed | count
counts counted | cook cooks cooked | drop drops dropped | kick kicks kicked | touch touches touched |
borrow borrows borrowed
"""
_INTRANSITIVE = """
run runs ran | sleep sleeps slept | sing sings sang | swim swims swam | sit sits sat | stand stands stood
| fall falls fell | walk walks walked | jump jumps jumped | laugh laughs laughed | smile smiles smiled |
dance dances danced | wait waits waited | listen listens listened | arrive arrives arrived | rest rests
rested | cry cries cried | shout shouts shouted | fly flies flew | grow grows grew | win wins won | work
works worked | play plays played | climb climbs climbed | talk talks talked | cough coughs coughed |
whistle whistles whistled
"""
_NAMES = """
john mary peter susan david anna robert linda james emma thomas sarah paul laura mark alice henry grace
oliver lucy daniel helen george kate simon ruth julia frank rose victor
"""
_PLACES = """
kitchen garden house school park river forest station market library office village hospital church
bridge street harbour field hotel beach farm castle museum shop room hall yard
"""
_PREPOSITIONS = "in near behind beside outside".split()
_SUBJECT_PRONOUNS = "i you we they he she".split()
_POSSESSIVES = "my your our their his her".split()
_NUMBERS = "two three four five six seven eight nine ten eleven twelve twenty".split()
_PAST_TIMES = ("yesterday", "last week", "last night", "this morning", "on sunday", "at noon",
               "in the evening", "after lunch", "before dinner")
_FUTURE_TIMES = ("tomorrow", "next week", "soon", "later", "tonight", "on monday")


def _words(block: str) -> List[str]:
    return block.split()


def _verbs(block: str) -> List[Tuple[str, str, str]]:
    out = []
    for item in block.split("|"):
        forms = item.split()
        if len(forms) != 3:
            raise AssertionError(f"verb entry {item!r} must have three forms")
        out.append((forms[0], forms[1], forms[2]))
    return out


def _plural(noun: str) -> str:
    if noun in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[noun]
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


NOUNS = _words(_NOUNS)
ADJECTIVES = _words(_ADJECTIVES)
ADVERBS = _words(_ADVERBS)
TRANSITIVE = _verbs(_TRANSITIVE)
INTRANSITIVE = _verbs(_INTRANSITIVE)
NAMES = _words(_NAMES)
PLACES = _words(_PLACES)


def vocabulary() -> List[str]:
    """Every word the sentence grammar can produce (lower case, sorted)."""
    words = set(NOUNS) | {_plural(n) for n in NOUNS} | set(ADJECTIVES) | set(ADVERBS) | set(NAMES)
    words |= set(PLACES) | set(_PREPOSITIONS) | set(_SUBJECT_PRONOUNS) | set(_POSSESSIVES) | set(_NUMBERS)
    words |= {f for v in TRANSITIVE + INTRANSITIVE for f in v}
    for phrase in _PAST_TIMES + _FUTURE_TIMES:
        words |= set(phrase.split())
    words |= set("the a an this that every some these those very will and then".split())
    words |= set("is was where please day".split())
    return sorted(words)


class _Sentences:
    """A tiny generative grammar of simple English sentences; returns ``(words, punctuation)``."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def pick(self, seq: Sequence):
        return seq[int(self.rng.integers(len(seq)))]

    def maybe(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def np_sing(self, allow_name: bool = False) -> List[str]:
        if allow_name and self.maybe(0.25):
            return [self.pick(NAMES)]
        words = [self.pick(ADJECTIVES)] if self.maybe(0.5) else []
        words.append(self.pick(NOUNS))
        det = self.pick(("the", "the", "a", "this", "that", "every") + tuple(_POSSESSIVES))
        if det == "a" and words[0][0] in "aeiou":
            det = "an"
        return [det] + words

    def np_plural(self) -> List[str]:
        det = self.pick(("the", "some", "these", "those") + tuple(_NUMBERS) + tuple(_POSSESSIVES))
        words = [self.pick(ADJECTIVES)] if self.maybe(0.4) else []
        return [det] + words + [_plural(self.pick(NOUNS))]

    def location(self) -> List[str]:
        return [self.pick(_PREPOSITIONS), "the", self.pick(PLACES)]

    def sentence(self) -> Tuple[List[str], str]:
        kind = int(self.rng.integers(10))
        vt, vi = self.pick(TRANSITIVE), self.pick(INTRANSITIVE)
        if kind == 0:
            w = self.np_sing(True) + [vt[2]] + self.np_sing() + (self.location() if self.maybe(0.4) else [])
        elif kind == 1:
            w = [self.pick(NAMES), vi[2]] + ([self.pick(ADVERBS)] if self.maybe(0.5) else [])
            w += self.location() if self.maybe(0.5) else []
        elif kind == 2:
            w = [self.pick(_SUBJECT_PRONOUNS), "will", vt[0], "the", self.pick(NOUNS)]
            w += self.pick(_FUTURE_TIMES).split() if self.maybe(0.6) else []
        elif kind == 3:
            w = self.np_plural() + [vi[2]] + self.location()
        elif kind == 4:
            w = ["the", self.pick(NOUNS), self.pick(("is", "was")), "very", self.pick(ADJECTIVES)]
        elif kind == 5:
            w = ["where", "is", "the"] + ([self.pick(ADJECTIVES)] if self.maybe(0.5) else [])
            return w + [self.pick(NOUNS)], "?"
        elif kind == 6:
            first, second = self.pick(NAMES), self.pick(NAMES)
            w = [first, "and", second if second != first else "paul", vt[2], self.pick(_NUMBERS),
                 _plural(self.pick(NOUNS))] + self.pick(_PAST_TIMES).split()
        elif kind == 7:
            w = ["please", vt[0], "the", self.pick(ADJECTIVES), self.pick(NOUNS)]
            w += self.location() if self.maybe(0.5) else []
        elif kind == 8:
            w = ["the", self.pick(NOUNS), vt[1]] + self.np_sing() + ["every", "day"]
        else:
            other = self.pick(INTRANSITIVE)
            w = [self.pick(_SUBJECT_PRONOUNS), vi[2], self.pick(ADVERBS), "and", "then", other[2]]
        return w, "."


def make_sentence(rng: np.random.Generator) -> Tuple[str, str]:
    """One sentence from the built-in grammar: ``(text for the synthesiser, upper-case words)``."""
    words, punct = _Sentences(rng).sentence()
    text = " ".join(words)
    return text[0].upper() + text[1:] + punct, " ".join(words).upper()


# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Speaker:
    id: str
    accent: str
    variant: str
    gender: str
    rate: int
    pitch: int
    pitch_range: int
    volume: int

    @property
    def voice(self) -> str:
        return f"{self.accent}+{self.variant}"


VOICE_PAIRINGS = ("cycle", "crossed")


@dataclass(frozen=True)
class Prosody:
    """Inclusive ranges each speaker's espeak-ng prosody is drawn from (uniform integers): speaking rate in
    words per minute (espeak-ng: 80-450), base pitch and pitch range (0-99; range 0 is a monotone) and volume
    (0-200)."""

    rate: Tuple[int, int] = RATE_WPM
    pitch: Tuple[int, int] = PITCH
    pitch_range: Tuple[int, int] = PITCH_RANGE
    volume: Tuple[int, int] = VOLUME

    def check(self) -> None:
        limits = {"rate": (80, 450), "pitch": (0, 99), "pitch_range": (0, 99), "volume": (0, 200)}
        for name, (lo, hi) in limits.items():
            a, b = getattr(self, name)
            if not lo <= a <= b <= hi:
                raise ValueError(f"prosody {name}=({a}, {b}): expected LOW <= HIGH within espeak-ng's {lo}..{hi}")


def make_speakers(num_speakers: int, seed: int, voice_pairing: str = "cycle",
                  prosody: Prosody = Prosody()) -> List[Speaker]:
    """``num_speakers`` voices alternating male/female; accents, variants and prosody drawn from ``seed``.

    ``voice_pairing="cycle"`` (the default, the corpus of version 1) walks the accents and each gender's
    variants in lock-step: with 8 accents, males only get 4 of them and females the other 4, and male voices
    repeat after 36 speakers. ``"crossed"`` deals each gender's (accent, variant) pairs from one seeded
    permutation of their full grid (8 x 36 male, 8 x 17 female voices), so every accent is spoken by both
    genders and no voice repeats before the grid is used up: the setting for a large, varied pre-training
    corpus. Prosody is drawn from the ranges of ``prosody``.
    """
    if voice_pairing not in VOICE_PAIRINGS:
        raise ValueError(f"voice_pairing={voice_pairing!r}: expected one of {', '.join(VOICE_PAIRINGS)}")
    prosody.check()
    rng = np.random.default_rng([seed, 1])
    accents = [ACCENTS[i] for i in rng.permutation(len(ACCENTS))]
    males = [MALE_VARIANTS[i] for i in rng.permutation(len(MALE_VARIANTS))]
    females = [FEMALE_VARIANTS[i] for i in rng.permutation(len(FEMALE_VARIANTS))]
    grids = {}
    if voice_pairing == "crossed":
        grid_rng = np.random.default_rng([seed, 5])
        for gender, pool in (("male", males), ("female", females)):
            pairs = list(itertools.product(accents, pool))
            grids[gender] = [pairs[i] for i in grid_rng.permutation(len(pairs))]
    width = max(2, len(str(num_speakers - 1)))
    speakers = []
    for i in range(num_speakers):
        gender = "female" if i % 2 else "male"
        if voice_pairing == "crossed":
            grid = grids[gender]
            accent, variant = grid[(i // 2) % len(grid)]
        else:
            pool = females if gender == "female" else males
            accent, variant = accents[i % len(accents)], pool[(i // 2) % len(pool)]
        speakers.append(Speaker(
            id=f"spk{i:0{width}d}", accent=accent, variant=variant, gender=gender,
            rate=int(rng.integers(prosody.rate[0], prosody.rate[1] + 1)),
            pitch=int(rng.integers(prosody.pitch[0], prosody.pitch[1] + 1)),
            pitch_range=int(rng.integers(prosody.pitch_range[0], prosody.pitch_range[1] + 1)),
            volume=int(rng.integers(prosody.volume[0], prosody.volume[1] + 1))))
    return speakers


@dataclass
class _Utterance:
    utt_id: str
    speaker: str
    index: int  # generation order
    words: str
    num_samples: int
    phones: List[str]
    frames: List[str]
    split: str = ""


def _write_wav(path: str, audio: np.ndarray, sr: int = SAMPLE_RATE) -> None:
    """16-bit mono PCM WAV with the standard library (no metadata, so the bytes depend only on the audio)."""
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(np.ascontiguousarray(audio, dtype="<i2").tobytes())


def _prepare_out_dir(out_dir: str) -> None:
    if os.path.isdir(out_dir):
        entries = set(os.listdir(out_dir))
        foreign = sorted(entries - _OWN_ENTRIES)
        if foreign:
            raise FileExistsError(
                f"{out_dir} is not empty and does not look like a mini corpus (found "
                f"{', '.join(foreign[:5])}); choose an empty or new output directory")
        for name in entries:
            path = os.path.join(out_dir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
    elif os.path.exists(out_dir):
        raise FileExistsError(f"--out {out_dir} exists and is not a directory")
    os.makedirs(os.path.join(out_dir, "audio"), exist_ok=True)


def _pad_and_label(synth, rng: np.random.Generator) -> Tuple[np.ndarray, List[Tuple[str, int, int]]]:
    """Add 50-250 ms of leading and trailing digital silence; returns audio and contiguous phone intervals."""
    lead = int(rng.integers(int(0.05 * SAMPLE_RATE), int(0.25 * SAMPLE_RATE) + 1))
    tail = int(rng.integers(int(0.05 * SAMPLE_RATE), int(0.25 * SAMPLE_RATE) + 1))
    audio = np.concatenate([np.zeros(lead, np.int16), synth.audio, np.zeros(tail, np.int16)])
    phones = [(SIL, 0, lead)] + [(p, s + lead, e + lead) for p, s, e in synth.phones]
    phones.append((SIL, lead + synth.num_samples, len(audio)))
    merged: List[Tuple[str, int, int]] = []
    for p, s, e in phones:
        if e <= s:
            continue
        if merged and merged[-1][0] == SIL and p == SIL:
            merged[-1] = (SIL, merged[-1][1], e)
        else:
            merged.append((p, s, e))
    return audio, merged


def frame_labels(phones: Sequence[Tuple[str, int, int]], num_samples: int, hop: int = FRAME_HOP) -> List[str]:
    """Frame ``i`` gets the label of the interval containing sample ``hop * i + hop // 2``."""
    n = num_samples // hop
    starts = np.array([s for _, s, _ in phones], dtype=np.int64)
    idx = np.searchsorted(starts, np.arange(n, dtype=np.int64) * hop + hop // 2, side="right") - 1
    return [phones[i][0] for i in idx]


def _split_speakers(speakers: List[Speaker], seed: int, test_fraction: float) -> Dict[str, str]:
    rng = np.random.default_rng([seed, 2])
    n_test = min(len(speakers) - 2, max(2, int(round(test_fraction * len(speakers)))))
    test = {speakers[i].id for i in rng.permutation(len(speakers))[:n_test]}
    return {s.id: ("test" if s.id in test else "train") for s in speakers}


def _dictionary(path: str, counter: Counter) -> None:
    items = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
    write_dictionary(path, [k for k, _ in items], [v for _, v in items])


def _write_noise(out_dir: str, seed: int, num_noise: int, train: List[_Utterance],
                 noise_seconds: Tuple[float, float]) -> Dict:
    from fairseq_plugins.data.noise import NOISE_KINDS, make_noise

    kinds = list(NOISE_KINDS) + (["tts_babble"] if train else [])
    noise_dir = os.path.join(out_dir, "noise")
    os.makedirs(noise_dir, exist_ok=True)
    rows, labels, seconds = [], [], 0.0
    train_paths = [os.path.join(out_dir, "audio", "train", u.speaker, u.utt_id + ".wav") for u in train]
    for i in range(num_noise):
        kind = kinds[i % len(kinds)]
        rng = np.random.default_rng([seed, 3, i])
        n = int(rng.uniform(*noise_seconds) * SAMPLE_RATE)
        if kind == "tts_babble":  # several train utterances on top of each other
            x = np.zeros(n)
            for k in rng.choice(len(train_paths), size=min(5, len(train_paths)), replace=False):
                with wave.open(train_paths[int(k)], "rb") as w:
                    y = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
                y = np.tile(y, int(np.ceil(n / len(y))) + 1)
                start = int(rng.integers(0, len(y) - n + 1))
                x += y[start:start + n] / 32768.0 * rng.uniform(0.5, 1.0)
            x = x / (np.sqrt(np.mean(x ** 2)) + 1e-12) * 0.1
            x = x * min(1.0, 0.99 / max(1e-12, float(np.abs(x).max())))
        else:
            x = make_noise(kind, n, rng, SAMPLE_RATE)
        name = f"{kind}_{i:03d}.wav"
        _write_wav(os.path.join(noise_dir, name), np.clip(np.rint(x * 32767), -32768, 32767).astype(np.int16))
        rows.append((name, n))
        labels.append(kind)
        seconds += n / SAMPLE_RATE
    write_manifest(os.path.join(out_dir, "manifest", "noise.tsv"), noise_dir, rows)
    write_lines(os.path.join(out_dir, "manifest", "noise.kind"), labels)
    return {"files": num_noise, "seconds": round(seconds, 3), "kinds": dict(sorted(Counter(labels).items()))}


def build_mini_corpus(out_dir: str, seed: int = 0, minutes: float = 3.0, num_speakers: int = 24,
                      num_noise: int = 40, valid_fraction: float = 0.1, test_fraction: float = 0.25,
                      min_utts_per_speaker: int = 2, max_trials: int = 2000,
                      noise_seconds: Tuple[float, float] = (1.0, 2.0), voice_pairing: str = "cycle",
                      prosody: Prosody = Prosody()) -> Dict:
    """Build the corpus in ``out_dir`` (see the module docstring and ``--help`` for the layout).

    Utterances are generated round-robin over speakers until complete rounds reach ``minutes`` of audio (and
    every speaker has ``min_utts_per_speaker``). Returns the summary written to ``corpus.json`` plus
    ``out_dir``. Raises ``FileExistsError`` when ``out_dir`` holds anything but a previous mini corpus.
    """
    from manifests.espeak import Espeak

    if num_speakers < 4:
        raise ValueError(f"num_speakers={num_speakers}: need at least 4 (2 held out for test, 2 for train)")
    if minutes <= 0:
        raise ValueError(f"minutes={minutes} must be positive")
    if not 0 < valid_fraction < 1 or not 0 < test_fraction < 1:
        raise ValueError("valid_fraction and test_fraction must be in (0, 1)")
    speakers = make_speakers(num_speakers, seed, voice_pairing, prosody)  # checks both before anything is removed
    out_dir = os.path.abspath(out_dir)
    _prepare_out_dir(out_dir)
    t0 = time.time()
    spk_split = _split_speakers(speakers, seed, test_fraction)
    engine = Espeak()
    staging = os.path.join(out_dir, "audio", ".staging")
    os.makedirs(staging)
    target = int(minutes * 60 * SAMPLE_RATE)
    utts: List[_Utterance] = []
    total = 0
    try:
        for k in itertools.count():
            spk = speakers[k % num_speakers]
            j = k // num_speakers
            if k % num_speakers == 0 and total >= target and j >= min_utts_per_speaker:
                break
            rng = np.random.default_rng([seed, 0, k])  # one stream per utterance: a prefix of a bigger corpus
            text, words = make_sentence(rng)
            synth = engine.synthesize(text, voice=spk.voice, rate=spk.rate, pitch=spk.pitch,
                                      pitch_range=spk.pitch_range, volume=spk.volume).resample(SAMPLE_RATE)
            audio, phones = _pad_and_label(synth, rng)
            utt_id = f"{spk.id}_{j:04d}"
            _write_wav(os.path.join(staging, utt_id + ".wav"), audio)
            utts.append(_Utterance(utt_id=utt_id, speaker=spk.id, index=k, words=words,
                                   num_samples=len(audio), phones=[p for p, _, _ in phones if p != SIL],
                                   frames=frame_labels(phones, len(audio))))
            total += len(audio)
    finally:
        engine.close()
    synth_seconds = time.time() - t0

    # splits: test = held-out speakers; valid = a seeded ~valid_fraction of the train speakers' utterances
    train_pool = [u for u in utts if spk_split[u.speaker] == "train"]
    n_valid = max(1, int(round(valid_fraction * len(train_pool))))
    order = np.random.default_rng([seed, 4]).permutation(len(train_pool))
    valid_ids = {train_pool[i].utt_id for i in order[:n_valid]}
    for u in utts:
        if spk_split[u.speaker] == "test":
            u.split = "test"
        else:
            u.split = "valid" if u.utt_id in valid_ids else "train"
        dest = os.path.join(out_dir, "audio", u.split, u.speaker)
        os.makedirs(dest, exist_ok=True)
        os.replace(os.path.join(staging, u.utt_id + ".wav"), os.path.join(dest, u.utt_id + ".wav"))
    os.rmdir(staging)

    man = os.path.join(out_dir, "manifest")
    counts: Dict[str, Counter] = {k: Counter() for k in ("phn", "phn50", "ltr", "wrd")}
    split_info = {}
    for split in SPLITS:
        rows = [u for u in utts if u.split == split]
        write_manifest(os.path.join(man, f"{split}.tsv"), os.path.join(out_dir, "audio"),
                       [(f"{split}/{u.speaker}/{u.utt_id}.wav", u.num_samples) for u in rows])
        ltr = [words_to_letters(u.words) for u in rows]
        write_lines(os.path.join(man, f"{split}.wrd"), [u.words for u in rows])
        write_lines(os.path.join(man, f"{split}.ltr"), ltr)
        write_lines(os.path.join(man, f"{split}.spk"), [u.speaker for u in rows])
        write_lines(os.path.join(man, f"{split}.utt"), [u.utt_id for u in rows])
        write_lines(os.path.join(man, f"{split}.phn"), [" ".join(u.phones) for u in rows])
        write_lines(os.path.join(man, f"{split}.phn50"), [" ".join(u.frames) for u in rows])
        for u, letters in zip(rows, ltr):
            counts["phn"].update(u.phones)
            counts["phn50"].update(u.frames)
            counts["ltr"].update(letters.split())
            counts["wrd"].update(u.words.split())
        split_info[split] = {"utterances": len(rows), "speakers": len({u.speaker for u in rows}),
                             "seconds": round(sum(u.num_samples for u in rows) / SAMPLE_RATE, 3)}
    for name, counter in counts.items():
        _dictionary(os.path.join(man, f"dict.{name}.txt"), counter)

    test = [(u.utt_id, u.speaker) for u in utts if u.split == "test"]
    trials = [f"{label} {a} {b}" for label, a, b in make_trials(
        [u for u, _ in test], [s for _, s in test], max_trials, seed=seed, source="the mini corpus's test split")]
    write_lines(os.path.join(man, "test.trials"), trials)

    by_id = {s.id: s for s in speakers}
    header = "speaker\tsplit\tvoice\taccent\tvariant\tgender\trate\tpitch\tpitch_range\tvolume"
    spk_lines = [header] + [
        f"{s.id}\t{spk_split[s.id]}\t{s.voice}\t{s.accent}\t{s.variant}\t"
        f"{s.gender}\t{s.rate}\t{s.pitch}\t{s.pitch_range}\t{s.volume}" for s in speakers]
    write_lines(os.path.join(out_dir, "speakers.txt"), spk_lines)

    train_utts = [u for u in utts if u.split == "train"]
    noise_info = _write_noise(out_dir, seed, num_noise, train_utts, noise_seconds)

    summary = {
        "name": "mini_corpus",
        "version": CORPUS_VERSION,
        "seed": seed,
        "minutes_requested": minutes,
        "num_speakers": num_speakers,
        "voice_pairing": voice_pairing,
        "distinct_voices": len({s.voice for s in speakers}),
        "prosody": asdict(prosody),
        "sample_rate": SAMPLE_RATE,
        "label_rate": SAMPLE_RATE // FRAME_HOP,
        "synthesiser": f"espeak-ng {engine.version}",
        "utterances": len(utts),
        "seconds": round(total / SAMPLE_RATE, 3),
        "splits": split_info,
        "phones": {"sequence_symbols": len(counts["phn"]), "frame_symbols": len(counts["phn50"]),
                   "silence_label": SIL},
        "trials": {"test": {"total": len(trials), "target": sum(t.startswith("1 ") for t in trials),
                            "nontarget": sum(t.startswith("0 ") for t in trials)}},
        "noise": noise_info,
        "speakers": [dict(asdict(by_id[s.id]), voice=s.voice, split=spk_split[s.id]) for s in speakers],
    }
    with open(os.path.join(out_dir, "corpus.json"), "w") as f:
        json.dump(summary, f, indent=1, sort_keys=True)
        f.write("\n")
    logger.info("built %d utterances (%.1f s of audio, %d speakers) + %d noise files in %s: "
                "synthesis %.2f s, total %.2f s", len(utts), total / SAMPLE_RATE, num_speakers, num_noise,
                out_dir, synth_seconds, time.time() - t0)
    return dict(summary, out_dir=out_dir)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m manifests.mini_corpus",
        description="Build a seeded offline mini speech corpus (espeak-ng TTS, 16 kHz) with fairseq "
                    "manifests, word/letter/phone/50 Hz frame-phone/speaker labels, a speaker-verification "
                    "trial list and procedural noise. Same seed -> byte-identical files.",
        epilog="Layout: OUT/audio/{train,valid,test}/SPK/UTT.wav; "
               "OUT/manifest/{train,valid,test}.{tsv,wrd,ltr,spk,utt,phn,phn50}, "
               "dict.{phn,phn50,ltr,wrd}.txt, "
               "test.trials, noise.tsv, noise.kind; OUT/noise/*.wav; OUT/speakers.txt; OUT/corpus.json. "
               "Labels: .phn has no silences, .phn50 labels silence 'sil'. "
               "Needs the pip package espeakng-loader.")
    p.add_argument("--out", required=True, help="output directory (new, empty, or a previous mini corpus, "
                                                "which is replaced)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--minutes", type=float, default=3.0,
                   help="approximate total audio duration in minutes (default: 3; 120 gives about 2 hours)")
    p.add_argument("--num-speakers", type=int, default=24,
                   help="number of synthetic speakers, at least 4; about 25%% are held out for test "
                        "(default: 24)")
    p.add_argument("--num-noise", type=int, default=40, help="number of 1-2 s noise files (default: 40)")
    p.add_argument("--max-trials", type=int, default=2000,
                   help="at most this many verification trials, half same-speaker (default: 2000)")
    p.add_argument("--voice-pairing", choices=VOICE_PAIRINGS, default="cycle",
                   help="how speakers get an (accent, variant) voice: cycle (default; accents tied to gender, "
                        "voices repeat after 36 male speakers) or crossed (each gender's full accent x variant "
                        "grid, 288 male + 136 female voices, dealt without repeats: for large pre-training "
                        "corpora)")
    p.add_argument("--rate", type=int, nargs=2, default=list(RATE_WPM), metavar=("LOW", "HIGH"),
                   help=f"speaking-rate range in words per minute (default: {RATE_WPM[0]} {RATE_WPM[1]})")
    p.add_argument("--pitch", type=int, nargs=2, default=list(PITCH), metavar=("LOW", "HIGH"),
                   help=f"base-pitch range, espeak-ng 0-99 (default: {PITCH[0]} {PITCH[1]})")
    p.add_argument("--pitch-range", type=int, nargs=2, default=list(PITCH_RANGE), metavar=("LOW", "HIGH"),
                   help=f"range of espeak-ng's pitch range (intonation), 0-99 (default: {PITCH_RANGE[0]} "
                        f"{PITCH_RANGE[1]})")
    p.add_argument("--volume", type=int, nargs=2, default=list(VOLUME), metavar=("LOW", "HIGH"),
                   help=f"volume range, espeak-ng 0-200 (default: {VOLUME[0]} {VOLUME[1]})")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    cli_logging(verbose=args.verbose)
    try:
        summary = build_mini_corpus(args.out, seed=args.seed, minutes=args.minutes,
                                    num_speakers=args.num_speakers, num_noise=args.num_noise,
                                    max_trials=args.max_trials, voice_pairing=args.voice_pairing,
                                    prosody=Prosody(tuple(args.rate), tuple(args.pitch), tuple(args.pitch_range),
                                                    tuple(args.volume)))
    except (FileExistsError, ValueError, RuntimeError) as e:
        logger.error("%s", e)
        return 1
    keys = ("out_dir", "utterances", "seconds", "distinct_voices", "splits", "trials")
    print(json.dumps({k: summary[k] for k in keys}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
