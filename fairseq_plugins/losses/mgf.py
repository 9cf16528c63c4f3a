"""Pure-torch losses of MGF, the multi-granularity framework (Zhao, Yin, Luo, Zhao, Tang, Zeng, Zha; arXiv
2102.01930): generative at frame scale, masked contrastive at phoneme scale, discriminative at utterance scale.
No fairseq import: the ``mgf`` criterion (:mod:`fairseq_plugins.criterions.mgf`) wraps these functions.

- frame scale: L1 of the reconstructed log-mel over masked frames, the plugin's one
  :func:`~fairseq_plugins.losses.simsiam.masked_l1` (re-exported here as :func:`frame_l1`);
- phoneme scale: :func:`phone_infonce`, InfoNCE with cosine similarity and a temperature between each masked
  frame's prediction and its target, against distractors drawn (seeded, without replacement) from the targets of
  OTHER masked frames of the same utterance (:func:`sample_distractors`; the positive is never a distractor);
- utterance scale: :func:`nt_xent` (SimCLR's normalised temperature-scaled cross entropy) over the pooled
  embeddings of two segments of every utterance, the other utterances' segments as negatives, optionally
  gathered from every worker (:func:`gather_rows`, gradient kept for the local rows).
"""
from typing import List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F

from fairseq_plugins.losses.simsiam import masked_l1

frame_l1 = masked_l1


def sample_distractors(n: int, k: int, generator: Optional[torch.Generator] = None,
                       device: Optional[torch.device] = None) -> torch.Tensor:
    """For each of ``n`` items, ``min(k, n - 1)`` distinct indices of OTHER items, uniformly without
    replacement: ``n x K`` long (``K = min(k, n - 1)``; ``n x 0`` when ``n < 2``). Row ``i`` never holds
    ``i``. ``generator`` (a CPU ``torch.Generator``) makes the draw repeatable."""
    if k < 0:
        raise ValueError(f"number of distractors must be >= 0, got {k}")
    kk = min(k, n - 1) if n > 1 else 0
    if kk == 0:
        return torch.zeros(n, 0, dtype=torch.long, device=device)
    idx = torch.rand(n, n - 1, generator=generator).argsort(dim=1)[:, :kk]  # positions among the n-1 others
    idx = idx + (idx >= torch.arange(n).unsqueeze(1)).long()  # skip the item itself
    return idx.to(device)


def infonce_with_distractors(pred: torch.Tensor, target: torch.Tensor, distractors: torch.Tensor,
                             temperature: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-item InfoNCE for one utterance: ``pred``, ``target`` ``n x D``, ``distractors`` ``n x K`` (indices
    into the rows of ``target``). Logits ``cos(pred_i, target_i) / t`` (class 0) and ``cos(pred_i,
    target_j) / t`` for ``j`` in row ``i`` of ``distractors``. Returns ``(loss n, correct n bool)``; gradients
    reach both ``pred`` and ``target`` (pass a detached target for a stop-gradient target)."""
    p = F.normalize(pred.float(), dim=-1)
    t = F.normalize(target.float(), dim=-1)
    pos = (p * t).sum(-1, keepdim=True)  # n x 1
    neg = torch.einsum("nd,nkd->nk", p, t[distractors])  # n x K
    logits = torch.cat([pos, neg], 1) / temperature
    loss = -logits.log_softmax(-1)[:, 0]
    correct = logits.argmax(-1) == 0 if neg.size(1) else torch.ones_like(loss, dtype=torch.bool)
    return loss, correct


def phone_infonce(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, num_distractors: int = 100,
                  temperature: float = 0.1,
                  generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """Phoneme-scale masked contrastive loss.

    Args:
        pred: B x T x D predictions, target: B x T x D targets (detach them for a stop-gradient target).
        mask: B x T bool, the masked frames that count (not padding). Distractors of a frame are drawn from the
            other masked frames of its own utterance; an utterance with fewer than 2 masked frames adds nothing.
        num_distractors: K per frame (fewer when the utterance has fewer other masked frames).
        temperature: of the cosine logits (0.1 by default).
        generator: CPU generator of the distractor draw (seed it for repeatable draws).
    Returns:
        ``(loss, accuracy, count)``: mean InfoNCE over the counted frames (0 with a graph when none), the share
        of them whose positive beats every distractor (detached), and their number.
    """
    if pred.shape != target.shape or mask.shape != pred.shape[:2]:
        raise ValueError(f"shapes differ: pred {tuple(pred.shape)}, target {tuple(target.shape)}, "
                         f"mask {tuple(mask.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    losses: List[torch.Tensor] = []
    correct: List[torch.Tensor] = []
    for b in range(pred.size(0)):
        rows = mask[b].nonzero(as_tuple=True)[0]
        if rows.numel() < 2:
            continue
        idx = sample_distractors(rows.numel(), num_distractors, generator, device=pred.device)
        loss_b, correct_b = infonce_with_distractors(pred[b, rows], target[b, rows], idx, temperature)
        losses.append(loss_b)
        correct.append(correct_b)
    if not losses:
        return pred.sum() * 0.0, pred.new_zeros(()).float(), 0
    loss = torch.cat(losses)
    return loss.mean(), torch.cat(correct).float().mean().detach(), int(loss.numel())


def gather_rows(z: torch.Tensor) -> Tuple[torch.Tensor, int]:
    """All workers' rows of ``z`` (``N_r x D`` on rank r, sizes may differ), concatenated in rank order, with
    the local rows keeping their gradient (other ranks' rows are constants). Returns ``(all rows, offset of
    the local rows)``; without an initialised process group ``(z, 0)``."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return z, 0
    world, rank = dist.get_world_size(), dist.get_rank()
    n = torch.tensor([z.size(0)], device=z.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes = [int(s.item()) for s in sizes]
    padded = z.new_zeros((max(sizes),) + tuple(z.shape[1:]))
    padded[: z.size(0)] = z.detach()
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    rows = [parts[r][: sizes[r]] for r in range(world)]
    rows[rank] = z
    return torch.cat(rows), sum(sizes[:rank])


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1,
            gather: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """SimCLR's NT-Xent over two segments of each of B utterances.

    Args:
        z1, z2: B x D embeddings of segment 1 and 2 (row b of both = utterance b).
        temperature: of the cosine logits.
        gather: use the segments of every worker's utterances as candidates (``torch.distributed``).
    Returns:
        ``(loss, accuracy)``: the mean over the 2B local anchors of ``-log softmax`` of the positive (the other
        segment of the same utterance) among all 2N - 1 other segments (N = utterances over all workers when
        gathering, else B), and the share of anchors whose nearest other segment is the positive (detached).
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"z1 and z2 must both be B x D, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    B = z1.size(0)
    a = F.normalize(torch.cat([z1, z2]).float(), dim=-1)  # 2B anchors: segment 1 rows, then segment 2 rows
    k1, off = gather_rows(a[:B]) if gather else (a[:B], 0)
    k2, _ = gather_rows(a[B:]) if gather else (a[B:], 0)
    N = k1.size(0)
    keys = torch.cat([k1, k2])  # 2N candidates
    logits = a @ keys.t() / temperature  # 2B x 2N
    local = torch.arange(B, device=a.device) + off
    self_idx = torch.cat([local, local + N])
    pos_idx = torch.cat([local + N, local])
    logits = logits.masked_fill(F.one_hot(self_idx, 2 * N).bool(), float("-inf"))
    loss = F.cross_entropy(logits, pos_idx)
    acc = (logits.argmax(-1) == pos_idx).float().mean().detach()
    return loss, acc
