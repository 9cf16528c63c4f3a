"""Soft-DTW: both backends against a naive O(NM) float64 reference (values, gradients, lengths, band),
gradcheck, float32 precision, divergence, expected alignment, error messages, backend selection.

The compiled kernel is part of the feature on the project's machines (Linux, a C++ compiler): nothing here skips
when it cannot be built; the cpp-parametrised tests and test_compiled_kernel_builds_here fail instead."""

import logging
import math
import sys

import pytest
import torch

from fairseq_plugins.losses.soft_dtw import (
    BACKEND_ENV,
    SoftDTW,
    cpp_backend_available,
    cpp_backend_error,
    expected_alignment,
    selected_backend,
    soft_dtw,
    soft_dtw_divergence,
)

sdtw_mod = sys.modules["fairseq_plugins.losses.soft_dtw"]

BACKENDS = ["torch", "cpp"]


def test_compiled_kernel_builds_here():
    """`make test` fails on a machine where the C++ kernel does not build, naming the compiler's reason."""
    assert cpp_backend_available(), f"the soft-DTW C++ kernel does not build here: {cpp_backend_error()}"
    assert selected_backend("auto", "cpu") == "cpp" and selected_backend("cpp") == "cpp"
    assert selected_backend("torch") == "torch"


# ------------------------------------------------------------------------------------------------------------
# naive reference: python loop over cells, float64, differentiable through torch scalars
# ------------------------------------------------------------------------------------------------------------
def admitted(i, j, n, m, band):
    """1-based cell (i, j) inside the band of the documented definition."""
    if band is None:
        return True
    return abs((2 * i - 1) * m - (2 * j - 1) * n) * min(n, m) <= 2 * band * n * m


def naive_sdtw(x, y, gamma, band=None):
    """x: n x D, y: m x D (one item, no padding) -> scalar R_nm."""
    n, m = x.size(0), y.size(0)
    cost = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    inf = torch.tensor(math.inf, dtype=x.dtype)
    r = [[inf] * (m + 1) for _ in range(n + 1)]
    r[0][0] = torch.tensor(0.0, dtype=x.dtype)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            prev = [r[i - 1][j - 1], r[i - 1][j], r[i][j - 1]]
            if not admitted(i, j, n, m, band) or all(math.isinf(p.item()) for p in prev):
                continue
            prev = torch.stack(prev)
            r[i][j] = cost[i - 1, j - 1] - gamma * torch.logsumexp(-prev / gamma, 0)
    return r[n][m]


def naive_batch(x, y, gamma, xl, yl, band=None):
    return torch.stack([naive_sdtw(x[b, : xl[b]], y[b, : yl[b]], gamma, band) for b in range(x.size(0))])


def make_pair(bsz, n, m, d, dtype=torch.float64, seed=0, unit=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(bsz, n, d, generator=g, dtype=dtype)
    y = torch.randn(bsz, m, d, generator=g, dtype=dtype)
    if unit:
        x = torch.nn.functional.normalize(x, dim=-1)
        y = torch.nn.functional.normalize(y, dim=-1)
    else:
        x, y = 0.4 * x, 0.4 * y
    return x, y


# ------------------------------------------------------------------------------------------------------------
# values and gradients against the reference
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("band", [None, 1.0, 2.5])
def test_values_and_gradients_match_naive(backend, band):
    x, y = make_pair(3, 6, 8, 4, seed=1)
    xl, yl = [6, 4, 2], [8, 5, 3]
    x.requires_grad_(True)
    y.requires_grad_(True)
    out = soft_dtw(x, y, 0.3, xl, yl, band=band, backend=backend)
    gx, gy = torch.autograd.grad(out.sum() * 1.0 + out[0], (x, y))

    xr, yr = x.detach().clone().requires_grad_(True), y.detach().clone().requires_grad_(True)
    ref = naive_batch(xr, yr, 0.3, xl, yl, band)
    rx, ry = torch.autograd.grad(ref.sum() + ref[0], (xr, yr))
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(gx, rx, rtol=0, atol=1e-10)
    torch.testing.assert_close(gy, ry, rtol=0, atol=1e-10)
    # padded frames get no gradient
    assert gx[1, 4:].abs().max() == 0 and gy[2, 3:].abs().max() == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_padding_content_is_ignored(backend):
    x, y = make_pair(2, 7, 5, 3, seed=2)
    xl, yl = [4, 7], [5, 2]
    x2, y2 = x.clone(), y.clone()
    x2[0, 4:] = 100.0
    y2[1, 2:] = -7.0
    torch.testing.assert_close(
        soft_dtw(x, y, 0.1, xl, yl, backend=backend), soft_dtw(x2, y2, 0.1, xl, yl, backend=backend)
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(backend):
    x, y = make_pair(2, 4, 5, 3, seed=3)
    x.requires_grad_(True)
    y.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: soft_dtw(a, b, 0.5, [4, 3], [5, 2], backend=backend), (x, y))
    assert torch.autograd.gradcheck(lambda a, b: soft_dtw(a, b, 0.2, band=1, backend=backend), (x, y))
    assert torch.autograd.gradcheck(lambda a, b: soft_dtw_divergence(a, b, 0.5, backend=backend), (x, y))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("exact_cost,tol", [(True, 5e-7), (False, 2e-5)])
def test_float32_gradients_are_exact(backend, exact_cost, tol):
    """float32 inputs: gradients close (relative to their scale) to the float64 computation.

    Measured ~1e-7 with the float64 cost and ~1e-6 with the float32 cost; a DP or backward carried out in
    float32 (pysdtw, tslearn) is off by 1e-4 and more."""
    x, y = make_pair(2, 160, 140, 16, dtype=torch.float32, seed=4, unit=True)
    x.requires_grad_(True)
    y.requires_grad_(True)
    out = soft_dtw(x, y, 0.1, [160, 150], [140, 131], backend=backend, exact_cost=exact_cost)
    gx, gy = torch.autograd.grad(out.sum(), (x, y))
    x64 = x.detach().double().requires_grad_(True)
    y64 = y.detach().double().requires_grad_(True)
    ref = soft_dtw(x64, y64, 0.1, [160, 150], [140, 131], backend=backend)
    rx, ry = torch.autograd.grad(ref.sum(), (x64, y64))
    assert gx.dtype == torch.float32 and out.dtype == torch.float32
    assert (out.double() - ref).abs().max() / ref.abs().max() < 1e-6
    for g, r in ((gx, rx), (gy, ry)):
        assert (g.double() - r).abs().max() / r.abs().max() < tol


def test_backends_agree():
    x, y = make_pair(5, 37, 29, 6, seed=5)
    xl, yl = [37, 30, 1, 12, 20], [29, 29, 4, 1, 25]
    for band in (None, 3.0):
        outs, grads = [], []
        for backend in ("torch", "cpp"):
            a, b = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
            out = soft_dtw(a, b, 0.1, xl, yl, band=band, backend=backend)
            outs.append(out)
            grads.append(torch.autograd.grad((out * torch.arange(1.0, 6.0, dtype=out.dtype)).sum(), (a, b)))
        torch.testing.assert_close(outs[0], outs[1], rtol=1e-12, atol=1e-10)
        for g0, g1 in zip(grads[0], grads[1]):
            torch.testing.assert_close(g0, g1, rtol=1e-10, atol=1e-10)
        e0 = expected_alignment(x, y, 0.1, xl, yl, band=band, backend="torch")
        e1 = expected_alignment(x, y, 0.1, xl, yl, band=band, backend="cpp")
        torch.testing.assert_close(e0, e1, rtol=1e-10, atol=1e-12)


def test_cpp_lanes_agree():
    """Every SIMD group width of the kernel (1, 2, 4, 8 items) gives the same values and alignments."""
    ops = sdtw_mod._load_cpp()
    g = torch.Generator().manual_seed(6)
    cost = torch.rand(11, 23, 19, generator=g, dtype=torch.float64)
    xl = torch.randint(1, 24, (11,), generator=g)
    yl = torch.randint(1, 20, (11,), generator=g)
    grad = torch.rand(11, generator=g, dtype=torch.float64)
    results = []
    for lanes in (1, 2, 4, 8):
        w = torch.empty(ops.workspace_size(xl, yl, lanes), dtype=torch.float64)
        r = ops.forward(cost, xl, yl, 0.2, 4.0, lanes, w)
        results.append((r, ops.backward(w, xl, yl, grad, 23, 19, lanes, True)))
    for r, e in results[1:]:
        torch.testing.assert_close(r, results[0][0], rtol=0, atol=1e-12)
        torch.testing.assert_close(e, results[0][1], rtol=0, atol=1e-12)


def test_choose_lanes():
    choose = sdtw_mod._choose_lanes
    assert choose(1, 1) == 1 and choose(1, 2) == 1
    assert choose(3, 1) == 1 and choose(3, 2) == 2
    assert choose(8, 2) == 4 and choose(16, 2) == 8 and choose(16, 1) == 8 and choose(64, 2) == 8


# ------------------------------------------------------------------------------------------------------------
# band
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_band_unequal_lengths_is_finite(backend):
    x, y = make_pair(2, 40, 90, 3, seed=7)
    for band in (0.5, 1.0, 4.0):
        out = soft_dtw(x, y, 0.1, [40, 17], [90, 60], band=band, backend=backend)
        assert torch.isfinite(out).all()
    # a wide band changes nothing, a narrow one can only increase the value
    free = soft_dtw(x, y, 0.1, backend=backend)
    torch.testing.assert_close(soft_dtw(x, y, 0.1, band=1000, backend=backend), free)
    assert (soft_dtw(x, y, 0.1, band=1.0, backend=backend) >= free - 1e-9).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_band_without_path_raises(backend):
    x, y = make_pair(2, 5, 7, 3, seed=8)
    msg = (
        "soft_dtw: band=0.2 admits no warping path for item 1 (x length 3, y length 7); 1 item(s) affected. "
        "Use a wider band (band >= 0.5 always admits one)"
    )
    with pytest.raises(ValueError) as err:
        soft_dtw(x, y, 0.1, [5, 3], [5, 7], band=0.2, backend=backend)
    assert str(err.value) == msg
    # n == m: band 0 is the diagonal, always admissible
    out = soft_dtw(x[:, :5], y[:, :5], 0.1, band=0, backend=backend)
    torch.testing.assert_close(out, ((x[:, :5] - y[:, :5]) ** 2).sum((1, 2)))


# ------------------------------------------------------------------------------------------------------------
# divergence, alignment, module
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_divergence(backend):
    x, y = make_pair(3, 20, 26, 8, seed=9, unit=True)
    xl, yl = [20, 15, 9], [26, 10, 22]
    self_div = soft_dtw_divergence(x, x, 0.1, xl, xl, backend=backend)
    assert self_div.abs().max() < 1e-10
    div = soft_dtw_divergence(x, y, 0.1, xl, yl, backend=backend)
    assert (div > 0.5).all()
    # equals the three separate DPs (unequal lengths: batched with padding inside)
    ref = soft_dtw(x, y, 0.1, xl, yl, backend=backend) - 0.5 * (
        soft_dtw(x, x, 0.1, xl, xl, backend=backend) + soft_dtw(y, y, 0.1, yl, yl, backend=backend)
    )
    torch.testing.assert_close(div, ref)
    # very different lengths take the unbatched route
    div2 = soft_dtw_divergence(x[:, :4], y, 0.1, [4, 4, 4], yl, backend=backend)
    ref2 = soft_dtw(x[:, :4], y, 0.1, None, yl, backend=backend) - 0.5 * (
        soft_dtw(x[:, :4], x[:, :4], 0.1, backend=backend) + soft_dtw(y, y, 0.1, yl, yl, backend=backend)
    )
    torch.testing.assert_close(div2, ref2)
    # float32, x vs itself
    x32 = x.float().requires_grad_(True)
    d32 = soft_dtw_divergence(x32, x32, 0.1, xl, xl, backend=backend)
    assert d32.abs().max() < 1e-4
    (g,) = torch.autograd.grad(d32.sum(), x32)
    assert g.abs().max() < 1e-4


def onehot_seq(ids, dim=4):
    return torch.eye(dim, dtype=torch.float64)[ids]


@pytest.mark.parametrize("backend", BACKENDS)
def test_expected_alignment_tends_to_hard_path(backend):
    # a b c  vs  a a b c c: the unique optimal path is (0,0) (0,1) (1,2) (2,3) (2,4)
    x = onehot_seq([0, 1, 2]).unsqueeze(0)
    y = onehot_seq([0, 0, 1, 2, 2]).unsqueeze(0)
    path = torch.zeros(1, 3, 5, dtype=torch.float64)
    for i, j in [(0, 0), (0, 1), (1, 2), (2, 3), (2, 4)]:
        path[0, i, j] = 1.0
    e = expected_alignment(x, y, gamma=0.01, backend=backend)
    torch.testing.assert_close(e, path, rtol=0, atol=1e-6)
    # a softer alignment: still starts and ends at the corners, every row and column is visited
    e = expected_alignment(x, y, gamma=1.0, backend=backend)
    assert abs(e[0, 0, 0] - 1) < 1e-12 and abs(e[0, -1, -1] - 1) < 1e-12
    assert (e.sum(2) >= 1 - 1e-12).all() and (e.sum(1) >= 1 - 1e-12).all()
    assert 0 < e[0, 1, 1] < 1
    # E is the gradient of sdtw w.r.t. the cost: check one entry by finite differences of the reference
    eps = 1e-6
    c = ((x[0, :, None] - y[0, None]) ** 2).sum(-1)

    def from_cost(cost):
        return naive_sdtw_cost(cost, 1.0)

    cp, cm = c.clone(), c.clone()
    cp[1, 1] += eps
    cm[1, 1] -= eps
    assert abs((from_cost(cp) - from_cost(cm)) / (2 * eps) - e[0, 1, 1]) < 1e-8


def naive_sdtw_cost(cost, gamma):
    n, m = cost.shape
    r = [[math.inf] * (m + 1) for _ in range(n + 1)]
    r[0][0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            p = [r[i - 1][j - 1], r[i - 1][j], r[i][j - 1]]
            lo = min(p)
            soft = lo - gamma * math.log(sum(math.exp(-(v - lo) / gamma) for v in p))
            r[i][j] = float(cost[i - 1, j - 1]) + soft
    return r[n][m]


def test_module_and_no_grad_path():
    x, y = make_pair(2, 9, 11, 3, seed=10)
    mod = SoftDTW(gamma=0.2, band=3, normalize=True)
    ref = soft_dtw_divergence(x, y, 0.2, [9, 5], [11, 7], band=3)
    torch.testing.assert_close(mod(x, y, [9, 5], [11, 7]), ref)
    a = x.clone().requires_grad_(True)
    with_grad = SoftDTW(0.2)(a, y)
    with torch.no_grad():
        no_grad = SoftDTW(0.2)(a, y)
    assert no_grad.grad_fn is None and with_grad.grad_fn is not None
    torch.testing.assert_close(with_grad.detach(), no_grad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_retain_graph_and_workspace_reuse(backend):
    x, y = make_pair(4, 30, 30, 5, dtype=torch.float32, seed=11)
    a = x.clone().requires_grad_(True)
    out = soft_dtw(a, y, 0.1, backend=backend).sum()
    (g1,) = torch.autograd.grad(out, a, retain_graph=True)
    # other calls in between must not clobber the retained graph's weights
    for _ in range(3):
        b = (x * 2).requires_grad_(True)
        soft_dtw(b, y, 0.1, backend=backend).sum().backward()
    (g2,) = torch.autograd.grad(out, a)
    torch.testing.assert_close(g1, g2, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------------------
# errors and backend selection
# ------------------------------------------------------------------------------------------------------------
def test_error_messages():
    x, y = make_pair(2, 4, 5, 3, seed=12)
    with pytest.raises(ValueError) as err:
        soft_dtw(x, y, gamma=0)
    assert str(err.value) == "soft_dtw: gamma must be > 0, got 0.0"
    with pytest.raises(ValueError) as err:
        soft_dtw(x, y, gamma=-0.5)
    assert str(err.value) == "soft_dtw: gamma must be > 0, got -0.5"
    with pytest.raises(ValueError) as err:
        SoftDTW(gamma=0)
    assert str(err.value) == "soft_dtw: gamma must be > 0, got 0.0"

    bad = y.clone()
    bad[0, 1, 2] = float("nan")
    bad[1, 0, 0] = float("inf")
    with pytest.raises(ValueError) as err:
        soft_dtw(x, bad)
    assert str(err.value) == "soft_dtw: y contains 2 non-finite values (NaN or inf)"
    bad = x.clone()
    bad[1, 3, 1] = float("nan")
    with pytest.raises(ValueError) as err:
        soft_dtw_divergence(bad, y)
    assert str(err.value) == "soft_dtw: x contains 1 non-finite values (NaN or inf)"

    with pytest.raises(ValueError) as err:
        soft_dtw(x, y, 0.1, x_lengths=[4, 2], y_lengths=[5, 0])
    assert str(err.value) == (
        "soft_dtw: item 1 has length 0 in y_lengths; every sequence needs at least one frame"
    )
    with pytest.raises(ValueError) as err:
        expected_alignment(x[:, :0], y)
    assert str(err.value) == (
        "soft_dtw: item 0 has length 0 in x_lengths; every sequence needs at least one frame"
    )
    with pytest.raises(ValueError) as err:
        soft_dtw(x, y, 0.1, x_lengths=[4, 6])
    assert str(err.value) == "soft_dtw: item 1 has length 6 in x_lengths, larger than the padded size 4"


def test_backend_selection(monkeypatch):
    x, y = make_pair(1, 3, 4, 2, seed=13)
    monkeypatch.setenv(BACKEND_ENV, "nope")
    with pytest.raises(ValueError, match="FAIRSEQ_PLUGINS_SDTW_BACKEND must be one of"):
        soft_dtw(x, y)
    monkeypatch.setenv(BACKEND_ENV, "torch")
    torch.testing.assert_close(soft_dtw(x, y), soft_dtw(x, y, backend="torch"))
    with pytest.raises(ValueError, match="backend must be one of"):
        soft_dtw(x, y, backend="gpu")


def test_auto_says_once_which_backend_and_why(monkeypatch, caplog):
    monkeypatch.setattr(sdtw_mod, "_auto_logged", set())
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    x, y = make_pair(1, 3, 4, 2, seed=14)
    with caplog.at_level(logging.INFO, logger=sdtw_mod.__name__):
        for _ in range(3):
            soft_dtw(x, y)
        soft_dtw(x, y, backend="torch")
    said = [r.getMessage() for r in caplog.records if "backend 'auto'" in r.getMessage()]
    assert said == [f"soft_dtw: backend 'auto' on cpu uses 'cpp': the compiled CPU kernel built from "
                    f"{sdtw_mod._CPP_SOURCE}"]


def test_compile_failure_falls_back_once(monkeypatch, caplog):
    """No compiler: 'auto' warns once (with the reason) and uses the torch path, an explicit 'cpp' raises."""
    from torch.utils import cpp_extension

    def broken_load(*args, **kwargs):
        raise OSError("no c++ compiler")

    monkeypatch.setattr(sdtw_mod, "_cpp_tried", False)
    monkeypatch.setattr(sdtw_mod, "_cpp_ops", None)
    monkeypatch.setattr(sdtw_mod, "_cpp_error", None)
    monkeypatch.setattr(sdtw_mod, "_auto_logged", set())
    monkeypatch.setattr(cpp_extension, "load", broken_load)
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    x, y = make_pair(1, 3, 4, 2, seed=14)
    with caplog.at_level(logging.INFO, logger=sdtw_mod.__name__):
        a = soft_dtw(x, y)
        b = soft_dtw(x, y, backend="auto")
    torch.testing.assert_close(a, b)
    assert selected_backend() == "torch" and not cpp_backend_available()
    said = [r for r in caplog.records if "backend 'auto'" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING
    assert said[0].getMessage() == (
        "soft_dtw: backend 'auto' on cpu uses 'torch': the compiled CPU kernel is unavailable (no c++ compiler); "
        "pass backend='cpp' to make this an error"
    )
    with pytest.raises(RuntimeError, match="backend 'cpp' requested but the CPU kernel is unavailable: no c"):
        soft_dtw(x, y, backend="cpp")


def test_missing_kernel_source_is_named(monkeypatch, tmp_path):
    """A package installed without _sdtw_cpu.cpp: 'cpp' raises naming the missing file."""
    monkeypatch.setattr(sdtw_mod, "_cpp_tried", False)
    monkeypatch.setattr(sdtw_mod, "_cpp_ops", None)
    monkeypatch.setattr(sdtw_mod, "_cpp_error", None)
    monkeypatch.setattr(sdtw_mod, "_CPP_SOURCE", tmp_path / "_sdtw_cpu.cpp")
    x, y = make_pair(1, 3, 4, 2, seed=14)
    with pytest.raises(RuntimeError, match=r"_sdtw_cpu.cpp is missing \(the package was installed without"):
        soft_dtw(x, y, backend="cpp")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_torch_path_on_cuda():
    x, y = make_pair(3, 12, 9, 4, seed=15)
    xc = x.cuda().requires_grad_(True)
    out = soft_dtw(xc, y.cuda(), 0.1, [12, 5, 7], [9, 9, 2], band=2)
    (g,) = torch.autograd.grad(out.sum(), xc)
    a = x.clone().requires_grad_(True)
    ref = soft_dtw(a, y, 0.1, [12, 5, 7], [9, 9, 2], band=2, backend="torch")
    (rg,) = torch.autograd.grad(ref.sum(), a)
    torch.testing.assert_close(out.cpu(), ref)
    torch.testing.assert_close(g.cpu(), rg)


@pytest.mark.parametrize("backend", BACKENDS)
def test_low_precision_inputs(backend):
    """bfloat16 inputs: float64 cost and DP, float32 gradient matmuls, outputs in bfloat16."""
    x, y = make_pair(2, 10, 12, 4, seed=16)
    a = x.bfloat16().requires_grad_(True)
    out = soft_dtw(a, y.bfloat16(), 0.1, backend=backend)
    (g,) = torch.autograd.grad(out.sum(), a)
    assert out.dtype == torch.bfloat16 and g.dtype == torch.bfloat16
    ref = soft_dtw(a.detach().double(), y.bfloat16().double(), 0.1, backend=backend)
    torch.testing.assert_close(out.double(), ref, rtol=1e-2, atol=1e-2)
