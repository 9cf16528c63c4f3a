"""Pool evaluation results over pre-training seeds: ``python -m fairseq_plugins.evaluate.pool_seeds RESULTS``.

``python -m fairseq_plugins.evaluate`` reports one column per checkpoint, mean ± std over *probe* seeds. When
the same recipe was pre-trained several times (checkpoint names ``NAME_s1``, ``NAME_s2``, ...), this prints one
markdown table with one column per ``NAME``: mean ± std over every (pre-training seed, probe seed) pair, and the
number of pairs. Names without a ``_s<digits>`` suffix (the baselines) stay as they are. Registers nothing.
"""
import argparse
import json
import re
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from fairseq_plugins.evaluate.report import markdown_table, summarise

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


def markdown(rows: Sequence[Dict]) -> str:
    """The pooled table, written by :func:`fairseq_plugins.evaluate.report.markdown_table` (every row of a
    recipe, over all its pre-training and probe seeds, is one sample of its cell)."""
    tasks, recipes, meta = pool(rows)
    summary = summarise([dict(r, upstream=recipe_of(r["upstream"])[0]) for r in rows])
    metrics = {t: (meta[t]["metric"], bool(meta[t]["higher_is_better"])) for t in tasks}
    caption = "Test scores in %, mean ± std over pre-training seeds x probe seeds (n = number of pairs)"
    return markdown_table(summary, recipes, tasks, metrics, caption=caption, show_n=True, layer_table=False)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fairseq_plugins.evaluate.pool_seeds", description=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", help="OUT/results.jsonl of python -m fairseq_plugins.evaluate")
    args = parser.parse_args(argv)
    try:
        sys.stdout.write(markdown(read_results(args.results)))
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
