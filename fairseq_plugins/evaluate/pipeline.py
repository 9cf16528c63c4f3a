"""The evaluation run: task data, upstreams, probes per seed, results and report.

:func:`run_evaluation` takes an :class:`EvalConfig` (the CLI builds one) and, for every upstream in turn
(checkpoints first, then the baselines), extracts frozen features once, runs every task's probe for every
seed, frees the features, and only when every probe has finished writes ``OUT/results.jsonl`` (one JSON line
per result), ``OUT/run.json`` and the side-by-side table and plots (:mod:`fairseq_plugins.evaluate.report`).
A failed run writes none of them (a wrong table must never be written): non-finite audio, features, probe
losses, weights or scores stop the run with the utterance, the file or the probe and the stage.

Tasks (the test split is scored once per run, with the best-validation probe; README.md has the details):

- ``phone_ctc``: manifest ``train/valid/test`` + ``.phn`` (``dict.phn.txt``); CTC probe; PER (lower is better).
- ``phone_frame``: manifest ``train/valid/test`` + ``.phn50`` (``dict.phn50.txt``); linear per frame; accuracy.
- ``speaker_id``: manifest ``train`` (about 25 % of every speaker's utterances carved out as probe-test) and
  ``valid`` + ``.spk``; mean pooling + linear; accuracy.
- ``speaker_ver``: manifest ``test`` + ``test.trials``; no training, cosine scoring of mixed mean-pooled
  layers; EER (lower is better).
- ``keyword``: ``--keyword-dir`` ``train/valid/test`` + ``.kw`` (synthesised when not given); mean pooling +
  linear; accuracy.
- ``clip``: ``--clip-dir`` ``train/valid/test`` + ``.cls`` (synthesised when not given); mean pooling +
  linear; accuracy.
- ``content_qbe``: the keyword set's ``valid/test`` + ``.kw`` + ``.spk`` (``--keyword-dir``, synthesised when not
  given); no training: same-text cross-speaker retrieval with DTW over frame features; MAP in % of the layer
  best on valid.
- ``real_speaker_id``, ``real_language_id``, ``real_word_id``: ``--real-dev-dir`` (``python -m manifests.real_dev``)
  ``speaker|language|word/{train,valid,test}.tsv`` + ``.spk|.lang|.wrd``, real human speech
  (:mod:`.real_speech`); mean pooling + linear; accuracy.
- ``separation``: manifest ``test`` + ``.spk``; no training: SI-SNR improvement (dB) of the model's separation
  head on held-out mixtures, one row per ``--interference`` condition (:mod:`.interference`, which also adds
  ``speaker_ver@COND`` rows: EER on interfered trials).
"""
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from fairseq_plugins.evaluate import interference, probes, real_speech
from fairseq_plugins.evaluate.data import (
    FeatureStore,
    NonFiniteError,
    Split,
    carve_per_class,
    encode,
    read_trials,
    resolve_trial_ids,
    symbol_table,
)
from fairseq_plugins.evaluate.probes import ProbeConfig
from fairseq_plugins.evaluate.upstream import (
    BASELINES,
    LogMelUpstream,
    import_user_dir,
    load_upstream,
    random_like,
)

logger = logging.getLogger(__name__)

TASKS = ("phone_ctc", "phone_frame", "speaker_id", "speaker_ver", "keyword", "clip", "content_qbe")
ALL_TASKS = TASKS + interference.OWN_TASKS  # the default run is TASKS; "separation" only when asked for
ALL_TASKS += real_speech.TASKS  # real human speech (--real-dev-dir), only when asked for
# task -> (metric name, higher is better)
METRICS: Dict[str, Tuple[str, bool]] = {
    "phone_ctc": ("PER", False),
    "phone_frame": ("frame accuracy", True),
    "speaker_id": ("accuracy", True),
    "speaker_ver": ("EER", False),
    "keyword": ("accuracy", True),
    "clip": ("accuracy", True),
    "content_qbe": ("MAP", True),
    **real_speech.METRICS,
    "separation": interference.SEPARATION_METRIC,  # SI-SNRi in dB, one row per condition (interference.py)
}
# Default probe budgets, sized so the mini corpus run takes minutes on one CPU core (see README).
# phone_ctc uses a small BiLSTM head: a linear CTC head (SUPERB PR, `--probe phone_ctc.head=linear`) needs far
# more updates and data than the mini corpus has and stays near 100 % PER for every upstream there.
DEFAULT_PROBES: Dict[str, ProbeConfig] = {
    "phone_ctc": ProbeConfig(epochs=20, lr=1e-2, batch_size=4, head="lstm", lstm_dim=64),
    "phone_frame": ProbeConfig(epochs=20, lr=1e-2, batch_size=8),
    "speaker_id": ProbeConfig(epochs=100, lr=1e-2, batch_size=16, weight_decay=1e-3),
    "keyword": ProbeConfig(epochs=80, lr=1e-2, batch_size=32, weight_decay=1e-4),
    "clip": ProbeConfig(epochs=80, lr=1e-2, batch_size=32, weight_decay=1e-4),
    **real_speech.PROBES,
}
DEFAULT_SPLITS = {"phone_ctc": ("train", "valid", "test"), "phone_frame": ("train", "valid", "test"),
                  "speaker_id": ("train", "valid", "auto"), "speaker_ver": ("train", "", "test"),
                  "keyword": ("train", "valid", "test"), "clip": ("train", "valid", "test"),
                  "content_qbe": ("", "valid", "test"), "separation": ("", "", "test")}
DEFAULT_SPLITS.update(real_speech.SPLITS)
SV_WEIGHTS = ("speaker_id", "uniform", "last")


@dataclass
class EvalConfig:
    """Everything one evaluation run needs (the CLI's options)."""

    manifest_dir: str
    out_dir: str
    checkpoints: List[Tuple[str, str, str]] = field(default_factory=list)  # (name, kind, path)
    tasks: List[str] = field(default_factory=lambda: list(TASKS))
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2])
    baselines: List[str] = field(default_factory=lambda: list(BASELINES))
    epochs: Optional[int] = None  # overrides every task's budget
    probes: Dict[str, ProbeConfig] = field(default_factory=lambda: dict(DEFAULT_PROBES))
    splits: Dict[str, Tuple[str, str, str]] = field(default_factory=lambda: dict(DEFAULT_SPLITS))
    trials: Optional[str] = None  # default: MANIFEST/{test split}.trials
    sv_weights: str = "speaker_id"
    keyword_dir: Optional[str] = None  # keyword / content_qbe manifests (train,valid,test .tsv + .kw [+ .spk])
    clip_dir: Optional[str] = None  # clip manifests (train,valid,test .tsv + .cls)
    real_dev_dir: Optional[str] = None  # python -m manifests.real_dev output (speaker/ language/ word/)
    random_init_seed: int = 0
    user_dir: Optional[str] = None
    cache: bool = True
    cache_dtype: str = "float32"
    num_threads: int = 1
    device: str = "cpu"  # where the upstream runs; probes train on the CPU
    interference: List[str] = field(default_factory=list)  # conditions, e.g. ["speech:0", "noise:5"]
    interference_seed: int = 0  # seeds the mixtures (fixed across probe seeds)
    noise_manifest: Optional[str] = None  # default MANIFEST_DIR/noise.tsv

    def probe(self, task: str) -> ProbeConfig:
        cfg = self.probes.get(task, ProbeConfig())
        return replace(cfg, epochs=self.epochs) if self.epochs is not None else cfg


# ------------------------------------------------------------------------------------------------------
# task data: labels and split indices, independent of the upstream
@dataclass
class Part:
    """One probe split: utterances ``indices`` of manifest ``split`` with their ``targets``."""

    split: Split
    indices: List[int]
    targets: List

    def __len__(self) -> int:
        return len(self.indices)


@dataclass
class TaskData:
    name: str
    train: Part
    valid: Optional[Part]
    test: Part
    num_classes: int
    extra: Dict = field(default_factory=dict)


def _whole(split: Split, targets: List) -> Part:
    return Part(split, list(range(len(split))), targets)


KEYWORD_HINT = ("build the synthetic keyword set with `python -m manifests.keywords --out DIR` (or Speech Commands "
                "manifests with `--speech-commands ROOT`)")
CLIP_HINT = "build the procedural clip set with `python -m manifests.clips --out DIR`"


def _data_dir(task: str, directory: Optional[str], flag: str, hint: str) -> str:
    """The data directory of a task that does not read the main manifest, or a clear error.

    The evaluation never synthesises data itself (the synthesisers live in the repository's ``manifests``
    scripts, which the plugin does not import): the user builds the set once and passes its folder.
    """
    if directory is None:
        raise ValueError(f"{task}: no {flag} given; {hint} and pass {flag} DIR")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{task}: {flag} {directory} is not a directory; {hint}")
    return directory


def _classification(name: str, directory: str, names: Sequence[str], suffix: str) -> TaskData:
    splits = [Split(directory, n) for n in names]
    dict_path = os.path.join(directory, f"dict.{suffix}.txt")
    symbols = symbol_table(splits[0], suffix, dict_path)
    index = {s: i for i, s in enumerate(symbols)}
    parts = []
    for sp in splits:
        labels = sp.side(suffix)
        unknown = sorted(set(labels) - set(index))
        if unknown:
            raise ValueError(f"{sp.tsv}: labels {unknown[:5]} are not in {dict_path} / the train split")
        parts.append(_whole(sp, [index[x] for x in labels]))
    return TaskData(name, parts[0], parts[1], parts[2], len(symbols), {"classes": symbols})


def load_task(task: str, cfg: EvalConfig) -> TaskData:
    """Read the labels of ``task`` (and build the synthetic keyword / clip sets when needed)."""
    tr, va, te = cfg.splits[task]
    md = cfg.manifest_dir
    if task == "phone_ctc":
        splits = [Split(md, n) for n in (tr, va, te)]
        symbols = symbol_table(splits[0], "phn", os.path.join(md, "dict.phn.txt"))
        parts = [_whole(s, encode(s.side("phn"), symbols, offset=1, where=f"{s.dir}/{s.name}.phn"))
                 for s in splits]
        return TaskData(task, *parts, num_classes=len(symbols), extra={"symbols": symbols})
    if task == "phone_frame":
        splits = [Split(md, n) for n in (tr, va, te)]
        symbols = symbol_table(splits[0], "phn50", os.path.join(md, "dict.phn50.txt"))
        parts = [_whole(s, [torch.tensor(x, dtype=torch.long) for x in encode(
            s.side("phn50"), symbols, where=f"{s.dir}/{s.name}.phn50")]) for s in splits]
        return TaskData(task, *parts, num_classes=len(symbols), extra={"symbols": symbols})
    if task == "speaker_id":
        train = Split(md, tr)
        spk = train.side("spk")
        if te == "auto":
            keep, carved = carve_per_class(spk, train.utt_ids(), 0.25, salt="speaker_id")
            test_split, test_idx, test_spk = train, carved, [spk[i] for i in carved]
            train_idx = keep
        else:
            test_split = Split(md, te)
            test_idx, test_spk = list(range(len(test_split))), test_split.side("spk")
            train_idx = list(range(len(train)))
        speakers = sorted({spk[i] for i in train_idx})
        index = {s: i for i, s in enumerate(speakers)}
        valid_split = Split(md, va)
        vspk = valid_split.side("spk")
        valid_idx = [i for i, s in enumerate(vspk) if s in index]
        if len(valid_idx) < len(vspk):
            logger.warning("speaker_id: %d %s utterances of speakers outside %s are left out",
                           len(vspk) - len(valid_idx), va, tr)
        missing = sorted({s for s in test_spk if s not in index})
        if missing:
            raise ValueError(f"speaker_id: test speakers {missing[:5]} have no training utterances")
        return TaskData(task, Part(train, train_idx, [index[spk[i]] for i in train_idx]),
                        Part(valid_split, valid_idx, [index[vspk[i]] for i in valid_idx]),
                        Part(test_split, test_idx, [index[s] for s in test_spk]), len(speakers),
                        {"speakers": len(speakers)})
    if task == "speaker_ver":
        test = Split(md, te)
        trials_path = cfg.trials or os.path.join(md, f"{te}.trials")
        if not os.path.isfile(trials_path):
            raise FileNotFoundError(f"speaker_ver: trial list {trials_path} not found (make one with "
                                    f"python -m manifests.trials --manifest-dir {md} --split {te})")
        trials = resolve_trial_ids(read_trials(trials_path), test.utt_ids(), where=trials_path)
        # standardisation statistics: the TRAIN split, or (TRAIN empty) the test split itself (label-free)
        train = Split(md, tr) if tr else test
        return TaskData(task, _whole(train, [None] * len(train)), None,
                        _whole(test, [None] * len(test)), 0, {"trials": trials, "trials_path": trials_path})
    if task == "separation":  # held-out mixtures of TEST's utterances, made by interference.py
        test = Split(md, te)
        return TaskData(task, _whole(test, test.side("spk")), None, _whole(test, test.side("spk")), 0, {})
    if task == "content_qbe":  # the keyword set: the same words said by different voices
        directory = _data_dir(task, cfg.keyword_dir, "--keyword-dir", KEYWORD_HINT)
        parts = []
        for name in (va, te):
            sp = Split(directory, name)
            parts.append(_whole(sp, list(zip(sp.side("kw"), sp.side("spk")))))
        return TaskData(task, parts[0], parts[0], parts[1], 0, {})
    if task == "keyword":
        directory = _data_dir(task, cfg.keyword_dir, "--keyword-dir", KEYWORD_HINT)
        return _classification(task, directory, (tr, va, te), "kw")
    if task == "clip":
        directory = _data_dir(task, cfg.clip_dir, "--clip-dir", CLIP_HINT)
        return _classification(task, directory, (tr, va, te), "cls")
    if task in real_speech.TASKS:
        folder, suffix = real_speech.task_folder(
            task, _data_dir(task, cfg.real_dev_dir, "--real-dev-dir", real_speech.HINT))
        return _classification(task, folder, (tr, va, te), suffix)
    raise ValueError(f"unknown task {task!r}; expected one of {', '.join(ALL_TASKS)}")


# ------------------------------------------------------------------------------------------------------
# one probe run
def _feats(store: FeatureStore, part: Part):
    feats = store.features(part.split)
    return _Subset(feats, part.indices)


class _Subset:
    def __init__(self, items, indices):
        self.items, self.indices = items, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.items[self.indices[i]]


def _pooled(store: FeatureStore, part: Part) -> torch.Tensor:
    return store.pooled(part.split)[part.indices]


def run_task(data: TaskData, store: FeatureStore, cfg: ProbeConfig, seed: int,
             sv_weights: Optional[torch.Tensor] = None) -> Dict:
    """One probe of one task on one upstream for one seed; returns the result record (without names)."""
    tag = f"{store.upstream.name}/{data.name}/seed{seed}"
    t0 = time.time()
    if data.name == "phone_ctc":
        out = probes.train_ctc(*[(_feats(store, p), p.targets) for p in (data.train, data.valid, data.test)],
                               vocab_size=data.num_classes, cfg=cfg, seed=seed, tag=tag)
    elif data.name == "phone_frame":
        out = probes.train_frame_classifier(
            *[(_feats(store, p), p.targets) for p in (data.train, data.valid, data.test)],
            num_classes=data.num_classes, cfg=cfg, seed=seed, tag=tag)
    elif data.name in ("speaker_id", "keyword", "clip") + real_speech.TASKS:
        out = probes.train_pooled_classifier(
            *[(_pooled(store, p), torch.tensor(p.targets, dtype=torch.long))
              for p in (data.train, data.valid, data.test)],
            num_classes=data.num_classes, cfg=cfg, seed=seed, tag=tag)
    elif data.name == "content_qbe":
        out = probes.content_retrieval(*[(_feats(store, p), [t for t, _ in p.targets], [s for _, s in p.targets])
                                         for p in (data.valid, data.test)])
    elif data.name == "speaker_ver":
        mean, std = probes.pooled_stats(_pooled(store, data.train))
        out = probes.speaker_verification(_pooled(store, data.test), data.extra["trials"], sv_weights, mean, std)
    else:
        raise ValueError(data.name)
    out.pop("history", None)
    out["seconds"] = round(time.time() - t0, 3)
    out["sizes"] = {"train": len(data.train), "valid": len(data.valid) if data.valid else 0,
                    "test": len(data.extra["trials"]) if data.name == "speaker_ver" else len(data.test)}
    return out


def _sv_weights(mode: str, num_layers: int, sid: Optional[List[float]]) -> Tuple[torch.Tensor, str]:
    if mode == "speaker_id" and sid is not None:
        return torch.tensor(sid), "speaker_id"
    if mode == "last":
        return torch.nn.functional.one_hot(torch.tensor(num_layers - 1), num_layers).float(), "last"
    return torch.full((num_layers,), 1.0 / num_layers), "uniform"


# ------------------------------------------------------------------------------------------------------
def _upstream_plan(cfg: EvalConfig) -> List[Tuple[str, str]]:
    for name, _, path in cfg.checkpoints:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint {name}={path} not found")
    plan = [(name, "checkpoint") for name, _, _ in cfg.checkpoints]
    for b in cfg.baselines:
        if b not in BASELINES:
            raise ValueError(f"unknown baseline {b!r}; expected {', '.join(BASELINES)}")
        if b == "random" and not cfg.checkpoints:
            logger.warning("the random baseline copies the first checkpoint's architecture: no checkpoint "
                           "given, skipping it")
            continue
        plan.append((b, "baseline"))
    if len({n for n, _ in plan}) != len(plan):
        raise ValueError(f"upstream names must be unique, got {[n for n, _ in plan]}")
    if not plan:
        raise ValueError("nothing to evaluate: give --checkpoints and/or --baselines")
    return plan


def _upstreams(cfg: EvalConfig):
    """Yield the upstreams one at a time (the random baseline right after the first checkpoint)."""
    names = [n for n, _ in _upstream_plan(cfg)]
    for i, (name, kind, path) in enumerate(cfg.checkpoints):
        up = load_upstream(path, name, kind, cfg.manifest_dir)
        yield up
        if i == 0 and "random" in names:
            rnd = random_like(up, cfg.random_init_seed, name="random")
            del up
            yield rnd
    if "logmel" in names:
        yield LogMelUpstream(name="logmel")


def run_evaluation(cfg: EvalConfig) -> List[Dict]:
    """Run every task for every upstream and seed; write ``results.jsonl``, the table and the plots."""
    from fairseq_plugins.evaluate import report

    t_start = time.time()
    torch.set_num_threads(max(1, cfg.num_threads))
    for t in cfg.tasks:
        if t not in ALL_TASKS:
            raise ValueError(f"unknown task {t!r}; expected some of {', '.join(ALL_TASKS)}")
    tasks = sorted(cfg.tasks, key=ALL_TASKS.index)  # speaker_id before speaker_ver
    interference.check(cfg, tasks)
    import_user_dir(cfg.user_dir)
    plan = _upstream_plan(cfg)
    os.makedirs(cfg.out_dir, exist_ok=True)
    results_path = os.path.join(cfg.out_dir, "results.jsonl")
    if os.path.exists(results_path):
        logger.info("%s is from an earlier run; it is replaced only if this run succeeds", results_path)
    logger.info("tasks %s; upstreams %s; seeds %s", ",".join(tasks), ",".join(n for n, _ in plan),
                " ".join(map(str, cfg.seeds)))
    datas = {}
    for t in tasks:
        datas[t] = load_task(t, cfg)
        d = datas[t]
        logger.info("task %s: train %d, valid %d, test %d%s", t, len(d.train), len(d.valid) if d.valid else 0,
                    len(d.test), f", {len(d.extra['trials'])} trials" if t == "speaker_ver" else "")
    results: List[Dict] = []
    upstream_info = {}
    dtype = {"float32": torch.float32, "float16": torch.float16}[cfg.cache_dtype]
    frame_splits = {p.split.tsv for t in ("phone_ctc", "phone_frame", "content_qbe") if t in datas
                    for p in (datas[t].train, datas[t].valid, datas[t].test)}
    for up in _upstreams(cfg):
        up.to(cfg.device)
        store = FeatureStore(up, cache=cfg.cache, cache_dtype=dtype, frame_splits=frame_splits)
        t_up = time.time()
        upstream_info[up.name] = dict(up.info, num_layers=up.num_layers)
        sid_weights: Dict[int, List[float]] = {}
        for task in (t for t in tasks if t not in interference.OWN_TASKS):
            data = datas[task]
            metric, higher = METRICS[task]
            for seed in cfg.seeds:
                pcfg = cfg.probe(task)
                extra = {}
                if task == "speaker_ver":
                    w, source = _sv_weights(cfg.sv_weights, up.num_layers, sid_weights.get(seed))
                    out = run_task(data, store, pcfg, seed, sv_weights=w)
                    extra = {"layer_weights_from": source}
                else:
                    out = run_task(data, store, pcfg, seed)
                if task == "speaker_id":
                    sid_weights[seed] = out["layer_weights"]
                row = {"upstream": up.name, "upstream_kind": up.kind, "task": task, "seed": seed,
                       "metric": metric, "higher_is_better": higher, "value": out.pop("test"), **out, **extra}
                if task != "speaker_ver":
                    row["probe"] = pcfg.to_dict()
                check_finite_row(row)
                results.append(row)
                logger.info("%s %s seed %d: %s %.4f (valid %s, best epoch %s/%s) in %.1f s", up.name, task,
                            seed, metric, row["value"], _fmt(row.get("valid")), row.get("best_epoch", "-"),
                            row.get("epochs_run", "-"), row["seconds"])
        for row in interference.upstream_rows(cfg, up, store, datas, results):
            check_finite_row(row)
            results.append(row)
        upstream_info[up.name]["extract_seconds"] = round(store.seconds, 2)
        upstream_info[up.name]["audio_seconds"] = round(store.audio_seconds, 2)
        logger.info("%s done in %.1f s (feature extraction %.1f s for %.0f s of audio)", up.name,
                    time.time() - t_up, store.seconds, store.audio_seconds)
        store.clear()
        del up, store
    order = [n for n, _ in plan]
    meta = {"tasks": tasks, "upstreams": order, "seeds": cfg.seeds, "upstream_info": upstream_info,
            "manifest_dir": os.path.abspath(cfg.manifest_dir), "seconds": round(time.time() - t_start, 1),
            "probes": {t: cfg.probe(t).to_dict() for t in tasks if t not in ("speaker_ver", *interference.OWN_TASKS)},
            "sv_weights": cfg.sv_weights, "splits": {t: list(cfg.splits[t]) for t in tasks},
            "interference": cfg.interference, "interference_seed": cfg.interference_seed}
    _write_atomic(results_path, "".join(json.dumps(row) + "\n" for row in results))
    _write_atomic(os.path.join(cfg.out_dir, "run.json"), json.dumps(meta, indent=1) + "\n")
    report.write_report(results, cfg.out_dir, upstreams=order, tasks=interference.report_tasks(tasks, cfg),
                        metrics=interference.report_metrics(cfg, METRICS))
    logger.info("evaluation finished in %.1f s; table in %s", time.time() - t_start,
                os.path.join(cfg.out_dir, "table.md"))
    return results


def check_finite_row(row: Dict) -> None:
    """Refuse a result whose score or layer weights are NaN / Inf (they would print as a plausible table)."""
    bad = [k for k in ("value", "valid") if row.get(k) is not None and not math.isfinite(float(row[k]))]
    if any(not math.isfinite(float(w)) for w in row.get("layer_weights") or ()):
        bad.append("layer_weights")
    if bad:
        raise NonFiniteError(f"{row['upstream']}/{row['task']}/seed{row['seed']}: non-finite {', '.join(bad)} "
                             f"(stage: probe result); no results or table are written")


def _write_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (never a half-written file)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4f}"
