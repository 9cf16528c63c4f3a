"""CSC's pure losses against naive references, and the proof that the contrastive objective has no
negatives (item i's loss and gradient do not depend on the other items of the batch)."""
import math

import numpy as np
import pytest
import torch
from scipy.special import iv

from fairseq_plugins.losses.csc import log_bessel_iv, neg_si_snr, si_snr, vmf_log_normaliser, vmf_nll


def naive_si_snr(est, ref):
    est = est - est.mean()
    ref = ref - ref.mean()
    s = np.dot(est, ref) / np.dot(ref, ref) * ref
    return 10 * math.log10(np.dot(s, s) / np.dot(est - s, est - s))


def test_si_snr_against_naive_reference_and_scale_invariance():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(4, 800, generator=g, dtype=torch.float64)
    est = ref * 0.7 + 0.3 * torch.randn(4, 800, generator=g, dtype=torch.float64) + 0.5
    lengths = [800, 600, 512, 100]
    mask = torch.arange(800)[None] < torch.tensor(lengths)[:, None]
    got = si_snr(est, ref, mask)
    for b, n in enumerate(lengths):
        assert abs(got[b].item() - naive_si_snr(est[b, :n].numpy(), ref[b, :n].numpy())) < 1e-3
    assert torch.allclose(si_snr(3.0 * est, ref, mask), got, atol=1e-3)  # scale invariant
    assert abs(neg_si_snr(est, ref, mask).item() + got.float().mean().item()) < 1e-5
    assert si_snr(ref, ref).min() > 60  # perfect estimate


@pytest.mark.parametrize("dim", [3, 16, 256])
@pytest.mark.parametrize("kappa", [0.5, 4.0, 30.0])
def test_vmf_normaliser_against_references(dim, kappa):
    k = torch.tensor([kappa], dtype=torch.float64)
    v = dim / 2 - 1
    assert abs(log_bessel_iv(v, k).item() - math.log(iv(v, kappa))) < 1e-6 * max(1, abs(math.log(iv(v, kappa))))
    got = vmf_log_normaliser(k, dim).item()
    if dim == 3:  # closed form: C_3(k) = k / (4 pi sinh k)
        assert abs(got - math.log(kappa / (4 * math.pi * math.sinh(kappa)))) < 1e-6
    naive = v * math.log(kappa) - dim / 2 * math.log(2 * math.pi) - math.log(iv(v, kappa))
    assert abs(got - naive) < 1e-6 * max(1.0, abs(naive))


def test_vmf_density_integrates_to_one_in_2d():
    kappa = 3.0
    theta = np.linspace(0, 2 * np.pi, 200001)
    c = math.exp(vmf_log_normaliser(torch.tensor([kappa], dtype=torch.float64), 2).item())
    assert abs(np.trapz(c * np.exp(kappa * np.cos(theta)), theta) - 1.0) < 1e-6


def test_bessel_gradient_and_underflow_branch():
    k = torch.tensor([0.3, 2.0, 25.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: log_bessel_iv(7.0, x), (k,))
    assert torch.autograd.gradcheck(lambda x: vmf_log_normaliser(x, 64), (k,))
    tiny = torch.tensor([1e-3], dtype=torch.float64)  # ive underflows to 0 for order 500 here
    naive = 500 * math.log(1e-3 / 2) - math.lgamma(501)
    assert abs(log_bessel_iv(500.0, tiny).item() - naive) < 1e-6 * abs(naive)


def test_vmf_nll_against_naive_reference():
    g = torch.Generator().manual_seed(1)
    z, mu = torch.randn(3, 5, 8, generator=g), torch.randn(3, 8, generator=g)
    w = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.float32)
    kappa = torch.tensor(6.0)
    got = vmf_nll(z, mu, kappa, w, reduction="none")
    logc = 3 * math.log(6.0) - 4 * math.log(2 * math.pi) - math.log(iv(3, 6.0))
    for n in range(3):
        frames = [t for t in range(5) if w[n, t] > 0]
        ll = [logc + 6.0 * float(torch.dot(z[n, t] / z[n, t].norm(), mu[n] / mu[n].norm())) for t in frames]
        assert abs(got[n].item() + sum(ll) / len(ll)) < 1e-4
    assert abs(vmf_nll(z, mu, kappa, w).item() - got.mean().item()) < 1e-6


def test_no_negatives_loss_and_gradient_of_item_i_ignore_the_other_items():
    g = torch.Generator().manual_seed(2)
    z, mu = torch.randn(4, 6, 16, generator=g), torch.randn(4, 16, generator=g)
    w = (torch.rand(4, 6, generator=g) > 0.3).float()
    w[:, 0] = 1

    def item0(z, mu, w):
        z, mu = z.clone().requires_grad_(True), mu.clone().requires_grad_(True)
        kappa = torch.tensor(5.0, requires_grad=True)
        loss = vmf_nll(z, mu, kappa, w, reduction="none")[0]
        loss.backward()
        return loss.detach(), z.grad[0], mu.grad[0], kappa.grad, z.grad[1:], mu.grad[1:]

    base = item0(z, mu, w)
    z2, mu2, w2 = z.clone(), mu.clone(), w.clone()
    z2[1:] = torch.randn(3, 6, 16, generator=g) * 5
    mu2[1:] = z2[0, :3].clone()  # other items made similar to item 0 (what a negative would penalise)
    w2[1:] = 1 - w2[1:]
    other = item0(z2, mu2, w2)
    for a, b in zip(base[:4], other[:4]):
        assert torch.equal(a, b)
    assert torch.count_nonzero(base[4]) == 0 and torch.count_nonzero(base[5]) == 0  # no gradient leaks across
    # and the loss does depend on item 0 itself
    z3 = z.clone()
    z3[0] = -z3[0]
    assert not torch.equal(item0(z3, mu, w)[0], base[0])
