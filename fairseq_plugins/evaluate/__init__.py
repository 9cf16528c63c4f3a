"""Evaluation of frozen representations: SUPERB/LAPE-style probes that measure any checkpoint, side by side.

``python -m fairseq_plugins.evaluate --checkpoints NAME=PATH ... --manifest-dir DIR --out DIR`` loads every
checkpoint (fairseq HuBERT/wav2vec 2.0, plugin models, WavLM release files) as a frozen upstream returning all
hidden layers (:mod:`.upstream`), caches its features (:mod:`.data`), trains light probes on a learned
softmax-weighted sum of the layers as SUPERB does (arXiv 2105.01051; :mod:`.probes`) for phone recognition
(CTC, PER), frame phone classification, speaker identification, speaker verification (cosine scoring, EER),
keyword spotting and clip-level audio classification (LAPE-style, as SLICER reports), with several seeds, and
writes one table with the checkpoints and the log-mel / random-init floors side by side (:mod:`.report`).
Nothing is registered with fairseq. See ``README.md`` in this folder.
"""
from fairseq_plugins.evaluate.metrics import accuracy, eer, per
from fairseq_plugins.evaluate.pipeline import TASKS, EvalConfig, run_evaluation

__all__ = ["EvalConfig", "TASKS", "accuracy", "eer", "per", "run_evaluation"]
