"""A picture of a LASER run: one pair's soft alignment (the expected-alignment matrix) and the loss curves.

    python -m fairseq_plugins.laser_report CHECKPOINT --manifest-dir DIR [--split valid --index 0]
        [--log hydra_train.log] --out laser.png

The pair is made exactly as in training (speed + pitch perturbed view, seeded), encoded by the fine-tuned
model, and aligned with soft-DTW; ``E = d sdtw / d C`` is the probability that frame i of view 1 aligns with
frame j of view 2 (a soft warping path). With ``--log`` the training and validation losses parsed from
fairseq's log are plotted beside it.
"""
import argparse
import logging
import os
import re
import sys
from typing import Dict, List, Optional, Tuple

import torch

from fairseq_plugins.compat import cli_logging

logger = logging.getLogger(__name__)

_INNER = re.compile(r"\[train_inner\].* loss=([-\d.eE+]+).*num_updates=(\d+)")
_VALID = re.compile(r"\[valid\].*\| loss ([-\d.eE+]+) .*\| num_updates (\d+)")


def parse_fairseq_log(path: str) -> Dict[str, List[Tuple[int, float]]]:
    """``{'train': [(update, loss)], 'valid': [...]}`` from a fairseq ``log_format: simple`` log."""
    curves: Dict[str, List[Tuple[int, float]]] = {"train": [], "valid": []}
    with open(path) as f:
        for line in f:
            for key, rx in (("train", _INNER), ("valid", _VALID)):
                m = rx.search(line)
                if m:
                    curves[key].append((int(m.group(2)), float(m.group(1))))
    return curves


def pair_alignment(checkpoint: str, manifest_dir: str, split: str = "valid", index: Optional[int] = None):
    """``(E [N x M], info)`` for sample ``index`` of ``split``, with the model and criterion of the run.

    ``index=None`` takes the first utterance whose second view was sped up or slowed down (a non-diagonal
    alignment is the informative picture).
    """
    from fairseq_plugins.data.laser_pairs import LaserPairDataset
    from fairseq_plugins.inspect_checkpoint import load_fairseq_checkpoint
    from fairseq_plugins.losses.soft_dtw import expected_alignment, soft_dtw_divergence

    model, cfg, _ = load_fairseq_checkpoint(checkpoint)
    t = cfg.task
    ds = LaserPairDataset(os.path.join(manifest_dir, f"{split}.tsv"), t.sample_rate, list(t.speed_factors),
                          list(t.pitch_semitones), t.min_sample_size, t.max_sample_size, seed=t.seed,
                          swap_prob=0.0)
    if index is None:
        index = next((i for i in range(len(ds)) if len(ds[i]["views"][0]) != len(ds[i]["views"][1])), 0)
    if not 0 <= index < len(ds):
        raise IndexError(f"--index {index}: {split} has {len(ds)} usable utterances")
    item = ds[index]
    gamma = float(cfg.criterion.get("gamma", 0.1))
    with torch.no_grad():
        x = model(item["views"][0].unsqueeze(0))["x"]
        y = model(item["views"][1].unsqueeze(0))["x"]
        e = expected_alignment(x.double(), y.double(), gamma)[0]
        div = float(soft_dtw_divergence(x.double(), y.double(), gamma)[0])
    info = {"utterance": index, "split": split, "frames": (x.size(1), y.size(1)), "divergence": div,
            "gamma": gamma}
    return e.float().numpy(), info


def plot(e, info, curves: Optional[Dict[str, List[Tuple[int, float]]]], out: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = 2 if curves else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6 * ncols, 5), squeeze=False)
    ax = axes[0, 0]
    im = ax.imshow(e, origin="lower", aspect="auto", cmap="magma", interpolation="nearest")
    ax.set_xlabel(f"view 2 frame (speed + pitch perturbed, {info['frames'][1]} frames)")
    ax.set_ylabel(f"view 1 frame ({info['frames'][0]} frames)")
    ax.set_title(f"soft-DTW expected alignment (gamma {info['gamma']:g})\n{info['split']} utterance "
                 f"{info['utterance']}, divergence {info['divergence']:.2f}")
    fig.colorbar(im, ax=ax, label="P(frame i aligned with frame j)")
    if curves:
        ax = axes[0, 1]
        for key, style in (("train", "-"), ("valid", "o-")):
            if curves[key]:
                steps, losses = zip(*curves[key])
                ax.plot(steps, losses, style, label=f"{key} loss")
        ax.set_xlabel("update")
        ax.set_ylabel("LASER loss (soft-DTW divergence + alpha IDM)")
        ax.set_title("loss")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="laser_finetune checkpoint")
    p.add_argument("--manifest-dir", required=True, help="folder with {split}.tsv")
    p.add_argument("--split", default="valid", help="manifest split to take the utterance from")
    p.add_argument("--index", type=int, default=None,
                   help="utterance index within the split (default: the first one whose view 2 changed speed)")
    p.add_argument("--log", help="fairseq training log (log_format simple) for the loss curves")
    p.add_argument("--out", required=True, help="output PNG")
    args = p.parse_args(argv)
    cli_logging(logging.WARNING)
    e, info = pair_alignment(args.checkpoint, args.manifest_dir, args.split, args.index)
    curves = parse_fairseq_log(args.log) if args.log else None
    print(f"wrote {plot(e, info, curves, args.out)} (divergence {info['divergence']:.3f}, frames {info['frames']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
