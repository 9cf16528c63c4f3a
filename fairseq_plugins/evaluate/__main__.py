"""``python -m fairseq_plugins.evaluate``: SUPERB/LAPE-style probes of frozen checkpoints, side by side.

See ``fairseq_plugins/evaluate/README.md`` for the tasks, the data layouts and how to read the table.
"""
import argparse
import dataclasses
import logging
import os
import sys
from typing import Dict, List, Optional

from fairseq_plugins.compat import cli_logging
from fairseq_plugins.evaluate.interference import parse_conditions
from fairseq_plugins.evaluate.pipeline import (
    ALL_TASKS,
    DEFAULT_PROBES,
    DEFAULT_SPLITS,
    SV_WEIGHTS,
    TASKS,
    EvalConfig,
    run_evaluation,
)
from fairseq_plugins.evaluate.probes import ProbeConfig
from fairseq_plugins.evaluate.upstream import BASELINES, parse_checkpoint_arg

logger = logging.getLogger("fairseq_plugins.evaluate")

EXAMPLE = """examples:
  # a checkpoint against the log-mel and random-init floors on the mini corpus, 3 seeds
  python -m fairseq_plugins.evaluate --checkpoints hubert=/abs/ckpt/checkpoint_last.pt \\
      --manifest-dir mini/manifest --out eval_out --seeds 0 1 2

  # two checkpoints, two tasks, a longer CTC budget with a BiLSTM head
  python -m fairseq_plugins.evaluate --checkpoints base=a.pt laser=b.pt --tasks phone_ctc,phone_frame \\
      --manifest-dir mini/manifest --out eval_out --probe phone_ctc.epochs=100 phone_ctc.head=lstm
"""


def _csv_list(text: str, allowed, what: str) -> List[str]:
    items = [x.strip() for x in text.split(",") if x.strip() and x.strip() != "none"]
    bad = [x for x in items if x not in allowed]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(bad)}; choose from {', '.join(allowed)}")
    return items


def _interference(text: str) -> List[str]:
    try:
        return [c.name for c in parse_conditions(text)]
    except ValueError as e:  # argparse shows only an ArgumentTypeError's own message
        raise argparse.ArgumentTypeError(str(e)) from None


def _probe_overrides(specs: List[str]) -> Dict[str, ProbeConfig]:
    probes = dict(DEFAULT_PROBES)
    fields = {f.name: f.type for f in dataclasses.fields(ProbeConfig)}
    for spec in specs:
        key, sep, value = spec.partition("=")
        task, dot, name = key.partition(".")
        if not sep or not dot or task not in probes or name not in fields:
            raise argparse.ArgumentTypeError(
                f"--probe {spec!r}: expected TASK.FIELD=VALUE with TASK in {', '.join(probes)} and FIELD in "
                f"{', '.join(fields)}")
        cast = fields[name] if isinstance(fields[name], type) else str
        try:
            value = cast(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--probe {spec!r}: {name} must be a {cast.__name__}") from None
        probes[task] = dataclasses.replace(probes[task], **{name: value})
    return probes


def _split_overrides(specs: List[str]) -> Dict:
    splits = dict(DEFAULT_SPLITS)
    for spec in specs:
        task, sep, value = spec.partition("=")
        names = value.split(",")
        if not sep or task not in splits or len(names) != 3:
            raise argparse.ArgumentTypeError(f"--split-map {spec!r}: expected TASK=TRAIN,VALID,TEST with TASK in "
                                             f"{', '.join(splits)}")
        splits[task] = tuple(names)
    return splits


def build_parser() -> argparse.ArgumentParser:
    defaults = "; ".join(f"{t}: epochs={p.epochs} lr={p.lr} batch_size={p.batch_size}"
                         for t, p in DEFAULT_PROBES.items())
    p = argparse.ArgumentParser(
        prog="python -m fairseq_plugins.evaluate",
        description="Probe frozen speech/audio representations SUPERB-style (learned softmax-weighted sum of "
                    "all layers + light heads) on phone recognition (PER), frame phone classification, speaker "
                    "id, speaker verification (EER), keyword spotting and clip classification; write one "
                    "side-by-side table (OUT/table.md, OUT/table.csv), plots and OUT/results.jsonl.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoints", nargs="*", default=[], metavar="NAME=PATH",
                   help="checkpoints to evaluate, as NAME=PATH (NAME is the table column; PATH alone uses the "
                        "file name). fairseq HuBERT/wav2vec2/plugin checkpoints and WavLM release files are "
                        "detected; force one with NAME=fairseq:PATH or NAME=wavlm:PATH")
    p.add_argument("--manifest-dir", required=True,
                   help="fairseq manifest directory with {train,valid,test}.tsv and side files (.phn, .phn50, "
                        ".spk, .utt, dict.phn.txt, dict.phn50.txt, test.trials), e.g. the mini corpus's manifest/")
    p.add_argument("--out", required=True, help="output directory for the table, plots, results.jsonl and "
                                                "the synthesised keyword/clip sets (OUT/data/)")
    p.add_argument("--tasks", type=lambda s: _csv_list(s, ALL_TASKS, "task"), default=list(TASKS),
                   help=f"comma-separated tasks (default: {','.join(TASKS)}; also: separation, the SI-SNR "
                        f"improvement of a model's separation head on held-out mixtures)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="probe seeds (initialisation and batch order); the table reports mean ± std over them "
                        "(default: 0 1 2)")
    p.add_argument("--epochs", type=int, default=None,
                   help="training budget in epochs for every probe, overriding the per-task defaults "
                        f"({defaults})")
    p.add_argument("--probe", nargs="*", default=[], metavar="TASK.FIELD=VALUE",
                   help="per-task probe settings, FIELD one of epochs, lr, batch_size, patience (epochs without "
                        "validation improvement before stopping; 0 = never), weight_decay, head (phone_ctc: "
                        "linear or lstm), lstm_dim; e.g. phone_ctc.epochs=100")
    p.add_argument("--baselines", type=lambda s: _csv_list(s, BASELINES, "baseline"), default=list(BASELINES),
                   help="comma-separated floors: logmel (80-bin log-mel, 50 Hz) and random (the first "
                        "checkpoint's architecture, randomly initialised); 'none' for none (default: "
                        "logmel,random)")
    p.add_argument("--user-dir", default=None,
                   help="fairseq --user-dir to import before loading plugin checkpoints (this package is "
                        "always imported)")
    p.add_argument("--split-map", nargs="*", default=[], metavar="TASK=TRAIN,VALID,TEST",
                   help="manifest split names per task (default: train,valid,test; speaker_id: train,valid,auto "
                        "where auto carves ~25%% of each speaker's train utterances as probe-test; speaker_ver: "
                        "TEST is scored, TRAIN only gives the standardisation statistics, an empty TRAIN uses "
                        "TEST's own, label-free)")
    p.add_argument("--trials", default=None,
                   help="speaker verification trial list, lines 'LABEL UTT_A UTT_B' (default: "
                        "MANIFEST_DIR/<speaker_ver test split>.trials); utterance names may keep their extension")
    p.add_argument("--sv-weights", choices=SV_WEIGHTS, default="speaker_id",
                   help="layer mix of the speaker-verification embeddings: the speaker_id probe's learned "
                        "weights of the same seed (default; uniform if speaker_id is not run), uniform, or last")
    p.add_argument("--keyword-dir", default=None,
                   help="keyword manifests {train,valid,test}.tsv + .kw (+ .spk for content_qbe), needed by the "
                        "keyword and content_qbe tasks: build them with python -m manifests.keywords --out DIR "
                        "(synthetic voices) or --speech-commands ROOT")
    p.add_argument("--clip-dir", default=None,
                   help="clip manifests {train,valid,test}.tsv + .cls, needed by the clip task: build them with "
                        "python -m manifests.clips --out DIR")
    p.add_argument("--real-dev-dir", default=None,
                   help="real human speech for the real_speaker_id, real_language_id and real_word_id tasks "
                        "(not run by default): the folder built by python -m manifests.real_dev --out DIR")
    p.add_argument("--random-init-seed", type=int, default=0,
                   help="seed of the random-init baseline's weights (fixed across probe seeds; default: 0)")
    p.add_argument("--no-cache", action="store_true",
                   help="do not keep frame features in memory (recompute them per epoch; for corpora that do "
                        "not fit). Time-pooled features are always cached")
    p.add_argument("--cache-dtype", choices=("float32", "float16"), default="float32",
                   help="precision of the in-memory feature cache (default: float32)")
    p.add_argument("--num-threads", type=int, default=1,
                   help="torch CPU threads (default: 1; more threads only help on an idle many-core machine)")
    p.add_argument("--device", default="cpu",
                   help="torch device of the upstream forward passes, e.g. cuda (default: cpu); probes train on "
                        "the CPU from the cached features")
    p.add_argument("--interference", type=_interference, default=[],
                   metavar="COND,...",
                   help="interfered speaker-verification trials, one speaker_ver@COND row each (the clean trial "
                        "list, test side mixed; needs speaker_ver), and the separation task's conditions: "
                        "speech:SIR_DB (another held-out speaker), noise:SNR_DB (--noise-manifest), both:SIR:SNR; "
                        "e.g. speech:0,noise:5")
    p.add_argument("--interference-seed", type=int, default=0,
                   help="seed of the interference mixtures (fixed across probe seeds; default: 0)")
    p.add_argument("--noise-manifest", default=None,
                   help="fairseq TSV of noise files for noise conditions (default: MANIFEST_DIR/noise.tsv)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging (per-epoch probe losses)")
    return p


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    checkpoints = [parse_checkpoint_arg(s) for s in args.checkpoints]
    return EvalConfig(
        manifest_dir=args.manifest_dir, out_dir=args.out, checkpoints=checkpoints, tasks=args.tasks,
        seeds=args.seeds, baselines=args.baselines, epochs=args.epochs, probes=_probe_overrides(args.probe),
        splits=_split_overrides(args.split_map), trials=args.trials, sv_weights=args.sv_weights,
        keyword_dir=args.keyword_dir, clip_dir=args.clip_dir, real_dev_dir=args.real_dev_dir,
        random_init_seed=args.random_init_seed, user_dir=args.user_dir, cache=not args.no_cache,
        cache_dtype=args.cache_dtype, num_threads=args.num_threads,
        device=args.device, interference=args.interference, interference_seed=args.interference_seed,
        noise_manifest=args.noise_manifest)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cli_logging(verbose=args.verbose)
    if not args.verbose:  # fairseq's task/model set-up is chatty at INFO
        logging.getLogger("fairseq").setLevel(logging.WARNING)
    try:
        cfg = config_from_args(args)
    except (ValueError, argparse.ArgumentTypeError) as e:
        parser.error(str(e))
    try:
        run_evaluation(cfg)
    except (FileNotFoundError, ValueError, RuntimeError, FloatingPointError) as e:
        logger.error("%s", e)
        logger.error("evaluation stopped: no results.jsonl or table written to %s", cfg.out_dir)
        return 1
    with open(os.path.join(cfg.out_dir, "table.md")) as f:
        sys.stdout.write(f.read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
