"""Contrastive-IDM: against a naive double loop (float64), padding, sigma, gradients."""

import math

import pytest
import torch

from fairseq_plugins.losses.idm import ContrastiveIDM, contrastive_idm


def naive_idm(z, sigma, margin):
    """z: n x D, one item, no padding."""
    n = z.size(0)
    total = 0.0
    for i in range(n):
        for j in range(n):
            d = math.sqrt(sum((float(a) - float(b)) ** 2 for a, b in zip(z[i], z[j])))
            w = (i - j) ** 2 + 1
            if abs(i - j) > sigma:
                total += w * max(0.0, margin - d)
            else:
                total += d / w
    return total / n**2


def frames(bsz, n, d, seed, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(bsz, n, d, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("sigma,margin", [(0, 1.1), (2, 1.0), (1.5, 0.5)])
def test_matches_naive_with_lengths(sigma, margin):
    z = frames(3, 9, 4, seed=0)
    lengths = [9, 5, 1]
    out = contrastive_idm(z, lengths, sigma=sigma, margin=margin)
    ref = torch.tensor([naive_idm(z[b, : lengths[b]], sigma, margin) for b in range(3)], dtype=torch.float64)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    assert out[2] == 0  # one frame: only D_11 = 0


def test_padding_is_ignored():
    z = frames(2, 8, 5, seed=1)
    lengths = torch.tensor([8, 3])
    padded = z.clone()
    padded[1, 3:] = 50.0
    out = contrastive_idm(padded, lengths)
    alone = contrastive_idm(z[1:, :3])
    torch.testing.assert_close(out[1], alone[0])
    torch.testing.assert_close(out[0], contrastive_idm(z[:1])[0])
    # float32 path agrees with float64
    torch.testing.assert_close(contrastive_idm(padded.float(), lengths), out.float(), rtol=1e-5, atol=1e-6)


def test_gradient_finite_with_repeated_frames():
    z = frames(2, 7, 3, seed=2)
    z[0, 3] = z[0, 2]  # D = 0 off the diagonal
    z[1, 4:] = 0.0  # padding
    z.requires_grad_(True)
    out = contrastive_idm(z, [7, 4])
    (g,) = torch.autograd.grad(out.sum(), z)
    assert torch.isfinite(g).all()
    assert g[1, 4:].abs().max() == 0
    assert g.abs().sum() > 0


def test_gradcheck():
    z = frames(2, 5, 3, seed=3).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: contrastive_idm(t, [5, 4], sigma=1, margin=1.0), (z,))


def test_module_and_errors():
    z = frames(2, 4, 3, seed=4)
    mod = ContrastiveIDM(sigma=1, margin=0.8)
    torch.testing.assert_close(mod(z), contrastive_idm(z, sigma=1, margin=0.8))
    with pytest.raises(ValueError, match="item 1 has length 0"):
        contrastive_idm(z, [4, 0])
    with pytest.raises(ValueError, match="must be B x N x D"):
        contrastive_idm(z[0])
