"""MGF's losses against naive per-frame / per-pair loops (values and gradients): frame-scale masked L1,
phoneme-scale InfoNCE with same-utterance distractors (never the positive, repeatable with the seed), and
utterance-scale NT-Xent, locally and gathered across two real gloo processes."""
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from fairseq_plugins.losses.mgf import frame_l1, nt_xent, phone_infonce, sample_distractors


def test_frame_l1_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(3, 7, 5, generator=g, requires_grad=True)
    target = torch.randn(3, 7, 5, generator=g)
    mask = torch.rand(3, 7, generator=g) < 0.4
    loss, count = frame_l1(pred, target, mask)
    terms = [(pred[b, t] - target[b, t]).abs().mean() for b in range(3) for t in range(7) if mask[b, t]]
    ref = sum(terms) / len(terms)
    assert count == int(mask.sum())
    assert torch.allclose(loss, ref)
    g1, = torch.autograd.grad(loss, pred)
    g2, = torch.autograd.grad(ref, pred)
    assert torch.allclose(g1, g2) and not g1[~mask].any()


@pytest.mark.parametrize("n,k", [(10, 4), (6, 100), (2, 3), (200, 100)])
def test_distractors_are_other_frames_distinct_and_seeded(n, k):
    idx = sample_distractors(n, k, torch.Generator().manual_seed(5))
    kk = min(k, n - 1)
    assert idx.shape == (n, kk)
    assert not (idx == torch.arange(n).unsqueeze(1)).any()  # never the positive
    assert all(len(set(row.tolist())) == kk for row in idx)  # without replacement
    assert idx.min() >= 0 and idx.max() < n
    assert torch.equal(idx, sample_distractors(n, k, torch.Generator().manual_seed(5)))
    if n > 3:
        assert not torch.equal(idx, sample_distractors(n, k, torch.Generator().manual_seed(6)))
    assert sample_distractors(1, k).shape == (1, 0)


def naive_phone_infonce(pred, target, mask, k, temperature, seed):
    """Frame by frame: cosine logits of the positive and of the same distractor draw, -log softmax[0]."""
    g = torch.Generator().manual_seed(seed)
    losses, hits = [], []
    for b in range(pred.size(0)):
        rows = [t for t in range(pred.size(1)) if mask[b, t]]
        if len(rows) < 2:
            continue
        idx = sample_distractors(len(rows), k, g)
        for i, t in enumerate(rows):
            cands = [target[b, t]] + [target[b, rows[j]] for j in idx[i].tolist()]
            logits = torch.stack([F.cosine_similarity(pred[b, t], c, dim=0) for c in cands]) / temperature
            losses.append(-(logits[0] - torch.logsumexp(logits, 0)))
            hits.append(float(logits.argmax() == 0))
    return sum(losses) / len(losses), sum(hits) / len(hits), len(losses)


def test_phone_infonce_matches_a_loop_values_and_gradients():
    g = torch.Generator().manual_seed(1)
    pred = torch.randn(3, 20, 8, generator=g, requires_grad=True)
    target = torch.randn(3, 20, 8, generator=g, requires_grad=True)
    mask = torch.rand(3, 20, generator=g) < 0.5
    mask[2] = False
    mask[2, 4] = True  # a single masked frame: no distractor, not counted
    loss, acc, count = phone_infonce(pred, target, mask, 5, 0.1, torch.Generator().manual_seed(9))
    ref, ref_acc, ref_count = naive_phone_infonce(pred, target, mask, 5, 0.1, 9)
    assert count == ref_count == int(mask[:2].sum())
    assert torch.allclose(loss, ref, atol=1e-5) and abs(acc.item() - ref_acc) < 1e-6
    ga = torch.autograd.grad(loss, [pred, target])
    gb = torch.autograd.grad(ref, [pred, target])
    for a, b in zip(ga, gb):
        assert torch.allclose(a, b, atol=1e-6)
    assert not ga[0][~mask].any() and not ga[0][2].any()


def test_phone_infonce_of_identical_pred_and_target_is_easy():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 30, 16, generator=g)
    mask = torch.ones(2, 30, dtype=torch.bool)
    loss, acc, _ = phone_infonce(x, x, mask, 10, 0.1, g)
    assert acc.item() == 1.0 and loss.item() < 1.0
    loss0, acc0, count0 = phone_infonce(x, x, torch.zeros_like(mask), 10, 0.1, g)
    assert count0 == 0 and loss0.item() == 0.0
    with pytest.raises(ValueError, match="temperature"):
        phone_infonce(x, x, mask, 10, 0.0)


def naive_nt_xent(z1, z2, t):
    z = [F.normalize(v, dim=0) for v in list(z1) + list(z2)]
    B, n = z1.size(0), 2 * z1.size(0)
    losses, hits = [], []
    for i in range(n):
        pos = (i + B) % n
        sims = {j: (z[i] @ z[j]) / t for j in range(n) if j != i}
        denom = torch.logsumexp(torch.stack(list(sims.values())), 0)
        losses.append(denom - sims[pos])
        hits.append(float(max(sims, key=lambda j: sims[j].item()) == pos))
    return sum(losses) / n, sum(hits) / n


def test_nt_xent_matches_a_loop_values_and_gradients():
    g = torch.Generator().manual_seed(3)
    z1 = torch.randn(5, 6, generator=g, requires_grad=True)
    z2 = torch.randn(5, 6, generator=g, requires_grad=True)
    loss, acc = nt_xent(z1, z2, 0.1)
    ref, ref_acc = naive_nt_xent(z1, z2, 0.1)
    assert torch.allclose(loss, ref, atol=1e-5) and abs(acc.item() - ref_acc) < 1e-6
    for a, b in zip(torch.autograd.grad(loss, [z1, z2]), torch.autograd.grad(ref, [z1, z2])):
        assert torch.allclose(a, b, atol=1e-6)
    same, same_acc = nt_xent(z1, z1 + 1e-3, 0.1)
    assert same_acc.item() == 1.0 and same.item() < loss.item()
    assert math.isfinite(nt_xent(z1[:1], z2[:1], 0.1)[0].item())  # B = 1: only the positive


GLOO_SCRIPT = textwrap.dedent("""
    import os, sys, torch, torch.distributed as dist
    from fairseq_plugins.losses.mgf import nt_xent
    rank = int(sys.argv[1]); out = sys.argv[2]
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[3], rank=rank, world_size=2)
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(7, 6, generator=g); z2 = torch.randn(7, 6, generator=g)
    rows = slice(0, 3) if rank == 0 else slice(3, 7)  # unequal local batches
    a, b = z1[rows].clone().requires_grad_(), z2[rows].clone().requires_grad_()
    loss, acc = nt_xent(a, b, 0.1, gather=True)
    loss.backward()
    torch.save({"loss": loss.detach(), "acc": acc, "n": a.size(0), "ga": a.grad, "gb": b.grad}, out)
    dist.destroy_process_group()
""")


@pytest.mark.slow  # two fresh processes with torch.distributed (gloo): a few seconds
def test_nt_xent_gathers_negatives_across_two_gloo_workers(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    script = tmp_path / "worker.py"
    script.write_text(GLOO_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.getcwd(), OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(script), str(r), str(tmp_path / f"{r}.pt"), port], env=env)
             for r in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    res = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(7, 6, generator=g, requires_grad=True)
    z2 = torch.randn(7, 6, generator=g, requires_grad=True)
    full, full_acc = nt_xent(z1, z2, 0.1)
    # the mean of the workers' losses, weighted by their anchors, is the loss of the whole batch of 7
    total = sum(r["loss"] * r["n"] for r in res) / 7
    assert torch.allclose(total, full.detach(), atol=1e-5)
    assert abs(sum(r["acc"] * r["n"] for r in res) / 7 - full_acc.item()) < 1e-6
    # local gradients: rank 0's anchor terms on the whole batch with only its own rows carrying gradient
    a = torch.cat([z1[:3], z1[3:].detach()])
    b = torch.cat([z2[:3], z2[3:].detach()])
    zs = F.normalize(torch.cat([a, b]), dim=-1)
    logits = (zs @ zs.t() / 0.1).fill_diagonal_(float("-inf"))
    anchors = torch.tensor([0, 1, 2, 7, 8, 9])
    pos = torch.tensor([7, 8, 9, 0, 1, 2])
    ref0 = F.cross_entropy(logits[anchors], pos)
    assert torch.allclose(res[0]["loss"], ref0.detach(), atol=1e-5)
    ga, gb = torch.autograd.grad(ref0, [z1, z2])
    assert torch.allclose(res[0]["ga"], ga[:3], atol=1e-6) and torch.allclose(res[0]["gb"], gb[:3], atol=1e-6)
    assert res[1]["ga"].shape == (4, 6)
