"""The evidence harness: train every run of a suite at a fixed budget, probe them side by side, write the table.

    python -m evidence --suite evidence/suites/main.yaml --out evidence_out [--evidence-md EVIDENCE.md]

A suite (``evidence/suites/*.yaml``) names the data it needs, the pre-training runs (a fairseq-hydra-train
config, a fixed number of updates, overrides), the pre-training seeds, the probe tasks and the probe seeds.
The harness

1. builds the data once under ``OUT/data/`` (a directory per data set and its parameters, shared by every
   suite run into the same OUT): the pre-training mini corpus (+ its MFCC k-means HuBERT labels), procedural
   clips, the probe corpus (other voices and sentences), keyword and clip probe sets;
2. trains every run x pre-training seed with ``fairseq-hydra-train`` (``JOBS`` at a time, one thread each, a
   run waits for the runs it names with ``{run:NAME}``), each in ``OUT/<suite>/runs/<name>_s<seed>/``;
3. probes each checkpoint with ``python -m fairseq_plugins.evaluate`` (the first one together with the log-mel
   and random-init floors) into ``OUT/<suite>/eval/<name>_s<seed>/``;
4. pools every result over pre-training seeds x probe seeds (:mod:`fairseq_plugins.evaluate.pool_seeds`) into
   ``OUT/<suite>/report.md`` and a figure, and with ``--evidence-md`` replaces the suite's section of that file.

It resumes: a finished step (its ``done.json`` records the exact command) is not redone; a step whose recorded
command differs from the suite's is an error naming the directory (delete it to redo it), never silently
reused. Placeholders in a run's ``overrides`` / ``prepare`` / ``probe``: ``{pretrain}`` (the pre-training
manifest directory), ``{pretrain_clips}``, ``{run:NAME}`` (checkpoint_last.pt of run NAME, same seed),
``{run_dir}``, ``{seed}``, ``{python}``, ``{repo}``.
"""
import argparse
import dataclasses
import datetime
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Dict, List, Optional, Sequence, Tuple

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN = os.path.join(REPO, "fairseq_plugins")

# data sets a suite can ask for: name -> (parameters and their defaults, the command that builds it)
DATA_DEFAULTS: Dict[str, Dict] = {
    "pretrain": {"seed": 0, "minutes": 12.0, "num_speakers": 24, "hubert_clusters": 50, "args": []},
    "pretrain_clips": {"seed": 0, "per_class": [48, 12, 24]},
    "probe": {"seed": 1, "minutes": 12.0, "num_speakers": 48, "args": []},
    "keywords": {"seed": 1, "repeats": 4},
    "clips": {"seed": 1, "per_class": [48, 12, 24]},
    "real_dev": {"seed": 0},  # real human speech from Debian packages (python -m manifests.real_dev)
}
SUITE_KEYS = {"name", "title", "question", "data", "seeds", "probe_seeds", "tasks", "baselines", "eval_args",
              "runs", "jobs"}
RUN_KEYS = {"name", "like", "config", "updates", "overrides", "extra_overrides", "prepare", "probe", "about"}
PLACEHOLDER = re.compile(r"\{([a-z_]+)(?::([A-Za-z0-9_.-]+))?\}")


class SuiteError(ValueError):
    """A suite file that does not say what the harness needs; the message names the file and the field."""


class StepError(RuntimeError):
    """A training / probing / data step that failed or that conflicts with an earlier run in the same OUT."""


@dataclasses.dataclass
class Run:
    name: str
    config: str
    updates: int
    overrides: List[str]
    prepare: List[str]
    probe: str
    about: str

    def needs(self) -> List[str]:
        text = " ".join(self.overrides + self.prepare + [self.probe])
        return sorted({arg for key, arg in PLACEHOLDER.findall(text) if key == "run"})


@dataclasses.dataclass
class Suite:
    path: str
    name: str
    title: str
    question: str
    data: Dict[str, Dict]
    seeds: List[int]
    probe_seeds: List[int]
    tasks: List[str]
    baselines: List[str]
    eval_args: List[str]
    runs: List[Run]
    jobs: int


def _need(d: Dict, key: str, where: str, kind=None):
    if key not in d:
        raise SuiteError(f"{where}: missing field {key!r}")
    if kind is not None and not isinstance(d[key], kind):
        raise SuiteError(f"{where}: field {key!r} must be {getattr(kind, '__name__', kind)}, got {d[key]!r}")
    return d[key]


def _known_fields(d: Dict, known, where: str) -> None:
    unknown = set(d) - set(known)
    if unknown:
        raise SuiteError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")


def _int_list(d: Dict, key: str, where: str) -> List[int]:
    v = _need(d, key, where, list)
    if not v or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        raise SuiteError(f"{where}: field {key!r} must be a non-empty list of integers, got {v!r}")
    return v


def load_suite(path: str) -> Suite:
    """Read and check a suite file; every problem is a :class:`SuiteError` naming the file and the field."""
    from fairseq_plugins.evaluate.pipeline import ALL_TASKS as TASKS
    from fairseq_plugins.evaluate.upstream import BASELINES

    try:
        with open(path) as f:
            doc = yaml.safe_load(f)
    except OSError as e:
        raise SuiteError(f"{path}: cannot read the suite file ({e})") from e
    except yaml.YAMLError as e:
        raise SuiteError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(doc, dict):
        raise SuiteError(f"{path}: expected a mapping at the top level")
    _known_fields(doc, SUITE_KEYS, path)
    data = {}
    for key, params in (doc.get("data") or {}).items():
        if key not in DATA_DEFAULTS:
            raise SuiteError(f"{path}: data.{key}: unknown data set; known: {', '.join(DATA_DEFAULTS)}")
        params = params or {}
        bad = set(params) - set(DATA_DEFAULTS[key])
        if bad:
            raise SuiteError(f"{path}: data.{key}: unknown parameter(s) {', '.join(sorted(bad))}; known: "
                             f"{', '.join(DATA_DEFAULTS[key])}")
        data[key] = {**DATA_DEFAULTS[key], **params}
    if "probe" not in data:
        raise SuiteError(f"{path}: data.probe: every suite probes on a probe corpus; add `probe: {{}}` under data")
    tasks = _need(doc, "tasks", path, list)
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise SuiteError(f"{path}: tasks: unknown or empty {bad or tasks}; known: {', '.join(TASKS)}")
    if "keyword" in tasks or "content_qbe" in tasks:
        data.setdefault("keywords", dict(DATA_DEFAULTS["keywords"]))
    if "clip" in tasks:
        data.setdefault("clips", dict(DATA_DEFAULTS["clips"]))
    if any(t.startswith("real_") for t in tasks):
        data.setdefault("real_dev", dict(DATA_DEFAULTS["real_dev"]))
    baselines = doc.get("baselines", list(BASELINES))
    if not isinstance(baselines, list) or any(b not in BASELINES for b in baselines):
        raise SuiteError(f"{path}: baselines: expected a list from {', '.join(BASELINES)}, got {baselines!r}")
    runs: List[Run] = []
    raw_runs = _need(doc, "runs", path, list)
    by_name: Dict[str, Dict] = {}
    for i, raw in enumerate(raw_runs):
        where = f"{path}: runs[{i}]"
        if not isinstance(raw, dict):
            raise SuiteError(f"{where}: expected a mapping")
        _known_fields(raw, RUN_KEYS, where)
        name = _need(raw, "name", where, str)
        where = f"{path}: run {name!r}"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]*(_[A-Za-z0-9.-]+)*", name) or re.search(r"_s\d+$", name):
            raise SuiteError(f"{where}: name must be letters, digits, '.', '-', '_' and must not end in _s<digits> "
                             "(the seed suffix)")
        if name in by_name:
            raise SuiteError(f"{where}: the name is used twice")
        merged = dict(raw)
        if "like" in raw:
            base = by_name.get(raw["like"])
            if base is None:
                raise SuiteError(f"{where}: like: {raw['like']!r} is not an earlier run of this suite")
            merged = {**base, **{k: v for k, v in raw.items() if k != "like"}}
        merged["overrides"] = list(merged.get("overrides") or []) + list(raw.get("extra_overrides") or [])
        merged.pop("extra_overrides", None)
        by_name[name] = {k: v for k, v in merged.items() if k != "like"}
        config = _need(merged, "config", where, str)
        if not os.path.isfile(os.path.join(REPO, config)):
            raise SuiteError(f"{where}: config: {config} does not exist (paths are relative to the repository)")
        updates = _need(merged, "updates", where, int)
        if updates < 1:
            raise SuiteError(f"{where}: updates must be >= 1, got {updates}")
        for key in ("overrides", "prepare"):
            if not all(isinstance(x, str) for x in merged.get(key) or []):
                raise SuiteError(f"{where}: {key} must be a list of strings")
        runs.append(Run(name=name, config=config, updates=updates, overrides=merged["overrides"],
                        prepare=list(merged.get("prepare") or []), probe=merged.get("probe", "{run:" + name + "}"),
                        about=str(merged.get("about", ""))))
    names = [r.name for r in runs]
    for r in runs:
        for dep in r.needs():  # a run names itself through its default probe path; any other run must come first
            if dep != r.name and (dep not in names or names.index(dep) > names.index(r.name)):
                raise SuiteError(f"{path}: run {r.name!r}: {{run:{dep}}} must name an earlier run of this suite")
    eval_args = doc.get("eval_args") or []
    if not all(isinstance(x, str) for x in eval_args):
        raise SuiteError(f"{path}: eval_args must be a list of strings")
    name = _need(doc, "name", path, str)
    return Suite(path=path, name=name, title=str(doc.get("title", name)), question=str(doc.get("question", "")),
                 data=data, seeds=_int_list(doc, "seeds", path), probe_seeds=_int_list(doc, "probe_seeds", path),
                 tasks=tasks, baselines=baselines, eval_args=eval_args, runs=runs, jobs=int(doc.get("jobs", 2)))


# --------------------------------------------------------------------------------------------------- steps
@dataclasses.dataclass
class Step:
    key: str                 # e.g. "train mgf_full_s1"
    directory: str           # holds done.json and the logs
    commands: List[List[str]]
    needs: List[str]
    threads: int = 1

    def record(self) -> Dict:
        return {"commands": [[_rel(a) for a in c] for c in self.commands]}


def _rel(arg: str) -> str:
    """Commands are recorded with the repository and OUT as they are; only the venv's python is shortened."""
    return "python" if arg == sys.executable else arg


def _done(step: Step) -> Optional[Dict]:
    path = os.path.join(step.directory, "done.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        done = json.load(f)
    if done.get("commands") != step.record()["commands"]:
        raise StepError(f"{step.directory} was finished with other settings than this suite asks for "
                        f"({path}); delete that directory to redo the step, or use another --out")
    return done


def run_step(step: Step, log=print) -> Dict:
    """Run the step's commands one after the other (logs in the step's directory); write done.json."""
    os.makedirs(step.directory, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(step.threads), MKL_NUM_THREADS=str(step.threads),
               PYTHONUNBUFFERED="1")
    t0 = time.time()
    for i, cmd in enumerate(step.commands):
        log_path = os.path.join(step.directory, f"step{i}.log")
        with open(log_path, "w") as f:
            f.write("$ " + shlex.join(cmd) + "\n")
            f.flush()
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        if proc.returncode != 0:
            with open(log_path) as f:
                tail = "".join(f.readlines()[-15:])
            raise StepError(f"{step.key} failed (exit {proc.returncode}); log: {log_path}\n{tail}")
    done = dict(step.record(), wall_s=round(time.time() - t0, 1),
                finished=datetime.datetime.now().isoformat(timespec="seconds"))
    tmp = os.path.join(step.directory, "done.json.tmp")
    with open(tmp, "w") as f:
        json.dump(done, f, indent=1)
    os.replace(tmp, os.path.join(step.directory, "done.json"))
    return done


def run_steps(steps: Sequence[Step], jobs: int, log=print) -> Dict[str, Dict]:
    """Run the steps, ``jobs`` at a time, each after the steps it needs; skip the finished ones. On a failure,
    no new step starts; the running ones finish and the first failure is raised."""
    results: Dict[str, Dict] = {}
    pending = list(steps)
    for s in pending:
        done = _done(s)
        if done is not None:
            results[s.key] = dict(done, skipped=True)
    pending = [s for s in pending if s.key not in results]
    total, t0 = len(steps), time.time()
    if results:
        log(f"{len(results)} of {total} steps finished in an earlier run: not redone")
    running: Dict[Future, Step] = {}
    failure: Optional[BaseException] = None
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        while pending or running:
            if failure is None:
                for s in list(pending):
                    if len(running) >= jobs:
                        break
                    if all(n in results for n in s.needs):
                        pending.remove(s)
                        log(f"[{_clock(t0)}] start {s.key}")
                        running[pool.submit(run_step, s)] = s
            else:
                pending = []
            if not running:
                if pending:
                    missing = {n for s in pending for n in s.needs if n not in results}
                    raise StepError(f"steps wait for steps that never run: {', '.join(sorted(missing))}")
                break
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in finished:
                s = running.pop(fut)
                try:
                    results[s.key] = fut.result()
                    log(f"[{_clock(t0)}] done  {s.key} ({results[s.key]['wall_s']:.0f} s; "
                        f"{len(results)}/{total} steps)")
                except BaseException as e:  # reported after the running steps finish
                    log(f"[{_clock(t0)}] FAILED {s.key}")
                    failure = failure or e
    if failure is not None:
        raise failure
    return results


def _clock(t0: float) -> str:
    s = int(time.time() - t0)
    return f"{s // 3600:d}:{s // 60 % 60:02d}:{s % 60:02d}"


# ------------------------------------------------------------------------------------------------ planning
def _data_dir(out: str, key: str, params: Dict) -> str:
    # the directory name spells the parameters (an empty list of extra arguments adds nothing, so adding the
    # field did not rename existing data); odd characters of extra arguments become '-'
    tag = "_".join(f"{k}{'-'.join(map(str, v)) if isinstance(v, list) else v}"
                   for k, v in sorted(params.items()) if v != [])
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "-", tag)
    return os.path.join(out, "data", f"{key}_{tag}")


def data_steps(suite: Suite, out: str) -> Tuple[List[Step], Dict[str, str]]:
    """The steps that build the suite's data sets, and where each lands (``{key: directory}``)."""
    py = sys.executable
    steps, where = [], {}
    for key, p in suite.data.items():
        d = _data_dir(out, key, p)
        where[key] = d
        if key == "pretrain":
            cmds = [[py, "-m", "manifests.mini_corpus", "--out", d, "--seed", str(p["seed"]), "--minutes",
                     str(p["minutes"]), "--num-speakers", str(p["num_speakers"]), *map(str, p["args"])]]
            if p["hubert_clusters"]:
                cmds.append([py, "-m", "manifests.hubert_labels", "--manifest-dir", os.path.join(d, "manifest"),
                             "--splits", "train", "valid", "--n-clusters", str(p["hubert_clusters"])])
        elif key == "probe":
            cmds = [[py, "-m", "manifests.mini_corpus", "--out", d, "--seed", str(p["seed"]), "--minutes",
                     str(p["minutes"]), "--num-speakers", str(p["num_speakers"]), *map(str, p["args"])]]
        elif key == "real_dev":
            cmds = [[py, "-m", "manifests.real_dev", "--out", d, "--seed", str(p["seed"])]]
        elif key == "keywords":
            cmds = [[py, "-m", "manifests.keywords", "--out", d, "--seed", str(p["seed"]), "--repeats",
                     str(p["repeats"])]]
        else:  # pretrain_clips, clips
            cmds = [[py, "-m", "manifests.clips", "--out", d, "--seed", str(p["seed"]), "--per-class",
                     *map(str, p["per_class"])]]
        steps.append(Step(key=f"data {key}", directory=os.path.join(out, "data", ".harness", os.path.basename(d)),
                          commands=cmds, needs=[],
                          threads=2))
    return steps, where


def substitute(text: str, values: Dict[str, str], where: str) -> str:
    def repl(m: re.Match) -> str:
        key = m.group(1) + (f":{m.group(2)}" if m.group(2) else "")
        if key not in values:
            raise SuiteError(f"{where}: unknown placeholder {{{key}}}; known here: "
                             f"{', '.join('{' + k + '}' for k in sorted(values))}")
        return values[key]
    return PLACEHOLDER.sub(repl, text)


def run_dir(out: str, suite: Suite, name: str, seed: int) -> str:
    return os.path.join(out, suite.name, "runs", f"{name}_s{seed}")


def plan(suite: Suite, out: str) -> Tuple[List[Step], List[Tuple[str, str]]]:
    """Every step of the suite in dependency order, and the (upstream name, eval directory) of each probe."""
    steps, where = data_steps(suite, out)
    data_keys = [s.key for s in steps]
    py = sys.executable
    train_bin = os.path.join(os.path.dirname(sys.executable), "fairseq-hydra-train")
    evals: List[Tuple[str, str]] = []
    eval_steps: List[Step] = []
    for seed in suite.seeds:
        for run in suite.runs:
            rd = run_dir(out, suite, run.name, seed)
            values = {"seed": str(seed), "python": py, "repo": REPO, "run_dir": rd}
            if "pretrain" in where:
                values["pretrain"] = os.path.join(where["pretrain"], "manifest")
            if "pretrain_clips" in where:
                values["pretrain_clips"] = where["pretrain_clips"]
            for dep in run.needs():
                values[f"run:{dep}"] = os.path.join(run_dir(out, suite, dep, seed), "ckpt", "checkpoint_last.pt")
            here = f"{suite.path}: run {run.name!r}"
            cmds = [shlex.split(substitute(c, values, here)) for c in run.prepare]
            cfg = os.path.join(REPO, run.config)
            cmds.append([train_bin, "--config-dir", os.path.dirname(cfg),
                         "--config-name", os.path.splitext(os.path.basename(cfg))[0],
                         f"common.user_dir={PLUGIN}", f"hydra.run.dir={rd}", f"checkpoint.save_dir={rd}/ckpt",
                         f"optimization.max_update={run.updates}", f"common.seed={seed}",
                         *[substitute(o, values, here) for o in run.overrides]])
            key = f"train {run.name}_s{seed}"
            needs = data_keys + [f"train {d}_s{seed}" for d in run.needs() if d != run.name]
            steps.append(Step(key=key, directory=os.path.join(rd, ".harness"), commands=cmds, needs=needs))
            upstream = f"{run.name}_s{seed}"
            ed = os.path.join(out, suite.name, "eval", upstream)
            probe_path = substitute(run.probe, dict(values, **{f"run:{run.name}": os.path.join(
                rd, "ckpt", "checkpoint_last.pt")}), here)
            first = not eval_steps
            cmd = [py, "-m", "fairseq_plugins.evaluate", "--user-dir", PLUGIN, "--checkpoints",
                   f"{upstream}={probe_path}", "--manifest-dir", os.path.join(where["probe"], "manifest"),
                   "--out", ed, "--tasks", ",".join(suite.tasks), "--seeds", *map(str, suite.probe_seeds),
                   "--baselines", ",".join(suite.baselines) if first and suite.baselines else "none"]
            if "keywords" in where:
                cmd += ["--keyword-dir", where["keywords"]]
            if "clips" in where:
                cmd += ["--clip-dir", where["clips"]]
            if "real_dev" in where:
                cmd += ["--real-dev-dir", where["real_dev"]]
            cmd += suite.eval_args
            eval_steps.append(Step(key=f"probe {upstream}", directory=os.path.join(ed, ".harness"),
                                   commands=[cmd], needs=[key] + data_keys))
            evals.append((upstream, ed))
    return steps + eval_steps, evals


# ------------------------------------------------------------------------------------------------- report
def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        model = names[0] if names else model
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} CPU cores, no GPU used, Python {platform.python_version()}"


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def collect(evals: Sequence[Tuple[str, str]]) -> List[Dict]:
    from fairseq_plugins.evaluate.pool_seeds import read_results

    rows: List[Dict] = []
    for _, ed in evals:
        rows.extend(read_results(os.path.join(ed, "results.jsonl")))
    return rows


def write_report(suite: Suite, out: str, rows: Sequence[Dict], results: Dict[str, Dict], argv: Sequence[str]) -> str:
    """``OUT/<suite>/report.md`` (+ ``tasks.png``): the pooled table, the budget, the wall times, the commands."""
    from fairseq_plugins.evaluate import pool_seeds

    sdir = os.path.join(out, suite.name)
    table = pool_seeds.write(rows, sdir)  # table.md, table.csv, tasks.png
    with open(os.path.join(sdir, "results.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    lines = [f"## {suite.title}", ""]
    if suite.question:
        lines += [suite.question.strip(), ""]
    lines += [f"Machine: {machine()}. Date: {datetime.date.today().isoformat()}. Commit: {_commit()}. "
              f"Pre-training seeds {' '.join(map(str, suite.seeds))}; probe seeds "
              f"{' '.join(map(str, suite.probe_seeds))}.", "",
              table.rstrip(), "",
              "| run | config | updates | overrides | train wall time per seed (s; the last part of a resumed run) |",
              "|---|---|---|---|---|"]
    for run in suite.runs:
        walls = [results.get(f"train {run.name}_s{s}", {}).get("wall_s") for s in suite.seeds]
        over = " ".join(o for o in run.overrides if "{" not in o) or "–"
        lines.append(f"| {run.name} | {run.config} | {run.updates} | `{over}` | "
                     f"{', '.join(f'{w:.0f}' if w is not None else '?' for w in walls)} |")
    shown = ["OUT" if os.path.abspath(a) == os.path.abspath(out) else
             os.path.relpath(a, REPO) if os.path.isabs(a) and a.startswith(REPO + os.sep) else a for a in argv]
    lines += ["", "Command: `" + " ".join(["python -m evidence", *shown]) + "` (suite file "
              f"`{os.path.relpath(suite.path, REPO)}`; the per-step commands are in "
              "`OUT/<suite>/runs/*/.harness/done.json` and `OUT/<suite>/eval/*/.harness/done.json`).", ""]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(sdir, "report.md"), "w") as f:
        f.write(text)
    return text


def update_evidence_md(path: str, suite_name: str, section: str, figure: Optional[str]) -> None:
    """Replace (or append) the suite's section of ``path``, between its begin/end markers."""
    begin, end = f"<!-- suite:{suite_name} begin -->", f"<!-- suite:{suite_name} end -->"
    body = section
    if figure:
        body += f"\n![{suite_name}]({figure})\n"
    block = f"{begin}\n{body}{end}\n"
    text = open(path).read() if os.path.exists(path) else "# Evidence\n\n"
    if begin in text:
        if end not in text:
            raise StepError(f"{path}: has {begin!r} but not {end!r}; fix the file by hand")
        pre, rest = text.split(begin, 1)
        text = pre + block + rest.split(end, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    with open(path, "w") as f:
        f.write(text)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m evidence", description=__doc__.split("\n\n")[0],
                                epilog="Suites: " + ", ".join(sorted(
                                    f[:-5] for f in os.listdir(os.path.join(REPO, "evidence", "suites"))
                                    if f.endswith(".yaml"))))
    p.add_argument("--suite", required=True, help="suite file (evidence/suites/NAME.yaml) or NAME")
    p.add_argument("--out", required=True, help="output directory, shared by suites (the data is built once)")
    p.add_argument("--jobs", type=int, default=None, help="steps at a time (default: the suite's, else 2)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="override the suite's pre-training seeds")
    p.add_argument("--dry-run", action="store_true", help="print the steps and their commands; run nothing")
    p.add_argument("--evidence-md", default=None,
                   help="replace this suite's section of this markdown file (e.g. EVIDENCE.md) with the report; "
                        "the figure is copied next to it under evidence/figures/")
    args = p.parse_args(argv)
    path = args.suite if os.path.exists(args.suite) else os.path.join(REPO, "evidence", "suites", f"{args.suite}.yaml")
    try:
        suite = load_suite(path)
        if args.seeds:
            suite.seeds = args.seeds
        out = os.path.abspath(args.out)
        steps, evals = plan(suite, out)
        if args.dry_run:
            for s in steps:
                print(f"# {s.key}" + (f"  (after: {', '.join(s.needs)})" if s.needs else ""))
                for c in s.commands:
                    print("  " + shlex.join(c))
            return 0
        print(f"suite {suite.name}: {len(suite.runs)} runs x {len(suite.seeds)} seeds, probes "
              f"{','.join(suite.tasks)} x {len(suite.probe_seeds)} probe seeds -> {out}/{suite.name}", flush=True)
        results = run_steps(steps, args.jobs or suite.jobs, log=lambda m: print(m, flush=True))
        rows = collect(evals)
        section = write_report(suite, out, rows, results, argv)
        print(section)
        if args.evidence_md:
            import shutil
            fig_dir = os.path.join(os.path.dirname(os.path.abspath(args.evidence_md)), "evidence", "figures")
            os.makedirs(fig_dir, exist_ok=True)
            fig = os.path.join(fig_dir, f"{suite.name}.png")
            shutil.copyfile(os.path.join(out, suite.name, "tasks.png"), fig)
            update_evidence_md(args.evidence_md, suite.name, section,
                               os.path.relpath(fig, os.path.dirname(os.path.abspath(args.evidence_md))))
            print(f"updated {args.evidence_md}")
    except (SuiteError, StepError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
