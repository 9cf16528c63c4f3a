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
