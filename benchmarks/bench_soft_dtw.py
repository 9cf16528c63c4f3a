"""Benchmark: forward + backward of soft-DTW on CPU, float32 inputs, gamma 0.1, against pysdtw, tslearn and
the `soft-dtw` package (mblondel), with the max abs gradient error of each against a float64 reference; then
the share of a LASER-like step taken by the soft-DTW divergence.

    pip install -r benchmarks/requirements.txt     # with PIP_CONSTRAINT=constraints.txt exported
    python benchmarks/bench_soft_dtw.py --out benchmarks/RESULTS_soft_dtw.md

Inputs are L2-normalised random frames (the LASER regime: unit-norm 256-d projections). Each implementation
computes its own cost matrix; tslearn's default cost builds a B x N x M x D tensor, so it gets the same
matmul cost as the others (what is compared is the DP). Times are wall-clock medians over --repeats runs after
one warm-up run (numba compiles on its first call). The reference gradient is our torch path run on the inputs
cast to float64 (it is checked against a naive python-loop reference in tests/losses/test_soft_dtw.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch

from fairseq_plugins.losses.soft_dtw import (
    cpp_backend_available,
    pairwise_sq_dists,
    soft_dtw,
    soft_dtw_divergence,
)

GAMMA = 0.1
Impl = Callable[[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]


# ------------------------------------------------------------------------------------------------------------
# implementations: each takes float32 x: B x N x D, y: B x M x D and returns (grad_x, grad_y) of sum_b sdtw_b
# ------------------------------------------------------------------------------------------------------------
def _autograd(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Impl:
    def run(x, y):
        a = x.detach().clone().requires_grad_(True)
        b = y.detach().clone().requires_grad_(True)
        fn(a, b).sum().backward()
        return a.grad, b.grad

    return run


def ours(backend: str, exact_cost: bool = True) -> Impl:
    return _autograd(lambda a, b: soft_dtw(a, b, GAMMA, backend=backend, exact_cost=exact_cost))


def make_pysdtw() -> Optional[Impl]:
    try:
        import pysdtw
    except ImportError:
        return None
    mod = pysdtw.SoftDTW(gamma=GAMMA, use_cuda=False)  # default cost: batched matmul expansion
    return _autograd(mod)


def make_tslearn() -> Optional[Impl]:
    try:
        from tslearn.metrics import SoftDTWLossPyTorch
    except ImportError:
        return None
    mod = SoftDTWLossPyTorch(gamma=GAMMA, dist_func=pairwise_sq_dists)
    return _autograd(mod)


def make_mblondel() -> Optional[Impl]:
    try:
        from sdtw import SoftDTW
        from sdtw.distance import SquaredEuclidean
    except ImportError:
        return None

    def run(x, y):
        gx, gy = torch.empty_like(x), torch.empty_like(y)
        for b in range(x.size(0)):
            xb, yb = x[b].numpy(), y[b].numpy()
            dist = SquaredEuclidean(xb, yb)
            sd = SoftDTW(dist, gamma=GAMMA)
            sd.compute()
            e = sd.grad()
            gx[b] = torch.from_numpy(dist.jacobian_product(e))
            gy[b] = torch.from_numpy(SquaredEuclidean(yb, xb).jacobian_product(e.T.copy()))
        return gx, gy

    return run


def set_threads(n: int) -> None:
    torch.set_num_threads(n)
    try:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    except ImportError:
        pass


def timed(fn: Impl, x, y, repeats: int) -> Tuple[List[float], List[float], Tuple[torch.Tensor, torch.Tensor]]:
    """(wall ms, process CPU ms) per run, and the last output."""
    out = fn(x, y)  # warm-up (numba compilation, kernel build, workspace pool)
    wall, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn(x, y)
        wall.append(1e3 * (time.perf_counter() - t0))
        cpu.append(1e3 * (time.process_time() - c0))
    return wall, cpu, out


def make_inputs(bsz: int, n: int, d: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(bsz, n, d, generator=g), dim=-1)
    y = torch.nn.functional.normalize(torch.randn(bsz, n, d, generator=g), dim=-1)
    return x, y


def reference_grads(x, y):
    a = x.double().requires_grad_(True)
    b = y.double().requires_grad_(True)
    soft_dtw(a, b, GAMMA, backend="torch").sum().backward()
    return a.grad, b.grad


# ------------------------------------------------------------------------------------------------------------
# LASER step share
# ------------------------------------------------------------------------------------------------------------
def laser_share(repeats: int, threads: int) -> Dict[str, Tuple[float, float]]:
    """HuBERT-Base-size fairseq TransformerEncoder (12 x 768, top 2 layers + final layer norm trainable),
    batch 2 (the two views), 200 frames, + Linear(768 -> 256) + L2 norm, forward + backward; vs the three
    soft-DTW DPs of the divergence at N = M = 200, D = 256 (forward + backward)."""
    from fairseq.models.wav2vec.wav2vec2 import TransformerEncoder, Wav2Vec2Config

    set_threads(threads)
    torch.manual_seed(0)
    enc = TransformerEncoder(Wav2Vec2Config(encoder_layerdrop=0.0)).train()
    for name, p in enc.named_parameters():
        p.requires_grad_(name.startswith(("layers.10.", "layers.11.", "layer_norm.")))
    proj = torch.nn.Linear(768, 256)
    feats = torch.randn(2, 200, 768)

    def encoder_step():
        out = enc(feats)
        out = out[0] if isinstance(out, tuple) else out
        z = torch.nn.functional.normalize(proj(out), dim=-1)
        z.square().sum().backward()

    z = torch.nn.functional.normalize(torch.randn(2, 200, 256), dim=-1)

    def sdtw_step(backend):
        x = z[0:1].clone().requires_grad_(True)
        y = z[1:2].clone().requires_grad_(True)
        soft_dtw_divergence(x, y, GAMMA, backend=backend).sum().backward()

    def medians(fn, n_runs):
        wall, cpu, _ = timed(fn, None, None, n_runs)
        return statistics.median(wall), statistics.median(cpu)

    res = {"encoder": medians(lambda a, b: encoder_step(), repeats)}
    backends = ["cpp", "torch"] if cpp_backend_available() else ["torch"]
    for backend in backends:
        res[f"ours ({backend})"] = medians(lambda a, b, be=backend: sdtw_step(be), 5 * repeats)
    try:
        import pysdtw
    except ImportError:
        pysdtw = None
    if pysdtw is not None:
        pys = pysdtw.SoftDTW(gamma=GAMMA, use_cuda=False)

        def pysdtw_step(a, b):
            x = z[0:1].clone().requires_grad_(True)
            y = z[1:2].clone().requires_grad_(True)
            (pys(x, y) - 0.5 * (pys(x, x) + pys(y, y))).sum().backward()

        res["pysdtw"] = medians(pysdtw_step, 5 * repeats)
    return res


# ------------------------------------------------------------------------------------------------------------
def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        models = [ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")]
        model = models[0] if models else "?"
    except OSError:
        model = platform.processor()
    return f"{model}, {os.cpu_count()} cores"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--skip", nargs="*", default=[], help="implementations to leave out")
    parser.add_argument("--no-laser", action="store_true")
    parser.add_argument("--out", default=None, help="write the markdown results here")
    args = parser.parse_args(argv)
    logging.getLogger("numba").setLevel(logging.WARNING)  # fairseq's import turns on debug logging

    impls: Dict[str, Optional[Impl]] = {}
    if cpp_backend_available():
        impls["ours (cpp)"] = ours("cpp")
        impls["ours (cpp, f32 cost)"] = ours("cpp", exact_cost=False)
    impls["ours (torch)"] = ours("torch")
    impls["pysdtw"] = make_pysdtw()
    impls["tslearn"] = make_tslearn()
    impls["soft-dtw"] = make_mblondel()
    missing = [k for k, v in impls.items() if v is None]
    impls = {k: v for k, v in impls.items() if v is not None and k not in args.skip}
    names = list(impls)
    single_threaded = {"soft-dtw"}  # no threading API: measured once, with 1 thread

    load_before = os.getloadavg()
    times: Dict[Tuple[str, int, int, int], Tuple[List[float], List[float]]] = {}
    errors: Dict[Tuple[str, int, int], Tuple[float, float]] = {}
    for bsz in args.batches:
        for n in args.lengths:
            x, y = make_inputs(bsz, n, args.dim)
            rx, ry = reference_grads(x, y)
            scale = max(rx.abs().max().item(), ry.abs().max().item())
            for threads in args.threads:
                set_threads(threads)
                for name, fn in impls.items():
                    if name in single_threaded and threads != args.threads[0]:
                        times[(name, bsz, n, threads)] = times[(name, bsz, n, args.threads[0])]
                        continue
                    wall, cpu, (gx, gy) = timed(fn, x, y, args.repeats)
                    times[(name, bsz, n, threads)] = (wall, cpu)
                    err = max((gx.double() - rx).abs().max().item(), (gy.double() - ry).abs().max().item())
                    errors[(name, bsz, n)] = (err, err / scale)
                    print(
                        f"B={bsz} N=M={n} threads={threads} {name:20s} wall {statistics.median(wall):8.1f} ms"
                        f"  cpu {statistics.median(cpu):8.1f} ms  max|dg| {err:.2e} ({err / scale:.1e} rel)",
                        flush=True,
                    )
    load_after = os.getloadavg()

    laser = None
    if not args.no_laser:
        laser = {th: laser_share(args.repeats, th) for th in args.threads}
        for th, res in laser.items():
            summary = ", ".join(f"{k} {v[0]:.1f} ms wall / {v[1]:.1f} ms cpu" for k, v in res.items())
            print(f"LASER step, {th} thread(s): {summary}", flush=True)

    lines = [
        "# Soft-DTW CPU benchmark",
        "",
        f"- machine: {machine()} (lscpu model name, cores); load average before/after the grid: "
        f"{load_before[0]:.1f} / {load_after[0]:.1f} (the machine is shared, so timings are noisy)",
        f"- torch {torch.__version__}, python {platform.python_version()}",
        f"- command: `python {' '.join(sys.argv)}`",
        "- forward + backward of sum_b sdtw(x_b, y_b), float32 inputs (L2-normalised random frames), "
        f"gamma {GAMMA}, D = {args.dim}, N = M; median over {args.repeats} runs after a warm-up of the "
        "wall-clock time and of the process CPU time (all threads; robust to other load on the machine, "
        "for 1 thread the better measure)",
        "- ours (cpp): compiled kernel, cost matrix in float64 (default, exact_cost=True); ours (cpp, f32 "
        "cost): exact_cost=False (float32 cost matmul, as the competitors); ours (torch): the pure-torch "
        "fallback",
        "- pysdtw 0.0.5 / tslearn 0.10 SoftDTWLossPyTorch / soft-dtw 0.1.6 (mblondel): their numba / Cython "
        "DP; tslearn is given the same matmul cost as the others (its default builds a B x N x M x D "
        "tensor); soft-dtw has no batch or thread API (loop over items, float64 throughout, measured with 1 "
        "thread and repeated in the 2-thread rows)",
    ]
    if missing:
        lines.append(f"- not available: {', '.join(missing)}")
    for threads in args.threads:
        lines += ["", f"## {threads} thread(s): median (min) wall ms / median process CPU ms", ""]
        lines.append("| B | N = M | " + " | ".join(names) + " |")
        lines.append("|---|---|" + "---|" * len(names))
        for bsz in args.batches:
            for n in args.lengths:
                cells = []
                for name in names:
                    wall, cpu = times[(name, bsz, n, threads)]
                    cells.append(f"{statistics.median(wall):.0f} ({min(wall):.0f}) / {statistics.median(cpu):.0f}")
                lines.append(f"| {bsz} | {n} | " + " | ".join(cells) + " |")
    lines += ["", "## Max abs gradient error vs the float64 reference (relative to max |grad|)", ""]
    lines.append("| B | N = M | " + " | ".join(names) + " |")
    lines.append("|---|---|" + "---|" * len(names))
    for bsz in args.batches:
        for n in args.lengths:
            cells = [f"{errors[(nm, bsz, n)][0]:.1e} ({errors[(nm, bsz, n)][1]:.0e})" for nm in names]
            lines.append(f"| {bsz} | {n} | " + " | ".join(cells) + " |")
    if laser is not None:
        sdtw_cols = [k for k in laser[args.threads[0]] if k != "encoder"]
        lines += [
            "",
            "## Share of a LASER step",
            "",
            "HuBERT-Base-size `fairseq.models.wav2vec.wav2vec2.TransformerEncoder` (12 x 768, FFN 3072, "
            "train mode, layers 10-11 + final layer norm trainable) + Linear(768 -> 256) + L2 norm, "
            "forward + backward at batch 2 (the two views) x 200 frames, vs the soft-DTW divergence of the "
            "two views (3 DPs, N = M = 200, D = 256, forward + backward). Median wall ms / process CPU ms; "
            "% = sdtw / (encoder + sdtw) in CPU time.",
            "",
            "| threads | encoder step | " + " | ".join(sdtw_cols) + " |",
            "|---|---|" + "---|" * len(sdtw_cols),
        ]
        for th, res in laser.items():
            enc = res["encoder"]
            cells = [
                f"{v[0]:.1f} / {v[1]:.1f} ({100 * v[1] / (enc[1] + v[1]):.2f}%)"
                for k, v in res.items()
                if k != "encoder"
            ]
            lines.append(f"| {th} | {enc[0]:.0f} / {enc[1]:.0f} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
