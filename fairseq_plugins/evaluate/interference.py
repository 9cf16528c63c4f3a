"""Probes under interference: speaker verification EER on interfered trials, and separation quality (SI-SNRi).

Written for contrastive separative coding (CSC; Wang, Lam, Su, Yu, ICASSP 2021, arXiv 2103.00816), whose claim
is speaker verification that holds up under interfering speakers and noise; usable with every upstream.

Conditions (``--interference speech:0,noise:5,both:0:5``): ``speech:SIR`` mixes in the speech of ANOTHER
speaker of the same held-out split (the unseen test speakers) at ``SIR`` dB, ``noise:SNR`` a segment of the noise
manifest (``--noise-manifest``, default ``MANIFEST_DIR/noise.tsv``) at ``SNR`` dB, ``both:SIR:SNR`` both (the
noise's SNR against the target alone). The mixing is the ``interferer(...)`` augmentation of pre-training
(:class:`fairseq_plugins.data.augment.Interferer`, one home for mixing at a given SIR/SNR) with ``cover=1``:
the interferer spans the whole target and the ratio is measured over the whole target. Every mixture is
seeded by ``(--interference-seed, condition, utterance names)`` through SHA-256, so it is the same in every
run, for every upstream and probe seed, and does not depend on the order of trials or conditions.

- ``speaker_ver@COND`` (EER, %): the clean condition's trial list (``speaker_ver``), the first utterance of each
  trial (enrolment) clean and the second (test) replaced by its mixture; the interfering speaker is neither the
  test utterance's speaker nor the enrolment utterance's, so a trial never gains the claimed speaker's voice
  (this needs at least 3 speakers in the test split). One mixture per distinct trial pair. Scored exactly like
  the clean condition of the same seed: the same layer weights (read from its result row), the same
  standardisation statistics, cosine scoring, EER (:func:`fairseq_plugins.evaluate.probes.speaker_verification`).
- ``separation@COND`` (task ``separation``; SI-SNRi, dB): every utterance of the held-out split mixed once
  (the interferer never its own speaker), separated by the model's separation head (``model.separate``, e.g.
  the ``csc`` model's), and scored as the mean over utterances of ``SI-SNR(estimate, clean) - SI-SNR(mixture,
  clean)`` (:func:`fairseq_plugins.losses.csc.si_snr`); the unprocessed mixture scores 0. Upstreams without a
  separation head (log-mel, HuBERT, ...) get no row: ``–`` (not applicable) in the table. Without
  ``--interference`` the separation condition is ``speech:0``.
"""
import hashlib
import logging
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from fairseq_plugins.data.augment import Interferer, seeded_rng
from fairseq_plugins.evaluate import probes
from fairseq_plugins.evaluate.data import Split
from fairseq_plugins.evaluate.upstream import SAMPLE_RATE

logger = logging.getLogger(__name__)

SEPARATION = "separation"
OWN_TASKS = (SEPARATION,)  # tasks this module runs (the pipeline's per-task loop skips them)
SEPARATION_METRIC = ("SI-SNRi (dB)", True)
DEFAULT_SEPARATION_CONDITIONS = "speech:0"
CONDITION_KINDS = ("speech", "noise", "both")


@dataclass(frozen=True)
class Condition:
    """One interference condition: ``kind`` speech / noise / both with its ``sir`` / ``snr`` in dB."""

    kind: str
    sir: Optional[float] = None
    snr: Optional[float] = None

    @property
    def name(self) -> str:
        values = [v for v in (self.sir, self.snr) if v is not None]
        return ":".join([self.kind] + [f"{v:g}" for v in values])

    @property
    def needs_speech(self) -> bool:
        return self.kind in ("speech", "both")

    @property
    def needs_noise(self) -> bool:
        return self.kind in ("noise", "both")


def parse_conditions(text: str) -> List[Condition]:
    """``"speech:0,noise:5,both:0:5"`` -> conditions (ValueError naming the bad item)."""
    out: List[Condition] = []
    for item in (x.strip() for x in str(text).split(",")):
        if not item:
            continue
        kind, *values = item.split(":")
        want = {"speech": 1, "noise": 1, "both": 2}.get(kind)
        try:
            numbers = [float(v) for v in values]
        except ValueError:
            numbers = None
        if want is None or numbers is None or len(numbers) != want:
            raise ValueError(f"--interference {item!r}: expected speech:SIR_DB, noise:SNR_DB or both:SIR_DB:SNR_DB "
                             f"(e.g. speech:0,noise:5)")
        if not all(np.isfinite(numbers)):
            raise ValueError(f"--interference {item!r}: the dB values must be finite")
        sir = numbers[0] if kind in ("speech", "both") else None
        snr = numbers[-1] if kind in ("noise", "both") else None
        cond = Condition(kind, sir, snr)
        if cond.name in (c.name for c in out):
            raise ValueError(f"--interference {item!r} is given twice")
        out.append(cond)
    return out


def _key(text: str) -> int:
    """A non-negative 63-bit integer of ``text`` (SHA-256; the same in every process and platform)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


class MixtureMaker:
    """Deterministic mixtures of the utterances of one manifest split under one :class:`Condition`.

    ``mix(i, key, exclude)`` mixes utterance ``i`` of ``split``; the interfering speech comes from a speaker of
    the same split (``{split}.spk``) that is neither utterance ``i``'s nor in ``exclude``; noise from
    ``noise_manifest``. The generator is keyed by ``(seed, condition name, key)``.
    """

    def __init__(self, split: Split, condition: Condition, seed: int, noise_manifest: Optional[str]):
        if condition.needs_noise and not noise_manifest:
            raise ValueError(f"interference {condition.name}: no noise manifest given")
        self.split, self.condition, self.seed = split, condition, int(seed)
        self.speakers = split.side("spk")
        params = {"kind": condition.kind, "cover": "1"}
        if condition.sir is not None:
            params["sir"] = f"{condition.sir:g}"
        if condition.snr is not None:
            params["snr"] = f"{condition.snr:g}"
        self.interferer = Interferer(SAMPLE_RATE, speech_manifest=split.tsv if condition.needs_speech else None,
                                     noise_manifest=noise_manifest if condition.needs_noise else None, **params)

    def mix(self, i: int, key: str, exclude: Sequence[str] = ()) -> Tuple[np.ndarray, np.ndarray, Dict]:
        """``(clean, mixture, info)`` of utterance ``i`` (float32 waveforms; ``info`` as
        :meth:`Interferer.mix`)."""
        clean = self.split.read(i)
        rng = seeded_rng(self.seed, _key(self.condition.name), _key(key))
        mixture, info = self.interferer.mix(clean, rng, speaker=self.speakers[i], exclude=exclude)
        return clean, mixture, info


# ------------------------------------------------------------------------------------------------------
# configuration checks and report layout (called by the pipeline)
def conditions(cfg) -> List[Condition]:
    return parse_conditions(",".join(cfg.interference))


def separation_conditions(cfg) -> List[Condition]:
    return conditions(cfg) or parse_conditions(DEFAULT_SEPARATION_CONDITIONS)


def noise_manifest(cfg) -> Optional[str]:
    """``--noise-manifest``, else ``MANIFEST_DIR/noise.tsv``; a FileNotFoundError when a noise condition is asked
    for and the file is missing."""
    path = cfg.noise_manifest or os.path.join(cfg.manifest_dir, "noise.tsv")
    return path if os.path.isfile(path) else None


def check(cfg, tasks: Sequence[str]) -> None:
    """Refuse, before any upstream is loaded, an interference request that cannot run."""
    conds = conditions(cfg)
    if conds and "speaker_ver" not in tasks and SEPARATION not in tasks:
        raise ValueError(f"--interference {','.join(c.name for c in conds)} needs the task speaker_ver and/or "
                         f"{SEPARATION} in --tasks")
    used = conds if "speaker_ver" in tasks else []
    if SEPARATION in tasks:
        used = used + separation_conditions(cfg)
    # interfering speech comes from another speaker of the scored split: verification needs one that is
    # neither trial speaker, separation one that is not the target's
    for task, least in (("speaker_ver", 3), (SEPARATION, 2)):
        conds_of_task = conds if task == "speaker_ver" else separation_conditions(cfg)
        if task in tasks and any(c.needs_speech for c in conds_of_task):
            split = Split(cfg.manifest_dir, cfg.splits[task][2])
            speakers = sorted(set(split.side("spk")))
            if len(speakers) < least:
                raise ValueError(
                    f"{task} under interfering speech needs at least {least} speakers in "
                    f"{os.path.splitext(split.tsv)[0]}.spk (the interferer is never "
                    f"{'a trial speaker' if least == 3 else 'the target speaker'}), found {len(speakers)}: "
                    f"{', '.join(speakers)}")
    if any(c.needs_noise for c in used) and noise_manifest(cfg) is None:
        where = cfg.noise_manifest or os.path.join(cfg.manifest_dir, "noise.tsv")
        raise FileNotFoundError(f"--interference {','.join(c.name for c in used if c.needs_noise)}: noise manifest "
                                f"{where} not found; pass --noise-manifest FILE (a fairseq TSV of noise files)")


def report_tasks(tasks: Sequence[str], cfg) -> List[str]:
    """The table's rows: ``speaker_ver`` followed by its interfered conditions, ``separation@COND`` per
    separation condition, every other task as it is."""
    out: List[str] = []
    for t in tasks:
        if t == "speaker_ver":
            out += [t] + [f"{t}@{c.name}" for c in conditions(cfg)]
        elif t == SEPARATION:
            out += [f"{t}@{c.name}" for c in separation_conditions(cfg)]
        else:
            out.append(t)
    return out


def report_metrics(cfg, metrics: Dict[str, Tuple[str, bool]]) -> Dict[str, Tuple[str, bool]]:
    """``metrics`` with the rows of :func:`report_tasks` added."""
    out = dict(metrics)
    for c in conditions(cfg):
        out[f"speaker_ver@{c.name}"] = metrics["speaker_ver"]
    for c in separation_conditions(cfg):
        out[f"{SEPARATION}@{c.name}"] = SEPARATION_METRIC
    return out


# ------------------------------------------------------------------------------------------------------
# speaker verification under interference
def _db(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(np.square(a, dtype=np.float64)) / max(np.sum(np.square(b, dtype=np.float64)),
                                                                               1e-30)))


def interfered_verification(store, data, clean_rows: Dict[int, Dict], condition: Condition, seed: int,
                            noise: Optional[str]) -> List[Dict]:
    """EER of ``data`` (the pipeline's ``speaker_ver`` task data) under ``condition``, one result record per
    probe seed of ``clean_rows`` (``seed -> the clean speaker_ver record``, whose layer weights are reused)."""
    test = data.test.split
    trials = data.extra["trials"]
    maker = MixtureMaker(test, condition, seed, noise)
    utts = test.utt_ids()
    pairs: Dict[Tuple[int, int], int] = {}
    for _, a, b in trials:
        pairs.setdefault((a, b), len(pairs))
    pooled, achieved = [], {"sir": [], "snr": []}
    same_speaker = 0
    for a, b in pairs:
        clean, mixture, info = maker.mix(b, f"{utts[a]}|{utts[b]}", exclude=(maker.speakers[a],))
        same_speaker += info["interferer_speaker"] in (maker.speakers[a], maker.speakers[b])
        for what, part in (("sir", "speech"), ("snr", "noise")):
            if info[what] is not None and info[part].any():
                achieved[what].append(_db(clean, info[part]))
        where = f"{test.tsv}: trial pair ({utts[a]}, {utts[b]}) under interference {condition.name}"
        pooled.append(store.extract_waveform(mixture, where).mean(dim=1))
    if same_speaker:  # Interferer.mix excludes both speakers; a violation is a bug, never a result
        raise RuntimeError(f"interference {condition.name}: {same_speaker} mixtures hold a trial speaker")
    clean = store.pooled(test)
    emb = torch.cat([clean, torch.stack(pooled).to(clean.dtype)])
    mixed_trials = [(label, a, len(clean) + pairs[(a, b)]) for label, a, b in trials]
    mean, std = probes.pooled_stats(store.pooled(data.train.split)[data.train.indices])
    rows = []
    for _, clean_row in sorted(clean_rows.items()):
        out = probes.speaker_verification(emb, mixed_trials, torch.tensor(clean_row["layer_weights"]), mean, std)
        rows.append({**{k: v for k, v in clean_row.items() if k not in ("value", "per_layer_eer", "seconds")},
                     "task": f"speaker_ver@{condition.name}", "value": out["test"],
                     "per_layer_eer": out["per_layer_eer"], "seconds": round(out["seconds"], 3),
                     "interference": _describe(condition, seed, noise, len(pairs), achieved)})
    return rows


def _describe(condition: Condition, seed: int, noise: Optional[str], mixtures: int, achieved: Dict) -> Dict:
    out = {"condition": condition.name, "kind": condition.kind, "sir_db": condition.sir, "snr_db": condition.snr,
           "seed": seed, "mixtures": mixtures, "noise_manifest": os.path.abspath(noise) if noise else None}
    for what, values in achieved.items():
        if values:
            out[f"achieved_{what}_db"] = [round(float(np.min(values)), 4), round(float(np.max(values)), 4)]
    return out


# ------------------------------------------------------------------------------------------------------
# separation quality
def separator(upstream):
    """The upstream model's ``separate(mixtures N x L) -> estimates N x L``, or None when it has no separation
    head (log-mel, HuBERT, a csc encoder whose heads were removed)."""
    model = getattr(upstream, "model", None)
    fn = getattr(model, "separate", None)
    if callable(fn) and getattr(model, "has_separation_head", False):
        return fn
    return None


def separation_quality(upstream, split: Split, condition: Condition, seed: int,
                       noise: Optional[str]) -> Optional[Dict]:
    """Mean SI-SNR of the estimates, of the mixtures and their improvement (dB) over every utterance of
    ``split`` mixed under ``condition``; None when ``upstream`` has no separation head."""
    from fairseq_plugins.data.audio import normalize_waveform
    from fairseq_plugins.losses.csc import si_snr

    separate = separator(upstream)
    if separate is None:
        return None
    maker = MixtureMaker(split, condition, seed, noise)
    utts = split.utt_ids()
    out_db, in_db = [], []
    for i in range(len(split)):
        clean, mixture, _ = maker.mix(i, utts[i])
        x = torch.from_numpy(mixture).view(1, -1)
        with torch.no_grad():
            inp = normalize_waveform(x) if getattr(upstream, "normalize", False) else x
            est = separate(inp.to(upstream.device)).float().cpu()
        ref = torch.from_numpy(clean).view(1, -1)
        if not torch.isfinite(est).all():
            raise FloatingPointError(f"{split.tsv}: utterance {utts[i]!r}: the separation estimate of "
                                     f"{upstream.name} is not finite (stage: separation, {condition.name})")
        out_db.append(float(si_snr(est, ref)[0]))
        in_db.append(float(si_snr(x, ref)[0]))
    improvement = np.array(out_db) - np.array(in_db)
    return {"si_snri": float(improvement.mean()), "si_snr_out": float(np.mean(out_db)),
            "si_snr_in": float(np.mean(in_db)), "si_snri_std": float(improvement.std()), "utterances": len(split),
            "interference": _describe(condition, seed, noise, len(split), {})}


# ------------------------------------------------------------------------------------------------------
def upstream_rows(cfg, upstream, store, datas: Dict, results: Sequence[Dict]) -> List[Dict]:
    """Every interfered speaker-verification and separation record of one upstream (called by the pipeline
    after the upstream's other tasks; ``results`` holds its clean ``speaker_ver`` records)."""
    rows: List[Dict] = []
    noise = noise_manifest(cfg)
    if "speaker_ver" in datas and conditions(cfg):
        clean_rows = {r["seed"]: r for r in results if r["upstream"] == upstream.name and r["task"] == "speaker_ver"}
        for cond in conditions(cfg):
            new = interfered_verification(store, datas["speaker_ver"], clean_rows, cond, cfg.interference_seed,
                                          noise)
            rows += new
            logger.info("%s speaker_ver@%s: EER %s (seeds %s)", upstream.name, cond.name,
                        " ".join(f"{r['value']:.4f}" for r in new), " ".join(str(r["seed"]) for r in new))
    if SEPARATION in datas:
        split = datas[SEPARATION].test.split
        for cond in separation_conditions(cfg):
            q = separation_quality(upstream, split, cond, cfg.interference_seed, noise)
            if q is None:
                logger.info("%s: no separation head, %s@%s not applicable", upstream.name, SEPARATION, cond.name)
                break
            logger.info("%s %s@%s: SI-SNRi %.2f dB (mixture %.2f dB -> estimate %.2f dB, %d utterances)",
                        upstream.name, SEPARATION, cond.name, q["si_snri"], q["si_snr_in"], q["si_snr_out"],
                        q["utterances"])
            metric, higher = SEPARATION_METRIC
            for seed in cfg.seeds:  # no probe is trained: the same number for every probe seed
                rows.append({"upstream": upstream.name, "upstream_kind": upstream.kind,
                             "task": f"{SEPARATION}@{cond.name}", "seed": seed, "metric": metric, "unit": "dB",
                             "higher_is_better": higher, "value": q["si_snri"],
                             **{k: v for k, v in q.items() if k != "si_snri"}})
    return rows
