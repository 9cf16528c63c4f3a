"""Keyword-spotting manifests: a seeded synthetic keyword set (espeak-ng), or a Speech Commands folder.

Both write the same layout into ``OUT``: ``{train,valid,test}.tsv`` (fairseq manifests), line-parallel
``{split}.kw`` (the class label of each clip), ``{split}.spk`` and ``{split}.utt``, and ``dict.kw.txt``. The
classes mirror SUPERB's keyword spotting task (Speech Commands v1, 12 classes): ten keywords plus
``_unknown_`` (any other word) and ``_silence_`` (background noise only). Splits are speaker-disjoint.

Synthetic set (:func:`build_keywords`): every speaker is one of the mini corpus voices
(:func:`manifests.mini_corpus.make_speakers`, same seed -> same voices); each speaker says every keyword
``repeats`` times with a jittered rate and pitch, plus as many random other words from the mini corpus
vocabulary (``_unknown_``) and as many noise-only clips (``_silence_``, :mod:`fairseq_plugins.data.noise` at a random
level). Words are placed at a random offset in a clip of ``clip_seconds`` (longer words keep their length)
over faint background noise, like Speech Commands' 1 s clips. The output is a pure function of the
arguments. About ``num_speakers * repeats * 12`` clips; the defaults (24 speakers, 2 repeats) give 576 clips
(~10 minutes) in a few seconds.

Speech Commands (:func:`build_speech_commands`): ``ROOT/<word>/<speaker>_nohash_<n>.wav`` with
``validation_list.txt`` and ``testing_list.txt``, as downloaded (v0.01 or v0.02). Words outside the keyword
list become ``_unknown_``; ``ROOT/_background_noise_/*.wav`` is cut into 1 s ``_silence_`` clips (written to
``OUT/silence/``). SUPERB tests on the separate ``speech_commands_test_set_v0.01`` folder: pass it as
``test_root`` (its ``_silence_``/``_unknown_`` folders are taken as labelled).

    python -m manifests.keywords --out DIR [--seed 0 --num-speakers 24 --repeats 2]
    python -m manifests.keywords --out DIR --speech-commands /data/speech_commands_v0.01 \
        [--test-root /data/speech_commands_test_set_v0.01]
"""
import argparse
import json
import logging
import os
import sys
import wave
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from fairseq_plugins.compat import cli_logging
from fairseq_plugins.data.manifest_io import write_dictionary, write_lines, write_manifest

logger = logging.getLogger(__name__)

KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN = "_unknown_"
SILENCE = "_silence_"
SPLITS = ("train", "valid", "test")
SAMPLE_RATE = 16000
VERSION = 1
_OWN_ENTRIES = {"audio", "silence", "keywords.json", "dict.kw.txt"} | {
    f"{s}.{x}" for s in SPLITS for x in ("tsv", "kw", "spk", "utt")}


def _write_wav(path: str, audio: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pcm = np.clip(np.rint(audio * 32767), -32768, 32767).astype("<i2")
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.tobytes())


def _prepare(out_dir: str) -> None:
    if os.path.isdir(out_dir):
        foreign = sorted(set(os.listdir(out_dir)) - _OWN_ENTRIES)
        if foreign:
            raise FileExistsError(f"{out_dir} holds files this builder did not write ({', '.join(foreign[:5])});"
                                  " choose an empty or new output directory")
        import shutil

        for name in os.listdir(out_dir):
            path = os.path.join(out_dir, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    os.makedirs(out_dir, exist_ok=True)


def split_speakers(speakers: Sequence[str], seed: int, valid_fraction: float = 0.15,
                   test_fraction: float = 0.25) -> Dict[str, str]:
    """Speaker -> split, speaker-disjoint; at least one speaker in each split (needs 3 speakers)."""
    if len(speakers) < 3:
        raise ValueError(f"need at least 3 speakers for speaker-disjoint train/valid/test, got {len(speakers)}")
    order = [speakers[i] for i in np.random.default_rng([seed, 11]).permutation(len(speakers))]
    n_test = min(len(speakers) - 2, max(1, int(round(test_fraction * len(speakers)))))
    n_valid = min(len(speakers) - 1 - n_test, max(1, int(round(valid_fraction * len(speakers)))))
    out = {s: "train" for s in speakers}
    for s in order[:n_test]:
        out[s] = "test"
    for s in order[n_test:n_test + n_valid]:
        out[s] = "valid"
    return out


def _trim(audio: np.ndarray, threshold: float = 1e-3) -> np.ndarray:
    loud = np.nonzero(np.abs(audio) > threshold)[0]
    return audio[loud[0]:loud[-1] + 1] if len(loud) else audio


def _background(n: int, rng: np.random.Generator, level_db: Tuple[float, float]) -> np.ndarray:
    from fairseq_plugins.data.noise import make_noise

    kind = str(rng.choice(["white", "pink", "brown", "hum", "bandlimited"]))
    return make_noise(kind, n, rng, SAMPLE_RATE) / 0.1 * 10 ** (rng.uniform(*level_db) / 20)


def build_keywords(out_dir: str, seed: int = 0, num_speakers: int = 24, repeats: int = 2,
                   keywords: Sequence[str] = KEYWORDS, unknown: bool = True, silence: bool = True,
                   clip_seconds: float = 1.0, valid_fraction: float = 0.15, test_fraction: float = 0.25) -> Dict:
    """Synthesise the keyword set into ``out_dir`` (see the module docstring); returns the summary that is
    also written to ``keywords.json``."""
    from manifests.espeak import Espeak
    from manifests.mini_corpus import make_speakers, vocabulary

    if repeats < 1:
        raise ValueError(f"repeats={repeats} must be at least 1")
    config = {"kind": "synthetic", "version": VERSION, "seed": seed, "num_speakers": num_speakers,
              "repeats": repeats, "keywords": list(keywords), "unknown": unknown, "silence": silence,
              "clip_seconds": clip_seconds, "valid_fraction": valid_fraction, "test_fraction": test_fraction}
    out_dir = os.path.abspath(out_dir)
    _prepare(out_dir)
    speakers = make_speakers(num_speakers, seed)
    spk_split = split_speakers([s.id for s in speakers], seed, valid_fraction, test_fraction)
    others = [w for w in vocabulary() if w not in set(keywords)]
    labels = list(keywords) + ([UNKNOWN] if unknown else []) + ([SILENCE] if silence else [])
    engine = Espeak()
    clip_n = int(round(clip_seconds * SAMPLE_RATE))
    rows: Dict[str, List[Tuple[str, int, str, str, str]]] = {s: [] for s in SPLITS}
    for si, spk in enumerate(speakers):
        split = spk_split[spk.id]
        for r in range(repeats):
            for li, label in enumerate(labels):
                rng = np.random.default_rng([seed, 12, si, r, li])
                if label == SILENCE:
                    audio = _background(clip_n, rng, (-50.0, -25.0))
                else:
                    word = str(rng.choice(others)) if label == UNKNOWN else label
                    rate = int(np.clip(spk.rate * rng.uniform(0.85, 1.15), 80, 450))
                    pitch = int(np.clip(spk.pitch + rng.integers(-8, 9), 0, 99))
                    synth = engine.synthesize(word.capitalize() + ".", voice=spk.voice, rate=rate, pitch=pitch,
                                              pitch_range=spk.pitch_range, volume=spk.volume)
                    speech = _trim(synth.resample(SAMPLE_RATE).audio.astype(np.float64) / 32768.0)
                    n = max(clip_n, len(speech) + int(0.1 * SAMPLE_RATE))
                    audio = _background(n, rng, (-65.0, -45.0))
                    start = int(rng.integers(0, n - len(speech) + 1))
                    audio[start:start + len(speech)] += speech
                audio = audio * min(1.0, 0.99 / max(1e-9, float(np.abs(audio).max())))
                utt = f"{spk.id}_{label.strip('_')}_{r:02d}"
                rel = f"audio/{split}/{spk.id}/{utt}.wav"
                _write_wav(os.path.join(out_dir, rel), audio)
                rows[split].append((rel, len(audio), label, spk.id, utt))
    engine.close()
    return _write_splits(out_dir, out_dir, rows, labels, config)


def _write_splits(out_dir: str, root: str, rows: Dict[str, List[Tuple[str, int, str, str, str]]],
                  labels: Sequence[str], config: Dict) -> Dict:
    counts = {}
    for split, items in rows.items():
        items = sorted(items)
        write_manifest(os.path.join(out_dir, f"{split}.tsv"), root, [(r, n) for r, n, _, _, _ in items])
        write_lines(os.path.join(out_dir, f"{split}.kw"), [k for _, _, k, _, _ in items])
        write_lines(os.path.join(out_dir, f"{split}.spk"), [s for _, _, _, s, _ in items])
        write_lines(os.path.join(out_dir, f"{split}.utt"), [u for _, _, _, _, u in items])
        counts[split] = dict(sorted(Counter(k for _, _, k, _, _ in items).items()))
    write_dictionary(os.path.join(out_dir, "dict.kw.txt"), list(labels))
    summary = dict(config, labels=list(labels), counts=counts)
    with open(os.path.join(out_dir, "keywords.json"), "w") as f:
        json.dump(summary, f, indent=1, sort_keys=True)
        f.write("\n")
    logger.info("wrote keyword manifests to %s: %s", out_dir,
                ", ".join(f"{s} {sum(c.values())}" for s, c in counts.items()))
    return summary


def ensure_keywords(out_dir: str, **kwargs) -> Dict:
    """:func:`build_keywords` unless ``out_dir`` already holds a synthetic set built with the same arguments."""
    import inspect

    sig = inspect.signature(build_keywords)
    want = {k: p.default for k, p in sig.parameters.items() if k != "out_dir"}
    want.update(kwargs)
    want = {k: list(v) if isinstance(v, tuple) else v for k, v in want.items()}
    path = os.path.join(out_dir, "keywords.json")
    if os.path.isfile(path):
        with open(path) as f:
            have = json.load(f)
        if have.get("kind") == "synthetic" and have.get("version") == VERSION and \
                all(have.get(k) == v for k, v in want.items()):
            logger.info("reusing the keyword set in %s", out_dir)
            return have
    return build_keywords(out_dir, **kwargs)


def build_speech_commands(root: str, out_dir: str, keywords: Sequence[str] = KEYWORDS,
                          test_root: Optional[str] = None, silence_per_split: Optional[Dict[str, int]] = None,
                          seed: int = 0) -> Dict:
    """Manifests for a Speech Commands download (see the module docstring)."""
    import soundfile as sf

    root, out_dir = os.path.abspath(root), os.path.abspath(out_dir)
    for name in ("validation_list.txt", "testing_list.txt"):
        if not os.path.isfile(os.path.join(root, name)):
            raise FileNotFoundError(f"{root}/{name} not found: is {root} a Speech Commands folder?")
    _prepare(out_dir)

    def listed(name: str) -> set:
        with open(os.path.join(root, name)) as f:
            return {line.strip() for line in f if line.strip()}

    valid_set, test_set = listed("validation_list.txt"), listed("testing_list.txt")
    kw = set(keywords)
    labels = list(keywords) + [UNKNOWN, SILENCE]
    items: Dict[str, List[Tuple[str, str, str]]] = {s: [] for s in SPLITS}  # (abs path, label, speaker)
    for word in sorted(os.listdir(root)):
        wdir = os.path.join(root, word)
        if not os.path.isdir(wdir) or word.startswith("_"):
            continue
        for fn in sorted(os.listdir(wdir)):
            if not fn.endswith(".wav"):
                continue
            rel = f"{word}/{fn}"
            split = "test" if rel in test_set else "valid" if rel in valid_set else "train"
            if test_root and split == "test":
                continue
            items[split].append((os.path.join(wdir, fn), word if word in kw else UNKNOWN, fn.split("_")[0]))
    if test_root:
        test_root = os.path.abspath(test_root)
        for label in sorted(os.listdir(test_root)):
            ldir = os.path.join(test_root, label)
            if not os.path.isdir(ldir):
                continue
            for fn in sorted(os.listdir(ldir)):
                if fn.endswith(".wav"):
                    lab = label if label in kw or label in (UNKNOWN, SILENCE) else UNKNOWN
                    items["test"].append((os.path.join(ldir, fn), lab, fn.split("_")[0]))
    # _silence_: 1 s slices of the background-noise recordings, shared out over the splits in turn
    noise_dir = os.path.join(root, "_background_noise_")
    rng = np.random.default_rng([seed, 13])
    need: Dict[str, int] = {}
    for split in SPLITS:
        if test_root and split == "test":  # the SUPERB test set brings its own _silence_ folder
            continue
        per_keyword = Counter(lab for _, lab, _ in items[split] if lab in kw)
        need[split] = max(1, int(round(np.mean(list(per_keyword.values()))))) if per_keyword else 0
    need.update(silence_per_split or {})
    slices = []
    if os.path.isdir(noise_dir):
        for fn in sorted(os.listdir(noise_dir)):
            if fn.endswith(".wav"):
                audio, sr = sf.read(os.path.join(noise_dir, fn), dtype="float32")
                if sr == SAMPLE_RATE and audio.ndim == 1:
                    slices += [(fn, audio[s:s + SAMPLE_RATE]) for s in range(0, len(audio) - SAMPLE_RATE,
                                                                             SAMPLE_RATE // 2)]
    if slices:
        order = rng.permutation(len(slices))
        k = 0
        for split, n in need.items():
            for j in range(n):
                fn, audio = slices[int(order[k % len(slices)])]
                k += 1
                path = os.path.join(out_dir, "silence", split, f"{os.path.splitext(fn)[0]}_{j:05d}.wav")
                _write_wav(path, audio * rng.uniform(0.1, 1.0))
                items[split].append((path, SILENCE, "noise"))
    else:
        logger.warning("%s not found: no _silence_ clips", noise_dir)
    common = os.path.commonpath([root, out_dir] + ([test_root] if test_root else []))
    rows = {}
    for split, entries in items.items():
        rows[split] = []
        for path, lab, spk in entries:
            rel = os.path.relpath(path, common)
            utt = os.path.splitext(rel)[0].replace(" ", "_")
            rows[split].append((rel, int(sf.info(path).frames), lab, spk, utt))
    config = {"kind": "speech_commands", "version": VERSION, "root": root, "test_root": test_root,
              "keywords": list(keywords), "seed": seed}
    return _write_splits(out_dir, common, rows, labels, config)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m manifests.keywords", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Writes OUT/{train,valid,test}.{tsv,kw,spk,utt}, OUT/dict.kw.txt and "
                                       "OUT/keywords.json.")
    p.add_argument("--out", required=True, help="output directory (new, empty, or a previous keyword set: reused "
                   "when built with the same arguments)")
    p.add_argument("--seed", type=int, default=0, help="random seed of voices, words and noise (default: 0)")
    p.add_argument("--num-speakers", type=int, default=24, help="synthetic speakers (default: 24)")
    p.add_argument("--repeats", type=int, default=2, help="clips per class per speaker (default: 2)")
    p.add_argument("--keywords", default=",".join(KEYWORDS),
                   help="comma-separated keyword list (default: the 10 Speech Commands keywords)")
    p.add_argument("--speech-commands", default=None, metavar="ROOT",
                   help="build from a Speech Commands folder instead of synthesising")
    p.add_argument("--test-root", default=None,
                   help="with --speech-commands: the separate SUPERB test set folder "
                        "(speech_commands_test_set_v0.01) used as the test split")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    cli_logging(verbose=args.verbose)
    keywords = tuple(k for k in args.keywords.split(",") if k)
    try:
        if args.speech_commands:
            summary = build_speech_commands(args.speech_commands, args.out, keywords, args.test_root,
                                            seed=args.seed)
        else:
            summary = ensure_keywords(args.out, seed=args.seed, num_speakers=args.num_speakers,
                                      repeats=args.repeats, keywords=keywords)
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        logger.error("%s", e)
        return 1
    print(json.dumps(summary["counts"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
