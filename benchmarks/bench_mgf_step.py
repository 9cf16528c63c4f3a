"""Benchmark: one MGF training step (forward + backward + optimizer step) against one stock fairseq HuBERT step
(fairseq's own ``hubert`` model and ``hubert`` criterion, random frame labels) on the same encoder and batch,
side by side in one run. MGF's two segments of each utterance are together as long as HuBERT's crop (HuBERT:
B x L samples; MGF: 2B x L/2, view-major), so both see the same audio per step.

    python benchmarks/bench_mgf_step.py --out benchmarks/RESULTS_mgf_step.md

Models come from the example YAMLs, so "same encoder" means what the configs say: tiny =
examples/mgf/config/mgf_tiny.yaml vs examples/hubert/config/hubert_tiny.yaml; base =
examples/mgf/config/mgf_base.yaml vs fairseq's examples/hubert/config/pretrain/hubert_base_librispeech.yaml
(12 x 768). The encoder parameter counts are checked equal. ``encoder_layerdrop`` is 0 for both (MGF reads fixed
layers; HuBERT-Base's 0.05 would make HuBERT's step about 5 % cheaper on average and noisier).

Reference row: the same HuBERT step on MGF's layout (2B rows of L/2 samples), which separates the cost of the
shorter rows (self-attention is quadratic in the row length) from the cost of the objectives. MGF variants: the
full model with each phoneme-scale target (``unmasked_layer``, ``ema``, ``quantised``), each
scale alone and each scale switched off (criterion weights 0: no masks, no head, no compute). Steps of all
variants are interleaved round by round (one step of each per round), so load from other processes on a shared
machine hits every variant alike; the table gives the median over rounds (after one warm-up round) of the
process CPU time (robust to other load with one thread) and of the wall-clock time. ``--profile`` adds a
torch.profiler table of the full MGF step (top operators by self CPU time).
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import statistics
import sys
import time
from argparse import Namespace
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch
from bench_soft_dtw import machine  # one home for the machine line (lscpu model name, cores)
from fairseq.criterions.hubert_criterion import HubertCriterion
from fairseq.data import Dictionary
from fairseq.models.hubert.hubert import HubertConfig, HubertModel
from omegaconf import OmegaConf

from fairseq_plugins.criterions.mgf import MgfCriterion
from fairseq_plugins.models.mgf import MgfConfig, MgfModel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENCODER_PARTS = ("feature_extractor", "layer_norm", "post_extract_proj", "encoder", "mask_emb")

# size -> (MGF yaml, HuBERT yaml, HuBERT label classes)
SIZES = {
    "tiny": ("examples/mgf/config/mgf_tiny.yaml", "examples/hubert/config/hubert_tiny.yaml", 100),
    "base": ("examples/mgf/config/mgf_base.yaml",
             "FAIRSEQ/examples/hubert/config/pretrain/hubert_base_librispeech.yaml", 500),
}

# name -> (model overrides, criterion overrides)
VARIANTS: Dict[str, Tuple[dict, dict]] = {
    "mgf full": ({}, {}),
    "mgf full, ema target": ({"phone_target": "ema"}, {}),
    "mgf full, quantised target": ({"phone_target": "quantised"}, {}),
    "frame only": ({}, {"w_phone": 0.0, "w_utt": 0.0}),
    "phone only": ({}, {"w_frame": 0.0, "w_utt": 0.0}),
    "utt only": ({}, {"w_frame": 0.0, "w_phone": 0.0}),
    "no frame": ({}, {"w_frame": 0.0}),
    "no phone": ({}, {"w_phone": 0.0}),
    "no utt": ({}, {"w_utt": 0.0}),
}


def yaml_path(rel: str) -> str:
    if rel.startswith("FAIRSEQ/"):
        import fairseq

        return os.path.join(os.path.dirname(fairseq.__file__), rel[len("FAIRSEQ/"):])
    return os.path.join(REPO, rel)


def model_section(rel: str) -> dict:
    section = OmegaConf.to_container(OmegaConf.load(yaml_path(rel))["model"])
    section.pop("_name")
    section.pop("label_rate", None)
    return section


def encoder_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if n.split(".")[0] in ENCODER_PARTS)


Step = Callable[[], None]


def hubert_step(size: str, bsz: int, crop: int, seed: int = 0) -> Tuple[Step, int]:
    """Stock fairseq HuBERT (model + criterion ``hubert``: masked prediction, loss_weights [10]), random labels
    at 50 Hz from ``classes`` k-means units."""
    _, rel, classes = SIZES[size]
    cfg = OmegaConf.structured(HubertConfig(**{**model_section(rel), "label_rate": 50.0, "encoder_layerdrop": 0.0}))
    dictionary = Dictionary()
    for i in range(classes):
        dictionary.add_symbol(str(i))
    torch.manual_seed(seed)
    model = HubertModel(cfg, Namespace(sample_rate=16000, label_rate=50.0), [dictionary]).train()
    criterion = HubertCriterion(None, pred_masked_weight=1.0, pred_nomask_weight=0.0, loss_weights=[10.0])
    g = torch.Generator().manual_seed(seed)
    source = torch.randn(bsz, crop, generator=g)
    labels = torch.randint(dictionary.nspecial, len(dictionary), (bsz, crop // 320), generator=g)
    sample = {"id": torch.arange(bsz),
              "net_input": {"source": source, "padding_mask": torch.zeros_like(source, dtype=torch.bool)},
              "target_list": [labels]}
    return make_step(model, lambda: criterion(model, sample)[0]), encoder_params(model)


def mgf_step(size: str, bsz: int, crop: int, model_over: dict, crit_over: dict,
             seed: int = 0) -> Tuple[Step, int]:
    """MGF from the size's YAML: 2 * bsz segments of crop // 2 samples (view-major), criterion weights from the
    YAML with ``crit_over``."""
    mgf_rel = SIZES[size][0]
    yaml = OmegaConf.load(yaml_path(mgf_rel))
    cfg = OmegaConf.structured(MgfConfig(**{**model_section(mgf_rel), **model_over}))
    crit_cfg = {k: v for k, v in OmegaConf.to_container(yaml["criterion"]).items() if k != "_name"}
    torch.manual_seed(seed)
    model = MgfModel(cfg, Namespace(sample_rate=16000, seed=1)).train()
    criterion = MgfCriterion(None, **{**crit_cfg, **crit_over})
    g = torch.Generator().manual_seed(seed)
    source = torch.randn(2 * bsz, crop // 2, generator=g)
    sample = {"net_input": {"source": source, "padding_mask": torch.zeros_like(source, dtype=torch.bool)},
              "views": {"num_views": 2, "batch_size": bsz, "aligned": False}}
    return make_step(model, lambda: criterion(model, sample)[0]), encoder_params(model)


def make_step(model: torch.nn.Module, loss_fn: Callable[[], torch.Tensor]) -> Step:
    """forward + backward + Adam step, with the update counter fairseq's trainer passes on."""
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=5e-4, betas=(0.9, 0.98),
                           eps=1e-6, weight_decay=0.01)
    state = {"updates": 0}

    def step():
        model.set_num_updates(state["updates"])
        loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        state["updates"] += 1

    return step


def run_grid(steps: Dict[str, Step], rounds: int) -> Dict[str, Tuple[List[float], List[float]]]:
    """Interleaved: round r runs one step of every variant; round 0 is the warm-up. (wall ms, CPU ms) lists."""
    times = {name: ([], []) for name in steps}
    for r in range(rounds + 1):
        for name, step in steps.items():
            c0, t0 = time.process_time(), time.perf_counter()
            step()
            wall, cpu = 1e3 * (time.perf_counter() - t0), 1e3 * (time.process_time() - c0)
            if r:
                times[name][0].append(wall)
                times[name][1].append(cpu)
        print(f"round {r}/{rounds}: " + ", ".join(f"{n} {times[n][1][-1]:.0f}" for n in steps if r), flush=True)
    return times


def profile_table(step: Step, rows: int = 25) -> str:
    from torch.profiler import ProfilerActivity, profile

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


VARIANT_SETS = {"all": list(VARIANTS), "targets": ["mgf full", "mgf full, ema target", "mgf full, quantised target"]}
DEFAULT_GRID = ["tiny:4:48000:all", "base:1:64000:all", "base:1:250000:targets"]


def parse_grid(spec: str) -> Tuple[str, int, int, List[str]]:
    """``SIZE:B:CROP[:SET]`` -> (size, utterances, HuBERT crop in samples, MGF variants)."""
    parts = spec.split(":")
    if len(parts) not in (3, 4) or parts[0] not in SIZES or (len(parts) == 4 and parts[3] not in VARIANT_SETS):
        raise ValueError(f"--grid {spec!r}: expected SIZE:B:CROP[:SET] with SIZE in {list(SIZES)} and SET in "
                         f"{list(VARIANT_SETS)}")
    return parts[0], int(parts[1]), int(parts[2]), VARIANT_SETS[parts[3] if len(parts) == 4 else "all"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", nargs="+", default=DEFAULT_GRID,
                        help="SIZE:B:CROP[:SET]: size (tiny, base), utterances per step (HuBERT rows; MGF has 2 "
                             "rows per utterance), HuBERT crop in samples (MGF: two segments of CROP/2), MGF "
                             f"variants ({', '.join(f'{k} = {v}' for k, v in VARIANT_SETS.items())})")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="profile the full MGF step of each grid entry")
    parser.add_argument("--out", default=None, help="write the markdown results here")
    args = parser.parse_args(argv)
    grid = [parse_grid(g) for g in args.grid]
    logging.getLogger("numba").setLevel(logging.WARNING)
    logging.getLogger("fairseq").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    np.random.seed(0)

    load_before = os.getloadavg()
    results, profiles = [], []
    for size, bsz, crop, variants in grid:
        step, hubert_enc = hubert_step(size, bsz, crop)
        steps = {"hubert": step}
        # the same HuBERT on MGF's layout (2B rows of CROP/2): separates the cost of the row length (attention is
        # quadratic in it) from the cost of the objectives
        steps["hubert, MGF's layout (2B x CROP/2)"] = hubert_step(size, 2 * bsz, crop // 2)[0]
        for name in variants:
            steps[name], enc = mgf_step(size, bsz, crop, *VARIANTS[name])
            if enc != hubert_enc:
                raise RuntimeError(f"{size}: encoder parameters differ, MGF {enc} vs HuBERT {hubert_enc}")
        print(f"{size}: B={bsz} utterances, HuBERT crop {crop} samples, encoder {hubert_enc / 1e6:.2f} M "
              f"parameters", flush=True)
        results.append((size, bsz, crop, hubert_enc, run_grid(steps, args.rounds)))
        if args.profile:
            profiles.append((f"{size}, B = {bsz}, crop {crop}", profile_table(steps[variants[0]])))
            print(profiles[-1][1], flush=True)
        del steps
    load_after = os.getloadavg()

    lines = [
        "# MGF training step vs stock fairseq HuBERT step (CPU)",
        "",
        f"- machine: {machine()} (lscpu model name, cores); {args.threads} torch thread(s); load average "
        f"before/after: {load_before[0]:.1f} / {load_after[0]:.1f} (the machine is shared, so wall times are "
        "noisy; CPU time is the better measure with one thread)",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; torch "
        f"{torch.__version__}, python {platform.python_version()}",
        f"- command: `OMP_NUM_THREADS={args.threads} python {' '.join(sys.argv)}`",
        "- one step = forward + backward + Adam step, float32, train mode (dropout on); HuBERT: fairseq's "
        "`hubert` model + `hubert` criterion (masked prediction, `loss_weights: [10]`), random labels; MGF: "
        "`mgf` model + `mgf` criterion with the YAML's settings (phoneme target `unmasked_layer`, 100 "
        "distractors, utterance scale on the masked pass) unless the row says otherwise",
        f"- median over {args.rounds} interleaved rounds after a warm-up round; ratio = CPU time / HuBERT's CPU "
        "time (goal from issue 13: MGF <= 1.3x)",
    ]
    for size, bsz, crop, enc, times in results:
        mgf_rel, hub_rel, classes = SIZES[size]
        lines += [
            "",
            f"## {size}: {enc / 1e6:.2f} M encoder parameters, B = {bsz} utterances; HuBERT {bsz} x {crop} "
            f"samples, MGF {2 * bsz} x {crop // 2}",
            "",
            f"Models: `{mgf_rel}` vs `{hub_rel.replace('FAIRSEQ/', 'fairseq/')}` ({classes} label classes).",
            "",
            "| step | CPU ms (median) | wall ms (median) | x HuBERT (CPU) |",
            "|---|---:|---:|---:|",
        ]
        ref = statistics.median(times["hubert"][1])
        for name, (wall, cpu) in times.items():
            lines.append(f"| {name} | {statistics.median(cpu):.0f} | {statistics.median(wall):.0f} | "
                         f"{statistics.median(cpu) / ref:.2f} |")
    for what, table in profiles:
        lines += ["", f"## Profile of the full MGF step ({what}; top operators by self CPU time)", "", "```",
                  table.rstrip(), "```"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
