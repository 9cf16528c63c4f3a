"""The evaluation report: one side-by-side table (markdown + CSV) and plots, from the per-run result records.

Rows are tasks, columns upstreams; each cell is the mean ± sample standard deviation over seeds of the test
score in percent (PER and EER: lower is better; accuracies: higher is better); the best mean per row is bold in
the markdown. A second table gives each upstream's most-weighted layer per trained task (0 = transformer input).
Plots (matplotlib, Agg backend): ``tasks.png``, one panel per task with a bar per upstream and the seed
standard deviation as error bar; ``layer_weights.png``, one panel per multi-layer upstream with the learned
softmax layer weights of every task (mean over seeds).
"""
import csv
import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

logger = logging.getLogger(__name__)


UNIT_SCALE = {"%": 100.0, "dB": 1.0}  # a record's "unit" (default %): its value is a fraction, or dB as is


def summarise(results: Sequence[Dict]) -> Dict[Tuple[str, str], Dict]:
    """``(task, upstream) -> {"mean", "std", "n", "values", "weights_mean"}`` with scores in percent (in dB for
    records whose ``unit`` is ``dB``, e.g. SI-SNRi)."""
    groups: Dict[Tuple[str, str], List[Dict]] = {}
    for r in results:
        groups.setdefault((r["task"], r["upstream"]), []).append(r)
    out = {}
    for key, rows in groups.items():
        vals = np.array([UNIT_SCALE[r.get("unit", "%")] * r["value"]
                         for r in sorted(rows, key=lambda r: r.get("seed", 0))])
        weights = [r["layer_weights"] for r in rows if r.get("layer_weights") is not None]
        out[key] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
                    "n": len(vals), "values": vals.tolist(),
                    "weights_mean": np.mean(weights, axis=0).tolist() if weights else None}
    return out


def _untrained(task: str) -> bool:
    """Rows without learned layer weights: speaker_ver (and its interfered conditions ``speaker_ver@...``), and
    separation."""
    return task.split("@")[0] in ("speaker_ver", "separation")


def _with_unit(metric: str) -> str:
    """``"EER"`` -> ``"EER (%)"``; a metric that names its unit (``"SI-SNRi (dB)"``) is kept."""
    return metric if metric.endswith(")") else f"{metric} (%)"


def format_cell(s: Optional[Dict], show_n: bool = False) -> str:
    """One table cell: ``mean ± std`` (just the mean for one seed), with ``(n=...)`` when ``show_n``."""
    if s is None:
        return "–"
    if show_n:
        return f"{s['mean']:.1f} ± {s['std']:.1f} (n={s['n']})"
    return f"{s['mean']:.1f} ± {s['std']:.1f}" if s["n"] > 1 else f"{s['mean']:.1f}"


def markdown_table(summary: Dict, upstreams: Sequence[str], tasks: Sequence[str],
                   metrics: Dict[str, Tuple[str, bool]], seeds: Sequence[int] = (), caption: Optional[str] = None,
                   show_n: bool = False, layer_table: bool = True) -> str:
    """The markdown report: rows ``tasks``, columns ``upstreams``, cells :func:`format_cell` of ``summary``
    (:func:`summarise`), the first best mean of a row in bold when the row has two or more cells; then (with
    ``layer_table``) each multi-layer upstream's most-weighted layer. ``caption`` replaces the line that names
    the ``seeds``. The one table writer of the evaluation (also used by :mod:`.pool_seeds`)."""
    arrow = {True: "↑", False: "↓"}
    unit = " (dB where the metric says so)" if any(metrics[t][0].endswith("(dB)") for t in tasks) else ""
    caption = caption or (f"Test scores in %{unit}, mean ± std over {len(seeds)} seed(s) "
                          f"({', '.join(map(str, seeds))})")
    lines = [f"{caption}; ↑ higher is better, ↓ lower is better; best mean in bold.", "",
             "| task | metric | " + " | ".join(upstreams) + " |",
             "|---|---|" + "---|" * len(upstreams)]
    for t in tasks:
        name, higher = metrics[t]
        cells = [summary.get((t, u)) for u in upstreams]
        present = [i for i, c in enumerate(cells) if c is not None]
        best = (max if higher else min)(present, key=lambda i: cells[i]["mean"]) if len(present) > 1 else None
        row = [f"**{format_cell(c, show_n)}**" if i == best else format_cell(c, show_n) for i, c in enumerate(cells)]
        lines.append(f"| {t} | {name} {arrow[higher]} | " + " | ".join(row) + " |")
    if not layer_table:
        return "\n".join(lines) + "\n"
    multi = [u for u in upstreams if any((summary.get((t, u)) or {}).get("weights_mean") and
                                         len(summary[(t, u)]["weights_mean"]) > 1 for t in tasks)]
    if multi:
        lines += ["", "Most-weighted layer of the learned weighted sum (0 = transformer input; weight in "
                  "brackets, mean over seeds):", "",
                  "| task | " + " | ".join(multi) + " |", "|---|" + "---|" * len(multi)]
        for t in tasks:
            if _untrained(t):  # not learned: speaker_ver reuses speaker_id's weights (or a fixed mix)
                continue
            row = []
            for u in multi:
                w = (summary.get((t, u)) or {}).get("weights_mean")
                row.append(f"{int(np.argmax(w))} ({max(w):.2f})" if w else "–")
            lines.append(f"| {t} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def write_csv(path: str, summary: Dict, upstreams: Sequence[str], tasks: Sequence[str],
              metrics: Dict[str, Tuple[str, bool]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["task", "metric", "higher_is_better"] + [x for u in upstreams for x in (u, f"{u} std")]
                   + ["seeds"])
        for t in tasks:
            name, higher = metrics[t]
            row: List = [t, _with_unit(name), int(higher)]
            n = 0
            for u in upstreams:
                s = summary.get((t, u))
                row += ["", ""] if s is None else [f"{s['mean']:.3f}", f"{s['std']:.3f}"]
                n = max(n, s["n"] if s else 0)
            w.writerow(row + [n])


def plot_tasks(path: str, summary: Dict, upstreams: Sequence[str], tasks: Sequence[str],
               metrics: Dict[str, Tuple[str, bool]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(tasks))
    rows = int(np.ceil(len(tasks) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, t in zip(axes.flat, tasks):
        name, higher = metrics[t]
        means = [summary.get((t, u), {}).get("mean", np.nan) for u in upstreams]
        stds = [summary.get((t, u), {}).get("std", 0.0) for u in upstreams]
        x = np.arange(len(upstreams))
        ax.bar(x, means, yerr=stds, capsize=4, color=[colours[i % len(colours)] for i in range(len(x))])
        ax.set_xticks(x)
        ax.set_xticklabels(upstreams, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{t} ({'higher' if higher else 'lower'} is better)", fontsize=9)
        ax.set_ylabel(_with_unit(name), fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_layer_weights(path: str, summary: Dict, upstreams: Sequence[str], tasks: Sequence[str]) -> bool:
    """One panel per upstream with more than one layer; returns False (and writes nothing) if there is none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for u in upstreams:
        curves = [(t, summary[(t, u)]["weights_mean"]) for t in tasks if not _untrained(t)
                  and (t, u) in summary and summary[(t, u)]["weights_mean"]
                  and len(summary[(t, u)]["weights_mean"]) > 1]
        if curves:
            panels.append((u, curves))
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.3), squeeze=False)
    for ax, (u, curves) in zip(axes.flat, panels):
        for t, w in curves:
            ax.plot(range(len(w)), w, marker="o", label=t)
        ax.set_title(u, fontsize=9)
        ax.set_xlabel("layer (0 = transformer input)", fontsize=8)
        ax.set_ylabel("softmax weight", fontsize=8)
        ax.set_xticks(range(len(curves[0][1])))
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(results: Sequence[Dict], out_dir: str, upstreams: Sequence[str], tasks: Sequence[str],
                 metrics: Dict[str, Tuple[str, bool]]) -> Dict[str, str]:
    """Write ``table.md``, ``table.csv``, ``tasks.png`` and ``layer_weights.png``; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    summary = summarise(results)
    seeds = sorted({r["seed"] for r in results})
    paths = {"markdown": os.path.join(out_dir, "table.md"), "csv": os.path.join(out_dir, "table.csv"),
             "tasks_plot": os.path.join(out_dir, "tasks.png")}
    with open(paths["markdown"], "w") as f:
        f.write(markdown_table(summary, upstreams, tasks, metrics, seeds))
    write_csv(paths["csv"], summary, upstreams, tasks, metrics)
    plot_tasks(paths["tasks_plot"], summary, upstreams, tasks, metrics)
    lw = os.path.join(out_dir, "layer_weights.png")
    if plot_layer_weights(lw, summary, upstreams, tasks):
        paths["layer_weights_plot"] = lw
    logger.info("wrote %s", ", ".join(paths.values()))
    return paths
