"""Probe tasks on real human speech: speaker, language and word id on the set of ``python -m manifests.real_dev``.

The set (built once from four Debian packages of real recordings: acted game voices, children's game words in
~25 languages, spelled letters and syllables, codec test talkers; see ``manifests/real_dev.py``) has one folder
per task, each with ``{train,valid,test}.tsv``, the label side file and ``dict.<suffix>.txt``:

- ``real_speaker_id``: ``speaker/`` + ``.spk`` (hedgewars voice packs and codec2 talkers; split within speaker).
- ``real_language_id``: ``language/`` + ``.lang`` (ktuberling words and klettres letters / syllables).
- ``real_word_id``: ``word/`` + ``.wrd`` (the English hedgewars packs' exclamations; test = other voices' takes).

All three are utterance classification exactly like ``keyword`` / ``clip``: learned softmax-weighted sum of the
layers, mean over time, linear head, accuracy (:func:`fairseq_plugins.evaluate.probes.train_pooled_classifier`).
The evaluation never builds the set itself (the builder lives in the repository's ``manifests`` scripts, which
the plugin does not import): a missing ``--real-dev-dir`` stops with the command that builds it. This module
holds what the pipeline needs to know about the tasks; :mod:`fairseq_plugins.evaluate.pipeline` loads them with
its generic classification loader.
"""
import os
from typing import Dict, Tuple

from fairseq_plugins.evaluate.probes import ProbeConfig

# task -> (folder under --real-dev-dir, label side-file suffix)
FOLDERS: Dict[str, Tuple[str, str]] = {
    "real_speaker_id": ("speaker", "spk"),
    "real_language_id": ("language", "lang"),
    "real_word_id": ("word", "wrd"),
}
TASKS = tuple(FOLDERS)
METRICS: Dict[str, Tuple[str, bool]] = {t: ("accuracy", True) for t in TASKS}
# a few hundred to two thousand training utterances of 0.3-4 s: the keyword / clip budget, with speaker id's
# weight decay (every class has only 3-60 training utterances)
PROBES: Dict[str, ProbeConfig] = {t: ProbeConfig(epochs=80, lr=1e-2, batch_size=32, weight_decay=1e-3)
                                  for t in TASKS}
SPLITS: Dict[str, Tuple[str, str, str]] = {t: ("train", "valid", "test") for t in TASKS}
HINT = ("build the real-speech set with `python -m manifests.real_dev --out DIR` (it reads the Debian packages "
        "hedgewars-data, ktuberling-data, klettres-data and codec2-examples; `make setup` installs them)")


def task_folder(task: str, real_dev_dir: str) -> Tuple[str, str]:
    """``(folder, suffix)`` of ``task`` in the set at ``real_dev_dir`` (an existing directory), or a clear error."""
    sub, suffix = FOLDERS[task]
    folder = os.path.join(real_dev_dir, sub)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{task}: {folder} not found: --real-dev-dir must be a folder written by "
                                f"python -m manifests.real_dev (it has speaker/, language/ and word/); {HINT}")
    return folder, suffix
