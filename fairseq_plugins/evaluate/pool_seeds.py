"""Pool evaluation results over pre-training seeds: ``python -m fairseq_plugins.evaluate.pool_seeds RESULTS``.

``python -m fairseq_plugins.evaluate`` reports one column per checkpoint, mean ± std over *probe* seeds. When
the same recipe was pre-trained several times (checkpoint names ``NAME_s1``, ``NAME_s2``, ...), this prints one
markdown table with one column per ``NAME``: mean ± std over every (pre-training seed, probe seed) pair, and the
number of pairs. Names without a ``_s<digits>`` suffix (the baselines) stay as they are. Registers nothing.
"""
import argparse
import json
import math
import re
import sys
from collections import defaultdict
from typing import Dict, List, Optional, Sequence, Tuple

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


def pool(rows: Sequence[Dict]) -> Tuple[List[str], List[str], Dict[Tuple[str, str], List[float]], Dict[str, Dict]]:
    """-> (tasks, recipes in first-seen order, {(task, recipe): values}, {task: first row})."""
    tasks: List[str] = []
    recipes: List[str] = []
    values: Dict[Tuple[str, str], List[float]] = defaultdict(list)
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
        values[(row["task"], name)].append(float(row["value"]))
    recipes = [r for r in recipes if r in seeded] + [r for r in recipes if r not in seeded]  # baselines last
    return tasks, recipes, values, meta


def _mean_std(v: Sequence[float]) -> Tuple[float, float]:
    m = sum(v) / len(v)
    return m, math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0


def markdown(rows: Sequence[Dict]) -> str:
    tasks, recipes, values, meta = pool(rows)
    lines = ["Test scores in %, mean ± std over pre-training seeds x probe seeds (n = number of pairs); "
             "best mean in bold.", "",
             "| task | metric | " + " | ".join(recipes) + " |", "|---|---|" + "---|" * len(recipes)]
    for task in tasks:
        higher = bool(meta[task]["higher_is_better"])
        stats = {r: _mean_std(values[(task, r)]) for r in recipes if values.get((task, r))}
        best = (max if higher else min)(stats, key=lambda r: stats[r][0])
        cells = []
        for r in recipes:
            if r not in stats:
                cells.append("-")
                continue
            m, s = stats[r]
            cell = f"{100 * m:.1f} ± {100 * s:.1f} (n={len(values[(task, r)])})"
            cells.append(f"**{cell}**" if r == best else cell)
        arrow = "↑" if higher else "↓"
        lines.append(f"| {task} | {meta[task]['metric']} {arrow} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


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
