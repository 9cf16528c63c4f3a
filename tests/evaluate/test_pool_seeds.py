"""Pooling evaluation results over pre-training seeds (fairseq_plugins.evaluate.pool_seeds)."""
import json

import pytest

from fairseq_plugins.evaluate.pool_seeds import main, markdown, read_results, recipe_of


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def row(upstream, task, value, seed=0, higher=True):
    return {"upstream": upstream, "task": task, "value": value, "seed": seed, "metric": "accuracy",
            "higher_is_better": higher}


def test_recipe_names():
    assert recipe_of("slicer_s12") == ("slicer", 12)
    assert recipe_of("no_kmix_s1") == ("no_kmix", 1)
    assert recipe_of("logmel") == ("logmel", None)
    assert recipe_of("my_sys") == ("my_sys", None)


def test_pools_every_pretraining_and_probe_seed(tmp_path):
    rows = [row("logmel", "clip", 0.5), row("slicer_s1", "clip", 0.8), row("slicer_s1", "clip", 0.9, seed=1),
            row("slicer_s2", "clip", 0.7), row("slicer_s2", "clip", 0.6, seed=1), row("random", "clip", 0.75)]
    table = markdown(read_results(write(tmp_path / "r.jsonl", rows)))
    header = [line for line in table.splitlines() if line.startswith("| task")][0]
    assert header == "| task | metric | slicer | logmel | random |"  # seeded recipes first, baselines after
    clip = [line for line in table.splitlines() if line.startswith("| clip")][0]
    # mean of 0.8, 0.9, 0.7, 0.6 = 0.75, sample std = 0.129; random's 0.75 ties and the first one wins
    assert "**75.0 ± 12.9 (n=4)**" in clip and "50.0 ± 0.0 (n=1)" in clip


def test_lower_is_better_bolds_the_minimum(tmp_path):
    rows = [row("a_s1", "speaker_ver", 0.2, higher=False), row("b", "speaker_ver", 0.1, higher=False)]
    line = markdown(read_results(write(tmp_path / "r.jsonl", rows))).splitlines()[-1]
    assert "**10.0 ± 0.0 (n=1)**" in line and "| 20.0" in line


def test_bad_lines_name_the_file_and_line(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(row("a", "clip", 0.5)) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"r.jsonl:2: not a JSON line"):
        read_results(str(path))
    path.write_text(json.dumps({"upstream": "a", "task": "clip"}) + "\n")
    assert main([str(path)]) == 2
    assert "r.jsonl:1: missing field 'value'" in capsys.readouterr().err


def test_report_table_is_the_one_writer_of_both_tables():
    """report.markdown_table writes the evaluation's table (mean ± sample std over probe seeds, a single seed
    shows its value alone, a missing cell a dash) and, with a caption and n, the pooled table above."""
    from fairseq_plugins.evaluate.report import markdown_table, summarise

    results = [row("a", "clip", 0.8, seed=0), row("a", "clip", 0.6, seed=1), row("b", "clip", 0.7, seed=0),
               row("a", "speaker_ver", 0.3, seed=0, higher=False)]
    summary = summarise(results)
    assert summary[("clip", "a")]["values"] == [80.0, 60.0] and summary[("clip", "a")]["n"] == 2
    metrics = {"clip": ("accuracy", True), "speaker_ver": ("EER", False)}
    table = markdown_table(summary, ["a", "b"], ["clip", "speaker_ver"], metrics, seeds=[0, 1], layer_table=False)
    lines = table.splitlines()
    assert lines[0].startswith("Test scores in %, mean ± std over 2 seed(s) (0, 1)")
    assert lines[-2] == "| clip | accuracy ↑ | **70.0 ± 14.1** | 70.0 |"  # a tie: the first one wins
    assert lines[-1] == "| speaker_ver | EER ↓ | 30.0 | – |"  # one cell only: nothing to bold
    summary[("clip", "b")]["mean"] = 71.0
    assert markdown_table(summary, ["a", "b"], ["clip"], metrics, seeds=[0, 1]).splitlines()[-1] == \
        "| clip | accuracy ↑ | 70.0 ± 14.1 | **71.0** |"
    pooled = markdown_table(summary, ["a"], ["clip"], metrics, caption="X", show_n=True)
    assert pooled.splitlines()[0].startswith("X;") and "70.0 ± 14.1 (n=2)" in pooled


def test_several_results_files_read_as_one_and_out_writes_the_table(tmp_path, capsys):
    """make demo probes its checkpoints and the log-mel floor in two evaluate runs; pool_seeds joins them."""
    a = write(tmp_path / "a.jsonl", [row("hubert", "clip", 0.8), row("hubert", "clip", 0.6, seed=1)])
    b = write(tmp_path / "b.jsonl", [row("logmel", "clip", 0.5), row("logmel", "keyword", 0.4)])
    assert main([a, b, "--out", str(tmp_path / "all")]) == 0
    printed = capsys.readouterr().out
    assert "| task | metric | hubert | logmel |" in printed
    assert "| clip | accuracy ↑ | **70.0 ± 14.1 (n=2)** | 50.0 ± 0.0 (n=1) |" in printed
    assert "| keyword | accuracy ↑ | – | 40.0 ± 0.0 (n=1) |" in printed
    assert (tmp_path / "all" / "table.md").read_text() == printed
    csv_lines = (tmp_path / "all" / "table.csv").read_text().splitlines()
    assert csv_lines[0].startswith("task,metric,higher_is_better,hubert,hubert std,logmel,logmel std")
    assert csv_lines[1].startswith("clip,accuracy (%),1,70.000,14.142,50.000,0.000")
    assert (tmp_path / "all" / "tasks.png").stat().st_size > 1000
    assert main([a, str(tmp_path / "missing.jsonl")]) == 2  # a missing file is an error, not skipped
    assert "missing.jsonl" in capsys.readouterr().err
