"""Pool evaluation results over pre-training seeds: ``python -m fairseq_plugins.evaluate.pool_seeds RESULTS``.

``python -m fairseq_plugins.evaluate`` reports one column per checkpoint, mean ± std over *probe* seeds. When
the same recipe was pre-trained several times (checkpoint names ``NAME_s1``, ``NAME_s2``, ...), this prints one
markdown table with one column per ``NAME``: mean ± std over every (pre-training seed, probe seed) pair, and the
number of pairs. Names without a ``_s<digits>`` suffix (the baselines) stay as they are. Several results files
are read as one (e.g. checkpoints and floors probed by separate runs of the evaluate CLI, as ``make demo`` does);
``--out DIR`` also writes ``DIR/table.md``, ``table.csv`` and ``tasks.png``. Registers nothing.
"""
import argparse
import json
import logging
import os
import re
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from fairseq_plugins.compat import cli_logging
from fairseq_plugins.evaluate.report import markdown_table, plot_tasks, summarise, write_csv

SEED_SUFFIX = re.compile(r"^(?P<name>.+)_s(?P<seed>\d+)$")


def recipe_of(upstream: str) -> Tuple[str, Optional[int]]:
    """``slicer_s2`` -> (``slicer``, 2); ``logmel`` -> (``logmel``, None)."""
    m = SEED_SUFFIX.match(upstream)
    return (m["name"], int(m["seed"])) if m else (upstream, None)


def read_results(path: str) -> List[Dict]:
    rows = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not a JSON line ({e})") from e
            for key in ("upstream", "task", "value", "metric", "higher_is_better"):
                if key not in row:
                    raise ValueError(f"{path}:{lineno}: missing field {key!r} (expected a results.jsonl line of "
                                     "python -m fairseq_plugins.evaluate)")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no results")
    return rows


def pool(rows: Sequence[Dict]) -> Tuple[List[str], List[str], Dict[str, Dict]]:
    """-> (tasks, recipes in first-seen order with the seeded ones first, {task: first row})."""
    tasks: List[str] = []
    recipes: List[str] = []
    meta: Dict[str, Dict] = {}
    seeded = set()
    for row in rows:
        name, seed = recipe_of(row["upstream"])
        if seed is not None:
            seeded.add(name)
        if row["task"] not in tasks:
            tasks.append(row["task"])
            meta[row["task"]] = row
        if name not in recipes:
            recipes.append(name)
    recipes = [r for r in recipes if r in seeded] + [r for r in recipes if r not in seeded]  # baselines last
    return tasks, recipes, meta


CAPTION = "Test scores in %, mean ± std over pre-training seeds x probe seeds (n = number of pairs)"


def _pooled(rows: Sequence[Dict]) -> Tuple[List[str], List[str], Dict, Dict[str, Tuple[str, bool]]]:
    """-> (tasks, recipes, summary, metrics): every row of a recipe, over all its pre-training and probe seeds,
    is one sample of its cell."""
    tasks, recipes, meta = pool(rows)
    summary = summarise([dict(r, upstream=recipe_of(r["upstream"])[0]) for r in rows])
    metrics = {t: (meta[t]["metric"], bool(meta[t]["higher_is_better"])) for t in tasks}
    return tasks, recipes, summary, metrics


def _markdown(tasks, recipes, summary, metrics) -> str:
    return markdown_table(summary, recipes, tasks, metrics, caption=CAPTION, show_n=True, layer_table=False)


def markdown(rows: Sequence[Dict]) -> str:
    """The pooled table, written by :func:`fairseq_plugins.evaluate.report.markdown_table`."""
    return _markdown(*_pooled(rows))


def write(rows: Sequence[Dict], out_dir: str) -> str:
    """Write the pooled ``table.md`` (:func:`markdown`), ``table.csv`` and ``tasks.png`` into ``out_dir``;
    returns the markdown."""
    tasks, recipes, summary, metrics = _pooled(rows)
    text = _markdown(tasks, recipes, summary, metrics)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "table.md"), "w") as f:
        f.write(text)
    write_csv(os.path.join(out_dir, "table.csv"), summary, recipes, tasks, metrics)
    plot_tasks(os.path.join(out_dir, "tasks.png"), summary, recipes, tasks, metrics)
    return text


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fairseq_plugins.evaluate.pool_seeds", description=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="OUT/results.jsonl of python -m fairseq_plugins.evaluate (several "
                        "are read as one)")
    parser.add_argument("--out", help="also write table.md, table.csv and tasks.png into this directory")
    args = parser.parse_args(argv)
    cli_logging(logging.WARNING)  # the plot's matplotlib would log at DEBUG under fairseq's root logger
    try:
        rows = [row for path in args.results for row in read_results(path)]
        sys.stdout.write(write(rows, args.out) if args.out else markdown(rows))
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
