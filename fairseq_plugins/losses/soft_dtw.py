"""Soft-DTW (Cuturi & Blondel 2017, "Soft-DTW: a Differentiable Loss Function for Time-Series",
arXiv 1703.01541): the dynamic-time-warping discrepancy with the hard minimum replaced by the soft minimum
softmin_gamma(a) = -gamma log sum_k exp(-a_k / gamma), for batches of variable-length sequences, with the
soft-DTW divergence sdtw(x, y) - (sdtw(x, x) + sdtw(y, y)) / 2 and the expected alignment E = d sdtw / d C.
The cost (by default) and the DP run in float64 whatever the input dtype and the forward keeps the local
soft-min weights, so the backward (the recursion for E, then the chain rule through C_ij = ||x_i - y_j||^2
with two batched matmuls) is exact; recomputing the weights from differences of large accumulated sums, as
the paper does, loses precision in float32. Two backends: a compiled C++ CPU kernel (items processed as SIMD
lanes, several rows swept along their anti-diagonals so that independent cells hide the exp/log latency,
groups of items in parallel), built lazily on first use from ``_sdtw_cpu.cpp`` (shipped as package data), and
a pure-torch anti-diagonal wavefront (one batched vector op sequence per diagonal) that also runs on CUDA
tensors. The choice is explicit: ``backend="cpp"`` raises when the kernel cannot be built (with the compiler's
reason), ``"torch"`` never compiles anything, and ``"auto"`` (the default) logs once per device type which
backend it uses and why (a kernel that fails to build is a WARNING). :func:`selected_backend` answers the same
question without running anything.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import platform
import threading
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

__all__ = [
    "BACKEND_ENV",
    "SoftDTW",
    "clear_workspace_cache",
    "cpp_backend_available",
    "cpp_backend_error",
    "expected_alignment",
    "pairwise_sq_dists",
    "selected_backend",
    "soft_dtw",
    "soft_dtw_divergence",
]

#: environment variable that selects the backend when ``backend`` is not given: auto | torch | cpp
BACKEND_ENV = "FAIRSEQ_PLUGINS_SDTW_BACKEND"
_BACKENDS = ("auto", "torch", "cpp")
# "unreachable" marker of the DP: finite, so that no inf - inf (NaN) can appear anywhere
_BIG = 1e200

Lengths = Optional[Union[Tensor, Sequence[int]]]


# ----------------------------------------------------------------------------------------------------
# input checks
# ----------------------------------------------------------------------------------------------------
def _check_gamma(gamma: float) -> float:
    gamma = float(gamma)
    if not gamma > 0:  # also catches NaN
        raise ValueError(f"soft_dtw: gamma must be > 0, got {gamma}")
    return gamma


def _check_band(band: Optional[float]) -> Optional[float]:
    if band is None:
        return None
    band = float(band)
    if not band >= 0:
        raise ValueError(f"soft_dtw: band must be >= 0 (or None for no band), got {band}")
    return band


def _check_finite(t: Tensor, name: str) -> None:
    # one reduction on the fast path; a sum can overflow on finite inputs, so count before complaining
    if not bool(torch.isfinite(t.sum())):
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise ValueError(f"soft_dtw: {name} contains {bad} non-finite values (NaN or inf)")


def _check_lengths(lengths: Lengths, batch: int, size: int, name: str, device: torch.device) -> Tensor:
    """Per-item lengths as an int64 tensor [B] on ``device``, each in [1, size]."""
    if lengths is None:
        out = torch.full((batch,), size, dtype=torch.long)
    else:
        out = torch.as_tensor(lengths).detach().to("cpu")
        if out.dim() != 1 or out.numel() != batch:
            raise ValueError(f"soft_dtw: {name} must have shape [{batch}], got {list(out.shape)}")
        if out.is_floating_point() or out.is_complex():
            raise ValueError(f"soft_dtw: {name} must be integers, got dtype {out.dtype}")
        out = out.long()
    bad = ((out <= 0) | (out > size)).nonzero().flatten()
    if bad.numel():
        b = int(bad[0])
        n = int(out[b])
        if n <= 0:
            raise ValueError(
                f"soft_dtw: item {b} has length {n} in {name}; every sequence needs at least one frame"
            )
        raise ValueError(f"soft_dtw: item {b} has length {n} in {name}, larger than the padded size {size}")
    return out.to(device)


def _check_inputs(x: Tensor, y: Tensor) -> None:
    if x.dim() != 3 or y.dim() != 3:
        raise ValueError(
            f"soft_dtw: x and y must be B x N x D and B x M x D, got {list(x.shape)}, {list(y.shape)}"
        )
    if x.size(0) != y.size(0) or x.size(2) != y.size(2):
        raise ValueError(
            f"soft_dtw: x and y must share batch size and feature size, got {list(x.shape)}, {list(y.shape)}"
        )
    if x.device != y.device:
        raise ValueError(f"soft_dtw: x and y are on different devices ({x.device}, {y.device})")
    if not (x.is_floating_point() and y.is_floating_point()):
        raise ValueError(f"soft_dtw: x and y must be floating point, got {x.dtype}, {y.dtype}")
    _check_finite(x, "x")
    _check_finite(y, "y")


def _resolve_backend(backend: Optional[str], device: torch.device) -> str:
    name = backend if backend is not None else os.environ.get(BACKEND_ENV, "auto")
    name = name.strip().lower()
    if name not in _BACKENDS:
        source = "backend" if backend is not None else BACKEND_ENV
        raise ValueError(f"soft_dtw: {source} must be one of {_BACKENDS}, got {name!r}")
    if name == "cpp":
        if device.type != "cpu":
            raise ValueError(f"soft_dtw: backend 'cpp' runs on CPU tensors only, got a tensor on {device}")
        if _load_cpp() is None:
            raise RuntimeError(
                f"soft_dtw: backend 'cpp' requested but the CPU kernel is unavailable: {_cpp_error}"
            )
        return "cpp"
    if name == "auto":
        if device.type != "cpu":
            chosen, level, why = "torch", logging.INFO, f"tensors are on {device.type} (the C++ kernel is CPU-only)"
        elif _load_cpp() is not None:
            chosen, level, why = "cpp", logging.INFO, f"the compiled CPU kernel built from {_CPP_SOURCE}"
        else:
            chosen, level, why = "torch", logging.WARNING, (
                f"the compiled CPU kernel is unavailable ({_cpp_error}); pass backend='cpp' to make this an error"
            )
        if device.type not in _auto_logged:
            _auto_logged.add(device.type)
            logger.log(level, "soft_dtw: backend 'auto' on %s uses '%s': %s", device.type, chosen, why)
        return chosen
    return "torch"


#: device types for which 'auto' has said which backend it uses (it says so once per device type)
_auto_logged = set()


def selected_backend(backend: Optional[str] = None, device: Union[str, torch.device] = "cpu") -> str:
    """The backend ("cpp" or "torch") that soft_dtw would use for tensors on ``device`` with ``backend``
    (None: the ``FAIRSEQ_PLUGINS_SDTW_BACKEND`` environment variable, else "auto"). Builds the kernel if
    needed; raises like soft_dtw does for an unknown name or an unavailable 'cpp'."""
    return _resolve_backend(backend, torch.device(device))


# ----------------------------------------------------------------------------------------------------
# cost
# ----------------------------------------------------------------------------------------------------
def pairwise_sq_dists(x: Tensor, y: Tensor) -> Tensor:
    """C_ij = ||x_i - y_j||^2 for x: B x N x D, y: B x M x D -> B x N x M, by one batched matmul.

    Differentiable; computed in the input dtype and clamped at 0; no B x N x M x D tensor.
    """
    x2 = (x * x).sum(-1)
    y2 = (y * y).sum(-1)
    cost = torch.baddbmm(x2.unsqueeze(2) + y2.unsqueeze(1), x, y.transpose(1, 2), alpha=-2.0)
    return cost.clamp(min=0.0)


def _cost_dtype(x: Tensor) -> torch.dtype:
    """dtype of the gradient computation (and of the cost unless exact_cost)."""
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


def _compute_cost(x: Tensor, y: Tensor, exact: bool) -> Tuple[Tensor, Optional[Tensor]]:
    """The B x N x M cost for the DP, outside autograd: float64 if ``exact`` (error ~1e-16 whatever the input
    dtype), else in the input dtype. On CPU a float64 cost goes into a pooled buffer, returned as the second
    item: hand it back with _pool.release once the DP has read it."""
    dt = torch.float64 if exact else _cost_dtype(x)
    xc, yc = x.detach().to(dt), y.detach().to(dt)
    shape = (x.size(0), x.size(1), y.size(1))
    buf = None
    if dt == torch.float64 and x.device.type == "cpu":
        numel = shape[0] * shape[1] * shape[2]
        buf = _pool.acquire(numel)
        out = buf[:numel].view(shape)
    else:
        out = torch.empty(shape, dtype=dt, device=x.device)
    torch.add((xc * xc).sum(-1).unsqueeze(2), (yc * yc).sum(-1).unsqueeze(1), out=out)
    out.baddbmm_(xc, yc.transpose(1, 2), alpha=-2.0)
    return out.clamp_min_(0.0), buf


def _band_mask(xl: Tensor, yl: Tensor, n: int, m: int, band: float) -> Tensor:
    """B x N x M bool: cell (i, j) (1-based) is admitted iff
    |(2i - 1) m_b - (2j - 1) n_b| min(n_b, m_b) <= 2 band n_b m_b.

    Same float64 arithmetic as the C++ kernel, so both backends admit exactly the same cells.
    """
    dev = xl.device
    i = torch.arange(1, n + 1, device=dev, dtype=torch.float64).view(1, n, 1)
    j = torch.arange(1, m + 1, device=dev, dtype=torch.float64).view(1, 1, m)
    nb = xl.to(torch.float64).view(-1, 1, 1)
    mb = yl.to(torch.float64).view(-1, 1, 1)
    dev_ = ((2 * i - 1) * mb - (2 * j - 1) * nb).abs() * torch.minimum(nb, mb)
    return dev_ <= (2.0 * band) * (nb * mb)


# ----------------------------------------------------------------------------------------------------
# pure-torch backend: anti-diagonal wavefront, float64
# ----------------------------------------------------------------------------------------------------
# Skewed storage: padded cell (ip, jp), 0 <= ip <= N, 0 <= jp <= M (row/column 0 = the border), lives at
# [k = ip + jp, b, ip]; the predecessors of a diagonal are then plain slices of the two diagonals before.
def _diag_range(k: int, n: int, m: int) -> Tuple[int, int]:
    return max(1, k - m), min(n, k - 1)


def _skew_index(n: int, m: int, device: torch.device) -> Tuple[Tensor, Tensor]:
    ii = torch.arange(1, n + 1, device=device).view(n, 1).expand(n, m).reshape(-1)
    jj = torch.arange(1, m + 1, device=device).view(1, m).expand(n, m).reshape(-1)
    return ii + jj, ii


def _scratch(shape: Tuple[int, ...], fill: float, device: torch.device) -> Tuple[Tensor, Optional[_Workspace]]:
    """float64 tensor filled with ``fill``; on CPU it lives in a pooled buffer whose holder (second item) must
    stay referenced while the tensor is in use."""
    if device.type != "cpu":
        return torch.full(shape, fill, dtype=torch.float64, device=device), None
    numel = math.prod(shape)
    holder = _Workspace(_pool.acquire(numel))
    return holder.buf[:numel].view(shape).fill_(fill), holder


def _torch_forward(
    cost: Tensor, xl: Tensor, yl: Tensor, gamma: float, store: bool
) -> Tuple[Tensor, Optional[Tuple[Tensor, Optional[_Workspace]]]]:
    """cost: B x N x M float64 (band applied as _BIG) -> R_end [B], (weights, their holder) or None."""
    bsz, n, m = cost.shape
    nk = n + m + 1
    kk, ii = _skew_index(n, m, cost.device)
    cs, cs_holder = _scratch((nk, bsz, n + 1), _BIG, cost.device)
    cs[kk, :, ii] = cost.permute(1, 2, 0).reshape(n * m, bsz)
    rs, rs_holder = _scratch((nk, bsz, n + 1), _BIG, cost.device)
    rs[0, :, 0] = 0.0
    ws, ws_holder = _scratch((nk + 2, 3, bsz, n + 2), 0.0, cost.device) if store else (None, None)
    neg_inv_gamma = -1.0 / gamma
    for k in range(2, n + m + 1):
        lo, hi = _diag_range(k, n, m)
        # predecessors (diagonal, up, left): 3 x B x L
        preds = torch.stack((rs[k - 2, :, lo - 1 : hi], rs[k - 1, :, lo - 1 : hi], rs[k - 1, :, lo : hi + 1]))
        low = preds.amin(0)
        e = preds.sub_(low).mul_(neg_inv_gamma).exp_()  # in (0, 1], 1 at the minimum
        total = e.sum(0)  # in [1, 3]
        if ws is not None:
            torch.div(e, total, out=ws[k, :, :, lo : hi + 1])
        out = rs[k, :, lo : hi + 1]
        torch.add(cs[k, :, lo : hi + 1], low, out=out)
        out.sub_(total.log_(), alpha=gamma).clamp_(max=_BIG)
    r_end = rs[xl + yl, torch.arange(bsz, device=cost.device), xl]  # a copy: rs and cs go back to the pool
    del cs, rs, cs_holder, rs_holder
    return r_end, (ws, ws_holder) if store else None


def _torch_backward(ws: Tensor, xl: Tensor, yl: Tensor, grad: Tensor, n: int, m: int) -> Tensor:
    """E = grad_b * dR_b / dC: B x N x M float64 from the stored weights (skewed layout)."""
    bsz = grad.numel()
    nk = n + m + 1
    es = ws.new_zeros((nk + 2, bsz, n + 2))
    es[xl + yl, torch.arange(bsz, device=ws.device), xl] = grad
    for k in range(n + m, 1, -1):
        lo, hi = _diag_range(k, n, m)
        out = es[k, :, lo : hi + 1]
        out.addcmul_(es[k + 2, :, lo + 1 : hi + 2], ws[k + 2, 0, :, lo + 1 : hi + 2])
        out.addcmul_(es[k + 1, :, lo + 1 : hi + 2], ws[k + 1, 1, :, lo + 1 : hi + 2])
        out.addcmul_(es[k + 1, :, lo : hi + 1], ws[k + 1, 2, :, lo : hi + 1])
    kk, ii = _skew_index(n, m, ws.device)
    return es[kk, :, ii].reshape(n, m, bsz).permute(2, 0, 1)


# ----------------------------------------------------------------------------------------------------
# compiled CPU backend
# ----------------------------------------------------------------------------------------------------
_cpp_lock = threading.Lock()
_cpp_ops = None
_cpp_error: Optional[BaseException] = None
_cpp_tried = False


def _cpu_signature() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.machine() + platform.processor()


_CPP_SOURCE = Path(__file__).with_name("_sdtw_cpu.cpp")


def _load_cpp():
    """torch.ops namespace of the compiled kernel, or None if it cannot be built (the reason is kept in
    ``_cpp_error``; 'auto' logs it, 'cpp' raises with it)."""
    global _cpp_ops, _cpp_error, _cpp_tried
    if _cpp_tried:
        return _cpp_ops
    with _cpp_lock:
        if _cpp_tried:
            return _cpp_ops
        try:
            from torch.utils import cpp_extension

            src = _CPP_SOURCE
            if not src.is_file():
                raise FileNotFoundError(f"{src} is missing (the package was installed without its package data)")
            # -std=c++20 (std::bit_cast): torch 2.13 passes it itself; releases that pass -std=c++17 get it
            # overridden (extra_cflags come last, and the last -std wins)
            base = ["-O3", "-ffp-contract=fast", "-fopenmp", "-std=c++20"]
            last: Optional[BaseException] = None
            for flags in (base + ["-march=native"], base):
                key = [src.read_bytes(), " ".join(flags).encode(), _cpu_signature().encode()]
                tag = hashlib.sha1(b"|".join(key + [torch.__version__.encode()])).hexdigest()[:12]
                try:
                    cpp_extension.load(
                        name=f"fairseq_plugins_sdtw_{tag}",
                        sources=[str(src)],
                        extra_cflags=flags,
                        extra_ldflags=["-fopenmp"],
                        is_python_module=False,
                        verbose=False,
                    )
                    _cpp_ops = torch.ops.fairseq_plugins_sdtw
                    break
                except Exception as err:  # compiler missing, flags unsupported, ...
                    last = err
            if _cpp_ops is None:
                raise RuntimeError(str(last))
        except Exception as err:  # kept, not swallowed: 'cpp' raises with it, 'auto' logs it as a warning
            _cpp_error = err
        _cpp_tried = True
    return _cpp_ops


def cpp_backend_available() -> bool:
    """True if the compiled CPU kernel can be used (compiles it on the first call)."""
    return _load_cpp() is not None


def cpp_backend_error() -> Optional[BaseException]:
    """Why the compiled CPU kernel cannot be used (None if it can); compiles it on the first call."""
    _load_cpp()
    return _cpp_error


_PARALLEL_CELLS = 1 << 18  # kParallelCells of _sdtw_cpu.cpp


def _choose_lanes(batch: int, threads: int) -> int:
    """Items per SIMD group: the fewest padded lane-steps per thread, ties to wider groups."""
    best, best_cost = 1, None
    for lanes in (1, 2, 4, 8):
        groups = -(-batch // lanes)
        cost = -(-groups // max(1, threads)) * lanes
        if best_cost is None or cost <= best_cost:
            best, best_cost = lanes, cost
    return best


class _WorkspacePool:
    """Reuses the large float64 CPU buffers (the stored soft-min weights, the float64 cost, the torch path's
    diagonal arrays).

    A fresh large allocation is page-faulted in by the OS on first touch (tens of ms per 100 MB), which would
    cost more than the DP itself. Weight buffers come back here when the autograd graph that holds them is
    freed (so retain_graph stays safe), the others as soon as the forward has read them.
    """

    def __init__(self, max_bytes: int = 1 << 30, max_buffers: int = 4):
        self.max_numel = max_bytes // 8
        self.max_buffers = max_buffers
        self._free: List[Tensor] = []
        self._lock = threading.Lock()

    def acquire(self, numel: int) -> Tensor:
        with self._lock:
            fits = [k for k, t in enumerate(self._free) if t.numel() >= numel]
            if fits:
                best = min(fits, key=lambda k: self._free[k].numel())
                return self._free.pop(best)
        return torch.empty(numel, dtype=torch.float64)

    def release(self, t: Tensor) -> None:
        with self._lock:
            self._free.append(t)
            self._free.sort(key=lambda u: u.numel(), reverse=True)
            while len(self._free) > self.max_buffers or sum(u.numel() for u in self._free) > self.max_numel:
                self._free.pop()  # drop the smallest

    def clear(self) -> None:
        with self._lock:
            self._free.clear()


_pool = _WorkspacePool()


def clear_workspace_cache() -> None:
    """Frees the weight buffers kept for reuse by the CPU kernel."""
    _pool.clear()


class _Workspace:
    """Owns a pooled buffer; gives it back to the pool when the autograd graph holding it is freed."""

    def __init__(self, buf: Tensor):
        self.buf = buf

    def __del__(self):
        try:
            _pool.release(self.buf)
        except Exception:  # interpreter shutdown
            pass


# ----------------------------------------------------------------------------------------------------
# backend dispatch: forward returns (R_end float64 [B], state); backward(state, grad float64 [B]) -> E
# ----------------------------------------------------------------------------------------------------
def _forward(
    cost: Tensor, xl: Tensor, yl: Tensor, gamma: float, band: Optional[float], backend: str, store: bool
) -> Tuple[Tensor, tuple]:
    bsz, n, m = cost.shape
    if backend == "cpp":
        ops = _load_cpp()
        # the kernel runs small problems (< _PARALLEL_CELLS lane-cells) on one thread
        threads = torch.get_num_threads() if bsz * n * m >= _PARALLEL_CELLS else 1
        lanes = _choose_lanes(bsz, threads)
        ws = _Workspace(_pool.acquire(ops.workspace_size(xl, yl, lanes))) if store else None
        buf = ws.buf if ws is not None else cost.new_empty(0, dtype=torch.float64)
        r_end = ops.forward(cost.contiguous(), xl, yl, gamma, -1.0 if band is None else band, lanes, buf)
        return r_end, ("cpp", ws, xl, yl, lanes, n, m)
    cost64 = cost.to(torch.float64)
    if band is not None:
        cost64 = cost64.masked_fill(~_band_mask(xl, yl, n, m, band), _BIG)
    r_end, ws = _torch_forward(cost64, xl, yl, gamma, store)
    return r_end, ("torch", ws, xl, yl, None, n, m)


def _backward(state: tuple, grad: Tensor, out_dtype: torch.dtype) -> Tensor:
    kind, ws, xl, yl, lanes, n, m = state
    grad = grad.to(torch.float64).contiguous()
    if kind == "cpp":
        out_double = out_dtype == torch.float64
        e = _load_cpp().backward(ws.buf, xl, yl, grad, n, m, lanes, out_double)
    else:
        e = _torch_backward(ws[0], xl, yl, grad, n, m)
    return e.to(out_dtype)


def _check_reachable(r_end: Tensor, xl: Tensor, yl: Tensor, band: Optional[float]) -> None:
    if band is None:
        return
    bad = (r_end >= _BIG / 2).nonzero().flatten().tolist()
    if bad:
        b = bad[0]
        raise ValueError(
            f"soft_dtw: band={band} admits no warping path for item {b} (x length {int(xl[b])}, "
            f"y length {int(yl[b])}); {len(bad)} item(s) affected. "
            "Use a wider band (band >= 0.5 always admits one)"
        )


def _run(x, y, xl, yl, gamma, band, backend, exact, store) -> Tuple[Tensor, tuple]:
    cost, buf = _compute_cost(x, y, exact)
    try:
        r_end, state = _forward(cost, xl, yl, gamma, band, backend, store)
    finally:
        del cost
        if buf is not None:
            _pool.release(buf)
    _check_reachable(r_end, xl, yl, band)
    return r_end, state


class _SoftDTWFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, xl, yl, gamma, band, backend, exact):
        r_end, state = _run(x, y, xl, yl, gamma, band, backend, exact, store=True)
        dt = _cost_dtype(x)
        ctx.state = state
        ctx.save_for_backward(x.to(dt), y.to(dt))
        ctx.in_dtypes = (x.dtype, y.dtype)
        return r_end.to(x.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        xc, yc = ctx.saved_tensors
        e = _backward(ctx.state, grad, xc.dtype)  # B x N x M
        gx = gy = None
        # dL/dx_i = 2 sum_j E_ij (x_i - y_j) = 2 (rowsum(E)_i x_i - (E y)_i), one fused matmul each
        if ctx.needs_input_grad[0]:
            gx = torch.baddbmm(xc * (2.0 * e.sum(2, keepdim=True)), e, yc, alpha=-2.0)
            gx = gx.to(ctx.in_dtypes[0])
        if ctx.needs_input_grad[1]:
            gy = torch.baddbmm(yc * (2.0 * e.sum(1).unsqueeze(2)), e.transpose(1, 2), xc, alpha=-2.0)
            gy = gy.to(ctx.in_dtypes[1])
        return gx, gy, None, None, None, None, None, None


# ----------------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------------
def _prepare(x, y, gamma, x_lengths, y_lengths, band, backend):
    gamma = _check_gamma(gamma)
    band = _check_band(band)
    _check_inputs(x, y)
    name = _resolve_backend(backend, x.device)
    len_dev = torch.device("cpu") if name == "cpp" else x.device
    xl = _check_lengths(x_lengths, x.size(0), x.size(1), "x_lengths", len_dev)
    yl = _check_lengths(y_lengths, y.size(0), y.size(1), "y_lengths", len_dev)
    return gamma, band, name, xl, yl


def soft_dtw(
    x: Tensor,
    y: Tensor,
    gamma: float = 0.1,
    x_lengths: Lengths = None,
    y_lengths: Lengths = None,
    band: Optional[float] = None,
    backend: Optional[str] = None,
    exact_cost: bool = True,
) -> Tensor:
    """Soft-DTW discrepancy R_{n_b, m_b} of each pair, with cost C_ij = ||x_i - y_j||^2.

    Args:
        x: B x N x D (padded), y: B x M x D (padded); N != M allowed.
        gamma: soft-min temperature, > 0.
        x_lengths, y_lengths: [B] valid lengths (default: N and M); frames past them are ignored.
        band: Sakoe-Chiba half-width measured in cells of the shorter sequence of each item: cell (i, j)
            (1-based) is admitted iff |(i - 1/2)/n - (j - 1/2)/m| * min(n, m) <= band, with n, m the item's
            own lengths. For n == m this is |i - j| <= band. band >= 0.5 always admits a path; a band that
            admits none raises ValueError. None: no band.
        backend: "auto" (compiled CPU kernel for CPU tensors when available, else torch), "torch" or "cpp";
            None reads the environment variable FAIRSEQ_PLUGINS_SDTW_BACKEND (default auto).
        exact_cost: compute the cost matrix in float64 (default). The DP and the weights are float64 in any
            case; with exact_cost=False the cost is computed in the input dtype, which is faster for large D
            (one float32 instead of one float64 batched matmul) but, for float32 inputs, puts the cost's
            rounding (~1e-7 |x|^2, amplified by 1/gamma) into the gradients: ~1e-6 - 1e-5 relative error.

    Returns:
        [B] in x's dtype. Differentiable w.r.t. x and y: E from the stored weights, then
        dL/dx_i = 2 sum_j E_ij (x_i - y_j) by two batched matmuls in the input dtype.
    """
    return _soft_dtw(x, y, *_prepare(x, y, gamma, x_lengths, y_lengths, band, backend), exact_cost)


def _soft_dtw(x, y, gamma, band, name, xl, yl, exact) -> Tensor:
    """soft_dtw after the checks of _prepare."""
    if torch.is_grad_enabled() and (x.requires_grad or y.requires_grad):
        return _SoftDTWFunction.apply(x, y, xl, yl, gamma, band, name, exact)
    with torch.no_grad():
        r_end, _ = _run(x, y, xl, yl, gamma, band, name, exact, store=False)
    return r_end.to(x.dtype)


def _pad_time(t: Tensor, length: int) -> Tensor:
    return t if t.size(1) == length else nn.functional.pad(t, (0, 0, 0, length - t.size(1)))


def soft_dtw_divergence(
    x: Tensor,
    y: Tensor,
    gamma: float = 0.1,
    x_lengths: Lengths = None,
    y_lengths: Lengths = None,
    band: Optional[float] = None,
    backend: Optional[str] = None,
    exact_cost: bool = True,
) -> Tensor:
    """Soft-DTW divergence sdtw(x, y) - (sdtw(x, x) + sdtw(y, y)) / 2 per item, [B]; no length normalisation.

    x: B x N x D, y: B x M x D. Zero for x == y and >= 0 otherwise (without band). The three DPs run as one
    batch of 3B items when the padding this needs is small (so that the CPU kernel can spread them over
    threads).
    """
    gamma, band, name, xl, yl = _prepare(x, y, gamma, x_lengths, y_lengths, band, backend)
    bsz, n, m = x.size(0), x.size(1), y.size(1)
    if 3 * max(n, m) ** 2 <= 1.5 * (n * m + n * n + m * m):
        length = max(n, m)
        xp, yp = _pad_time(x, length), _pad_time(y, length)
        r = _soft_dtw(
            torch.cat([xp, xp, yp]),
            torch.cat([yp, xp, yp]),
            gamma,
            band,
            name,
            torch.cat([xl, xl, yl]),
            torch.cat([yl, xl, yl]),
            exact_cost,
        )
        xy, xx, yy = r[:bsz], r[bsz : 2 * bsz], r[2 * bsz :]
    else:
        xy = _soft_dtw(x, y, gamma, band, name, xl, yl, exact_cost)
        xx = _soft_dtw(x, x, gamma, band, name, xl, xl, exact_cost)
        yy = _soft_dtw(y, y, gamma, band, name, yl, yl, exact_cost)
    return xy - 0.5 * (xx + yy)


def expected_alignment(
    x: Tensor,
    y: Tensor,
    gamma: float = 0.1,
    x_lengths: Lengths = None,
    y_lengths: Lengths = None,
    band: Optional[float] = None,
    backend: Optional[str] = None,
    exact_cost: bool = True,
) -> Tensor:
    """Expected alignment E = d sdtw(x, y) / d C: B x N x M in x's dtype (no autograd graph).

    E_ij is the probability that cell (i, j) lies on the warping path under the Gibbs distribution of the
    soft-DTW; it is zero past each item's lengths and tends to the hard DTW path as gamma -> 0.
    """
    gamma, band, name, xl, yl = _prepare(x, y, gamma, x_lengths, y_lengths, band, backend)
    with torch.no_grad():
        r_end, state = _run(x, y, xl, yl, gamma, band, name, exact_cost, store=True)
        e = _backward(state, torch.ones_like(r_end), _cost_dtype(x))
    return e.to(x.dtype).contiguous()


class SoftDTW(nn.Module):
    """Soft-DTW as a module: forward(x: B x N x D, y: B x M x D, x_lengths=None, y_lengths=None) -> [B].

    normalize=True returns the soft-DTW divergence sdtw(x, y) - (sdtw(x, x) + sdtw(y, y)) / 2 instead of
    sdtw(x, y). See `soft_dtw` for gamma, band, backend and exact_cost.
    """

    def __init__(
        self,
        gamma: float = 0.1,
        band: Optional[float] = None,
        normalize: bool = False,
        backend: Optional[str] = None,
        exact_cost: bool = True,
    ):
        super().__init__()
        self.gamma = _check_gamma(gamma)
        self.band = _check_band(band)
        self.normalize = normalize
        self.backend = backend
        self.exact_cost = exact_cost

    def forward(self, x: Tensor, y: Tensor, x_lengths: Lengths = None, y_lengths: Lengths = None) -> Tensor:
        fn = soft_dtw_divergence if self.normalize else soft_dtw
        return fn(x, y, self.gamma, x_lengths, y_lengths, self.band, self.backend, self.exact_cost)

    def extra_repr(self) -> str:
        return (
            f"gamma={self.gamma}, band={self.band}, normalize={self.normalize}, backend={self.backend}, "
            f"exact_cost={self.exact_cost}"
        )
