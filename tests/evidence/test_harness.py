"""The evidence harness (``python -m evidence``): suite checking, the step scheduler (order, resume, refusal to
reuse a step finished with other settings, failures), the EVIDENCE.md section writer, and one real end-to-end
suite on a tiny budget (HuBERT, then LASER fine-tuning of that HuBERT, both probed with the floors)."""
import json
import os
import sys

import pytest

from evidence import harness
from evidence.harness import Step, StepError, SuiteError, load_suite, run_steps, update_evidence_md

REPO = harness.REPO


def _write(tmp_path, text: str, name: str = "suite.yaml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


GOOD = """
name: t
data: {probe: {minutes: 1.0, num_speakers: 8}}
seeds: [1]
probe_seeds: [0]
tasks: [phone_frame]
runs:
  - {name: base, config: examples/hubert/config/hubert_tiny.yaml, updates: 3, overrides: ["task.data={pretrain}"]}
  - {name: tuned, like: base, extra_overrides: ["model.x={run:base}"]}
"""


def test_every_shipped_suite_loads_and_plans(tmp_path):
    suites = sorted(f for f in os.listdir(os.path.join(REPO, "evidence", "suites")) if f.endswith(".yaml"))
    assert {"mgf.yaml", "slicer.yaml"} <= set(suites)
    for f in suites:
        suite = load_suite(os.path.join(REPO, "evidence", "suites", f))
        steps, evals = harness.plan(suite, str(tmp_path))
        assert len(evals) == len(suite.runs) * len(suite.seeds)
        # the first probe step carries the suite's floors (if it asks for any), the others none
        probes = [s for s in steps if s.key.startswith("probe ")]
        floors = [p.commands[0][p.commands[0].index("--baselines") + 1] for p in probes]
        assert floors[0] == (",".join(suite.baselines) or "none"), (f, floors[0])
        assert all(x == "none" for x in floors[1:]), f


def test_like_inherits_and_run_placeholder_resolves(tmp_path):
    suite = load_suite(_write(tmp_path, GOOD.replace("data: {", "data: {pretrain: {minutes: 1.0}, ")))
    base, tuned = suite.runs
    assert tuned.config == base.config and tuned.updates == 3
    assert tuned.overrides == ["task.data={pretrain}", "model.x={run:base}"]
    steps, _ = harness.plan(suite, str(tmp_path / "out"))
    train = {s.key: s for s in steps}["train tuned_s1"]
    assert "train base_s1" in train.needs
    cmd = train.commands[-1]
    assert f"model.x={tmp_path}/out/t/runs/base_s1/ckpt/checkpoint_last.pt" in cmd
    assert "optimization.max_update=3" in cmd and "common.seed=1" in cmd


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("seeds: [1]", "seeds: [1]\nbogus: 1"), "unknown field(s) bogus"),
    (lambda t: t.replace("hubert_tiny.yaml", "nope.yaml"), "config: examples/hubert/config/nope.yaml does not exist"),
    (lambda t: t.replace("{run:base}", "{run:later}"), "must name an earlier run"),
    (lambda t: t.replace("tasks: [phone_frame]", "tasks: [phone_fram]"), "tasks: unknown"),
    (lambda t: t.replace("updates: 3", "updates: 0"), "updates must be >= 1"),
    (lambda t: t.replace("data: {probe: {minutes: 1.0, num_speakers: 8}}", "data: {}"), "data.probe"),
    (lambda t: t.replace("num_speakers: 8", "speakers: 8"), "data.probe: unknown parameter(s) speakers"),
    (lambda t: t.replace("name: tuned", "name: tuned_s2"), "must not end in _s<digits>"),
    (lambda t: t.replace("seeds: [1]", "seeds: []"), "'seeds' must be a non-empty list"),
])
def test_bad_suites_name_the_file_and_field(tmp_path, edit, message):
    path = _write(tmp_path, edit(GOOD))
    with pytest.raises(SuiteError) as e:
        load_suite(path)
    assert path in str(e.value) and message in str(e.value)


def test_unknown_placeholder_is_named(tmp_path):
    suite = load_suite(_write(tmp_path, GOOD))  # {pretrain} used, but the suite builds no pre-training corpus
    with pytest.raises(SuiteError, match=r"unknown placeholder \{pretrain\}"):
        harness.plan(suite, str(tmp_path / "out"))


def _py(code: str):
    return [sys.executable, "-c", code]


def test_steps_run_in_dependency_order_and_resume(tmp_path):
    order = tmp_path / "order.txt"
    append = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + chr(10))"
    steps = [Step("b", str(tmp_path / "b"), [_py(append) + [str(order), "b"]], needs=["a"]),
             Step("a", str(tmp_path / "a"), [_py(append) + [str(order), "a"]], needs=[]),
             Step("c", str(tmp_path / "c"), [_py(append) + [str(order), "c"]], needs=["a", "b"])]
    log = []
    done = run_steps(steps, jobs=2, log=log.append)
    assert order.read_text().split() == ["a", "b", "c"]
    assert set(done) == {"a", "b", "c"} and all(json.load(open(tmp_path / k / "done.json"))["wall_s"] >= 0
                                                 for k in "abc")
    again = run_steps(steps, jobs=2, log=log.append)  # finished steps are not redone
    assert order.read_text().split() == ["a", "b", "c"] and all(v.get("skipped") for v in again.values())
    changed = [Step("a", str(tmp_path / "a"), [_py(append) + [str(order), "A"]], needs=[])]
    with pytest.raises(StepError, match="finished with other settings"):
        run_steps(changed, jobs=1)


def test_a_failing_step_stops_what_depends_on_it(tmp_path):
    steps = [Step("bad", str(tmp_path / "bad"), [_py("import sys; print('boom'); sys.exit(3)")], needs=[]),
             Step("after", str(tmp_path / "after"), [_py("pass")], needs=["bad"])]
    with pytest.raises(StepError) as e:
        run_steps(steps, jobs=2, log=lambda m: None)
    assert "bad failed (exit 3)" in str(e.value) and "boom" in str(e.value)
    assert not (tmp_path / "after" / "done.json").exists() and not (tmp_path / "bad" / "done.json").exists()


def test_evidence_md_sections_are_replaced_not_duplicated(tmp_path):
    md = str(tmp_path / "EVIDENCE.md")
    update_evidence_md(md, "a", "## A\nold\n", None)
    update_evidence_md(md, "b", "## B\n", "evidence/figures/b.png")
    update_evidence_md(md, "a", "## A\nnew\n", None)
    text = open(md).read()
    assert text.count("suite:a begin") == 1 and "new" in text and "old" not in text
    assert text.index("## A") < text.index("## B") and "![b](evidence/figures/b.png)" in text


@pytest.mark.slow
def test_tiny_suite_end_to_end(tmp_path):
    """A real run: data built by the harness, HuBERT 4 updates, LASER 2 updates from it, probes + floors, the
    pooled report and the EVIDENCE.md section; a second invocation redoes nothing."""
    suite = _write(tmp_path, """
name: tiny
title: tiny harness run
data:
  pretrain: {minutes: 0.5, num_speakers: 6, hubert_clusters: 20}
  probe: {minutes: 1.0, num_speakers: 8}
seeds: [1]
probe_seeds: [0]
tasks: [phone_frame, speaker_id]
eval_args: [--epochs, "1"]
runs:
  - name: hubert
    config: examples/hubert/config/hubert_tiny.yaml
    updates: 4
    overrides: ["task.data={pretrain}", "task.label_dir={pretrain}", "checkpoint.save_interval_updates=4",
                "dataset.validate_interval_updates=4"]
  - name: laser
    config: examples/laser/config/laser_hubert_tiny.yaml
    updates: 2
    overrides: ["task.data={pretrain}", "model.checkpoint={run:hubert}", "checkpoint.save_interval_updates=2",
                "dataset.validate_interval_updates=2"]
""")
    out, md = str(tmp_path / "out"), str(tmp_path / "EVIDENCE.md")
    assert harness.main(["--suite", suite, "--out", out, "--evidence-md", md]) == 0
    rows = [json.loads(line) for line in open(os.path.join(out, "tiny", "results.jsonl"))]
    assert {r["upstream"] for r in rows} == {"hubert_s1", "laser_s1", "logmel", "random"}
    assert {r["task"] for r in rows} == {"phone_frame", "speaker_id"}
    text = open(md).read()
    header = next(line for line in text.splitlines() if line.startswith("| task | metric |"))
    assert [c.strip() for c in header.split("|")[3:-1]] == ["hubert", "laser", "random", "logmel"]
    assert "(n=1)" in text and "laser" in text and os.path.exists(tmp_path / "evidence" / "figures" / "tiny.png")
    stamp = os.path.getmtime(os.path.join(out, "tiny", "runs", "laser_s1", ".harness", "done.json"))
    assert harness.main(["--suite", suite, "--out", out]) == 0
    assert os.path.getmtime(os.path.join(out, "tiny", "runs", "laser_s1", ".harness", "done.json")) == stamp


def _compose_example():
    """tests/test_example_configs.py's validating composer (one home for composing an example YAML)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "example_configs", os.path.join(REPO, "tests", "test_example_configs.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.compose_example


SUITES = sorted(f for f in os.listdir(os.path.join(REPO, "evidence", "suites")) if f.endswith(".yaml"))


@pytest.mark.parametrize("suite_file", SUITES)
def test_every_run_of_the_shipped_suites_composes(suite_file, tmp_path):
    """Each run's config + overrides composes against fairseq's schema and the registered dataclasses (a misspelt
    override fails here, not an hour into an evidence run)."""
    import yaml
    from omegaconf import OmegaConf

    compose = _compose_example()
    suite = load_suite(os.path.join(REPO, "evidence", "suites", suite_file))
    for run in suite.runs:
        overrides = {}
        cli = [harness.PLACEHOLDER.sub("/placeholder", o) for o in run.overrides]
        for o in cli:
            key, _, value = o.lstrip("+").partition("=")
            overrides[key] = yaml.safe_load(value) if value else value
        # through Hydra's parser as fairseq-hydra-train takes them: a key the YAML lacks needs ++ there
        cfg = compose(os.path.join(REPO, run.config), {"optimization.max_update": run.updates}, cli_overrides=cli)
        for key, value in overrides.items():
            assert OmegaConf.select(cfg, key) == value, f"{suite_file}: run {run.name}: {key} not applied"
