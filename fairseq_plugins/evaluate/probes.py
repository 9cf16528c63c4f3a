"""SUPERB-style probes on frozen features: a learned softmax-weighted sum of layers plus a light head.

SUPERB ("SUPERB: Speech processing Universal PERformance Benchmark", arXiv 2105.01051) freezes the upstream
and learns one scalar per hidden layer, softmax-normalised, to mix the layers before a small task head. Here:

- :class:`WeightedSum` standardises every layer with fixed train-split statistics (a per-layer, per-dimension
  affine map: it does not change what a linear probe can express, only how fast Adam gets there, and makes
  the log-mel floor and 768-d transformers train alike) and mixes them with ``softmax(w)``, ``w`` initialised
  to zeros (uniform).
- Heads: frame classification and utterance classification are linear (mean pooling over time before the
  linear layer for utterances); phone recognition is CTC with a linear head (SUPERB PR) or an optional
  1-layer BiLSTM.
- Training: Adam for a fixed budget of epochs; after every epoch the validation split is scored, the best
  state is kept, and with ``patience > 0`` training stops after that many epochs without improvement. The
  caller scores the test split once with the returned (best-validation) probe.
- Speaker verification trains nothing: utterance embeddings are the time-mean of each layer, standardised,
  mixed with given layer weights (by default the speaker-id probe's learned weights of the same seed), and
  trials are scored by cosine similarity.
- Content retrieval trains nothing either: same-text cross-speaker query-by-example (every utterance queries
  the other speakers' utterances, ranked by the DTW cost of their frame features, cosine frame distance; the
  relevant ones say the same text), mean average precision of the layer that is best on the validation split.

Everything takes plain tensors (``L x T x C`` per utterance, or ``N x L x C`` pooled), so the functions are
testable without audio.
"""
import copy
import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from fairseq_plugins.evaluate import metrics

logger = logging.getLogger(__name__)


@dataclass
class ProbeConfig:
    """Training budget and head of one probe."""

    epochs: int = 20
    lr: float = 1e-3
    batch_size: int = 8
    patience: int = 0  # 0: no early stop, train the whole budget and keep the best-validation state
    weight_decay: float = 0.0
    head: str = "linear"  # CTC only: "linear" (SUPERB PR) or "lstm" (1-layer BiLSTM + linear)
    lstm_dim: int = 128

    def to_dict(self) -> Dict:
        return asdict(self)


class WeightedSum(nn.Module):
    """Softmax-weighted sum of ``L`` standardised layers: ``... x L x C -> ... x C``.

    ``mean``/``std`` (``L x C``) are fixed buffers (train statistics); ``layer_logits`` the learned scalars.
    """

    def __init__(self, num_layers: int, dim: int, mean: Optional[torch.Tensor] = None,
                 std: Optional[torch.Tensor] = None):
        super().__init__()
        self.layer_logits = nn.Parameter(torch.zeros(num_layers))
        self.register_buffer("mean", torch.zeros(num_layers, dim) if mean is None else mean.float().clone())
        self.register_buffer("std", torch.ones(num_layers, dim) if std is None else std.float().clone())

    def weights(self) -> torch.Tensor:
        """The layer weights (``L``, sum to 1)."""
        return torch.softmax(self.layer_logits, dim=0)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = (h - self.mean) / self.std
        return torch.einsum("...lc,l->...c", z, self.weights())


def layer_stats(items: Iterable[torch.Tensor], eps: float = 1e-5) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-layer, per-dimension mean and std over the frames of ``L x T x C`` tensors (float64 sums)."""
    total, sq, n = None, None, 0
    for h in items:
        h = h.double()
        s, s2 = h.sum(dim=1), (h * h).sum(dim=1)
        total = s if total is None else total + s
        sq = s2 if sq is None else sq + s2
        n += h.size(1)
    if n == 0:
        raise ValueError("layer_stats: no frames")
    mean = total / n
    var = (sq / n - mean * mean).clamp_min(0)
    return mean.float(), (var.sqrt() + eps).float()


def pooled_stats(x: torch.Tensor, eps: float = 1e-5) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean and std over items of ``N x L x C`` pooled features."""
    x = x.double()
    return x.mean(0).float(), (x.std(0, unbiased=False) + eps).float()


def _better(a: Tuple[float, float], b: Optional[Tuple[float, float]], higher: bool) -> bool:
    """``(metric, tie_break_loss)``: a better metric wins; on a tie (small validation sets), a lower loss."""
    if b is None:
        return True
    if a[0] != b[0]:
        return a[0] > b[0] if higher else a[0] < b[0]
    return a[1] < b[1]


def fit(model: nn.Module, step: Callable[[object], torch.Tensor], batches: Callable[[torch.Generator], Iterable],
        validate: Callable[[], object], cfg: ProbeConfig, seed: int, higher_is_better: bool,
        tag: str = "probe") -> Dict:
    """Train ``model`` for ``cfg.epochs`` epochs, validating after each; restore the best-validation state.

    ``validate()`` returns the validation metric, or ``(metric, loss)`` where the loss breaks ties of the
    metric (accuracies on a few validation items tie often). Returns ``{"valid", "best_epoch",
    "epochs_run", "history"}``; the test split is not touched here.
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best, best_state, best_epoch, bad, history = None, None, 0, 0, []
    epoch = 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        losses = []
        for batch in batches(gen):
            loss = step(batch)
            if not torch.isfinite(loss):  # features are checked finite when extracted: the probe diverged
                raise FloatingPointError(f"{tag}: non-finite probe loss {loss.item()} in epoch {epoch} (stage: probe "
                                         f"training, lr={cfg.lr}); no result is written")
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        model.eval()
        with torch.no_grad():
            v = validate()
        v = (float(v[0]), float(v[1])) if isinstance(v, tuple) else (float(v), 0.0)
        history.append({"epoch": epoch, "loss": sum(losses) / max(1, len(losses)), "valid": v[0],
                        "valid_loss": v[1]})
        logger.debug("%s epoch %d loss %.4f valid %.4f (%.4f)", tag, epoch, history[-1]["loss"], *v)
        if _better(v, best, higher_is_better):
            best, best_state, best_epoch, bad = v, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            bad += 1
            if cfg.patience and bad >= cfg.patience:
                logger.debug("%s: early stop after epoch %d (best %d)", tag, epoch, best_epoch)
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    bad_params = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad_params or (best is not None and not all(map(math.isfinite, best))):
        raise FloatingPointError(f"{tag}: non-finite probe weights {bad_params} or validation score {best} (stage: "
                                 f"probe training); no result is written")
    return {"valid": None if best is None else best[0], "best_epoch": best_epoch, "epochs_run": epoch,
            "history": history}


def _index_batches(n: int, batch_size: int, gen: torch.Generator) -> List[torch.Tensor]:
    return list(torch.randperm(n, generator=gen).split(batch_size))


# ------------------------------------------------------------------------------------------------------
# linear classifiers on the weighted sum of layers: utterance level (time means) and frame level
class LinearClassifier(nn.Module):
    """``N x L x C`` (time-means of utterances, or frames) -> weighted sum -> linear -> ``N x K`` logits."""

    def __init__(self, num_layers: int, dim: int, num_classes: int, mean=None, std=None):
        super().__init__()
        self.mix = WeightedSum(num_layers, dim, mean, std)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mix(x))


def train_pooled_classifier(train: Tuple[torch.Tensor, torch.Tensor], valid: Tuple[torch.Tensor, torch.Tensor],
                            test: Tuple[torch.Tensor, torch.Tensor], num_classes: int, cfg: ProbeConfig,
                            seed: int, tag: str = "pooled") -> Dict:
    """Mean pooling + linear probe. Each split is ``(N x L x C pooled features, N labels)``.

    Returns ``{"test", "valid", "layer_weights", "best_epoch", "epochs_run", ...}`` with accuracies.
    """
    xtr, ytr = train
    mean, std = pooled_stats(xtr)
    torch.manual_seed(seed)
    model = LinearClassifier(xtr.size(1), xtr.size(2), num_classes, mean, std)

    def step(idx):
        return F.cross_entropy(model(xtr[idx]), ytr[idx])

    def accuracy(x, y):
        logits = model(x)
        return metrics.accuracy(logits.argmax(-1).numpy(), y.numpy()), float(F.cross_entropy(logits, y))

    out = fit(model, step, lambda g: _index_batches(len(ytr), cfg.batch_size, g),
              lambda: accuracy(*valid), cfg, seed, higher_is_better=True, tag=tag)
    with torch.no_grad():
        out["test"] = accuracy(*test)[0]
    out["layer_weights"] = model.mix.weights().tolist()
    return out


# ------------------------------------------------------------------------------------------------------
# frame-level classification (phones at 50 Hz): linear
def align_frames(labels: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Frame labels for ``num_frames`` feature frames: trim/extend by the last label when the counts differ
    by at most 2 (conv edge effects), else nearest-centre resampling (an upstream with another frame rate)."""
    n = labels.numel()
    if abs(n - num_frames) <= 2:
        if n >= num_frames:
            return labels[:num_frames]
        return torch.cat([labels, labels[-1:].expand(num_frames - n)])
    idx = ((torch.arange(num_frames, dtype=torch.float64) + 0.5) * n / num_frames).long().clamp_max(n - 1)
    return labels[idx]


def _frames(feats: Sequence[torch.Tensor], labels: Sequence[torch.Tensor], idx: Sequence[int]):
    xs, ys = [], []
    for i in idx:
        h = feats[int(i)]  # L x T x C
        xs.append(h.transpose(0, 1))
        ys.append(align_frames(labels[int(i)], h.size(1)))
    return torch.cat(xs), torch.cat(ys)


def train_frame_classifier(train: Tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]],
                           valid: Tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]],
                           test: Tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]], num_classes: int,
                           cfg: ProbeConfig, seed: int, tag: str = "frame") -> Dict:
    """Linear frame classifier. Each split is ``(features: L x T x C per utterance, labels: T per utterance)``;
    batches are ``cfg.batch_size`` utterances. Returns frame accuracies like :func:`train_pooled_classifier`."""
    ftr, ltr = train
    h0 = ftr[0]
    mean, std = layer_stats(ftr[i] for i in range(len(ftr)))
    torch.manual_seed(seed)
    model = LinearClassifier(h0.size(0), h0.size(2), num_classes, mean, std)

    def step(idx):
        x, y = _frames(ftr, ltr, idx)
        return F.cross_entropy(model(x), y)

    def accuracy(split):
        feats, labels = split
        correct = total = 0
        loss = 0.0
        for i in range(len(feats)):
            x, y = _frames(feats, labels, [i])
            logits = model(x)
            correct += int((logits.argmax(-1) == y).sum())
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            total += y.numel()
        return correct / max(1, total), loss / max(1, total)

    out = fit(model, step, lambda g: _index_batches(len(ftr), cfg.batch_size, g), lambda: accuracy(valid),
              cfg, seed, higher_is_better=True, tag=tag)
    with torch.no_grad():
        out["test"] = accuracy(test)[0]
    out["layer_weights"] = model.mix.weights().tolist()
    return out


# ------------------------------------------------------------------------------------------------------
# phone recognition: CTC
class CTCProbe(nn.Module):
    """``B x T x L x C`` -> weighted sum -> [BiLSTM] -> linear -> ``B x T x (V + 1)`` log-probs (blank 0)."""

    def __init__(self, num_layers: int, dim: int, vocab_size: int, mean=None, std=None, head: str = "linear",
                 lstm_dim: int = 128):
        super().__init__()
        if head not in ("linear", "lstm"):
            raise ValueError(f"unknown CTC head {head!r}; expected 'linear' or 'lstm'")
        self.mix = WeightedSum(num_layers, dim, mean, std)
        self.lstm = nn.LSTM(dim, lstm_dim, batch_first=True, bidirectional=True) if head == "lstm" else None
        self.out = nn.Linear(2 * lstm_dim if self.lstm is not None else dim, vocab_size + 1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        z = self.mix(x)
        if self.lstm is not None:
            packed = nn.utils.rnn.pack_padded_sequence(z, lengths.cpu(), batch_first=True, enforce_sorted=False)
            z, _ = self.lstm(packed)
            z, _ = nn.utils.rnn.pad_packed_sequence(z, batch_first=True, total_length=x.size(1))
        return F.log_softmax(self.out(z), dim=-1)


def _padded(feats: Sequence[torch.Tensor], idx: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    hs = [feats[int(i)].transpose(0, 1) for i in idx]  # T x L x C
    lengths = torch.tensor([h.size(0) for h in hs])
    return nn.utils.rnn.pad_sequence(hs, batch_first=True), lengths


def train_ctc(train: Tuple[Sequence[torch.Tensor], Sequence[Sequence[int]]],
              valid: Tuple[Sequence[torch.Tensor], Sequence[Sequence[int]]],
              test: Tuple[Sequence[torch.Tensor], Sequence[Sequence[int]]], vocab_size: int,
              cfg: ProbeConfig, seed: int, tag: str = "ctc") -> Dict:
    """CTC phone recogniser. Targets are token ids ``1..vocab_size`` (0 is the blank); returns PERs
    (greedy decoding) like :func:`train_pooled_classifier` returns accuracies."""
    ftr, ttr = train
    h0 = ftr[0]
    mean, std = layer_stats(ftr[i] for i in range(len(ftr)))
    torch.manual_seed(seed)
    model = CTCProbe(h0.size(0), h0.size(2), vocab_size, mean, std, cfg.head, cfg.lstm_dim)

    def step(idx):
        x, lengths = _padded(ftr, idx)
        targets = [torch.tensor(ttr[int(i)], dtype=torch.long) for i in idx]
        lp = model(x, lengths).transpose(0, 1)  # T x B x V
        return F.ctc_loss(lp, torch.cat(targets), lengths, torch.tensor([t.numel() for t in targets]),
                          blank=0, reduction="mean", zero_infinity=True)

    def per(split, batch: int = 16):
        feats, refs = split
        hyps = []
        for start in range(0, len(feats), batch):
            idx = list(range(start, min(len(feats), start + batch)))
            x, lengths = _padded(feats, idx)
            best = model(x, lengths).argmax(-1)
            hyps += [metrics.ctc_greedy_decode(best[k, : lengths[k]].tolist()) for k in range(len(idx))]
        return metrics.per(hyps, [list(r) for r in refs])

    out = fit(model, step, lambda g: _index_batches(len(ftr), cfg.batch_size, g), lambda: per(valid),
              cfg, seed, higher_is_better=False, tag=tag)
    with torch.no_grad():
        out["test"] = per(test)
    out["layer_weights"] = model.mix.weights().tolist()
    return out


# ------------------------------------------------------------------------------------------------------
# speaker verification: no training
def utterance_embeddings(pooled: torch.Tensor, weights: torch.Tensor, mean: torch.Tensor,
                         std: torch.Tensor) -> torch.Tensor:
    """``N x L x C`` time-means -> ``N x C``: standardised with train statistics (which also centres them on
    the train mean) and mixed with ``weights`` (``L``)."""
    return torch.einsum("nlc,l->nc", (pooled - mean) / std, weights.float())


def cosine_trial_scores(emb: torch.Tensor, trials: Sequence[Tuple[int, int, int]]) -> Tuple[List[float], List[int]]:
    """Cosine similarity of every ``(label, index_a, index_b)`` trial; returns ``(scores, labels)``."""
    e = F.normalize(emb.double(), dim=-1)
    a = torch.tensor([t[1] for t in trials])
    b = torch.tensor([t[2] for t in trials])
    return (e[a] * e[b]).sum(-1).tolist(), [t[0] for t in trials]


def speaker_verification(pooled_test: torch.Tensor, trials: Sequence[Tuple[int, int, int]],
                         weights: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> Dict:
    """EER of cosine scoring with ``weights``-mixed embeddings, plus the EER of every single layer."""
    t0 = time.time()
    scores, labels = cosine_trial_scores(utterance_embeddings(pooled_test, weights, mean, std), trials)
    per_layer = []
    for layer in range(pooled_test.size(1)):
        onehot = F.one_hot(torch.tensor(layer), pooled_test.size(1)).float()
        s, _ = cosine_trial_scores(utterance_embeddings(pooled_test, onehot, mean, std), trials)
        per_layer.append(metrics.eer(s, labels))
    return {"test": metrics.eer(scores, labels), "layer_weights": weights.tolist(), "per_layer_eer": per_layer,
            "seconds": time.time() - t0}


# ------------------------------------------------------------------------------------------------------
# content: same-text cross-speaker retrieval (query-by-example) with DTW over frame features
def dtw_costs(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor], chunk: int = 2048) -> torch.Tensor:
    """DTW cost of every pair ``(a[k], b[k])`` of ``T x C`` frame sequences -> ``K`` float64 costs.

    Frame distance: cosine distance ``1 - cos``; steps (1, 0), (0, 1), (1, 1) with weight 1; the cost of the best
    path from the first to the last frame pair divided by ``T_a + T_b`` (so it does not grow with length). Pairs
    are padded and run together, one anti-diagonal at a time (the padded cells never reach the end cell).
    """
    if len(a) != len(b):
        raise ValueError(f"dtw_costs: {len(a)} first and {len(b)} second sequences")
    out = torch.empty(len(a), dtype=torch.float64)
    for s in range(0, len(a), chunk):
        xa, xb = a[s:s + chunk], b[s:s + chunk]
        na = torch.tensor([x.size(0) for x in xa])
        nb = torch.tensor([x.size(0) for x in xb])
        if bool((na == 0).any()) or bool((nb == 0).any()):
            raise ValueError("dtw_costs: a sequence has no frames")
        pa = nn.utils.rnn.pad_sequence([F.normalize(x.double(), dim=-1) for x in xa], batch_first=True)
        pb = nn.utils.rnn.pad_sequence([F.normalize(x.double(), dim=-1) for x in xb], batch_first=True)
        cost = 1.0 - pa @ pb.transpose(1, 2)  # K x N x M
        k, n, m = cost.shape
        acc = torch.full((k, n + 1, m + 1), math.inf, dtype=torch.float64)
        acc[:, 0, 0] = 0.0
        for d in range(2, n + m + 1):  # cells (i, j) with i + j = d, 1-based
            i = torch.arange(max(1, d - m), min(n, d - 1) + 1)
            j = d - i
            best = torch.minimum(torch.minimum(acc[:, i - 1, j], acc[:, i, j - 1]), acc[:, i - 1, j - 1])
            acc[:, i, j] = cost[:, i - 1, j - 1] + best
        out[s:s + len(xa)] = acc[torch.arange(k), na, nb] / (na + nb).double()
    return out


def average_precision(costs: Sequence[float], relevant: Sequence[bool]) -> float:
    """Average precision of a ranking by ascending cost (ties keep input order); needs one relevant item."""
    order = sorted(range(len(costs)), key=lambda i: costs[i])
    hits, total = 0, 0.0
    for rank, i in enumerate(order, start=1):
        if relevant[i]:
            hits += 1
            total += hits / rank
    if hits == 0:
        raise ValueError("average_precision: no relevant item")
    return total / hits


def same_text_retrieval(feats: Sequence[torch.Tensor], texts: Sequence[str], speakers: Sequence[str]) -> Dict:
    """Query-by-example over ``T x C`` frame features: every utterance queries the utterances of OTHER speakers,
    ranked by :func:`dtw_costs`; the relevant ones say the same text. Returns ``map`` (mean average precision
    over the queries that have a relevant item), ``p_at_1`` and ``queries``."""
    n = len(feats)
    if not n == len(texts) == len(speakers):
        raise ValueError(f"same_text_retrieval: {n} features, {len(texts)} texts, {len(speakers)} speakers")
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n) if speakers[i] != speakers[j]]
    if not pairs:
        raise ValueError("same_text_retrieval: every utterance has the same speaker")
    costs = dtw_costs([feats[i] for i, _ in pairs], [feats[j] for _, j in pairs])
    table: Dict[int, Dict[int, float]] = {i: {} for i in range(n)}
    for (i, j), c in zip(pairs, costs.tolist()):
        table[i][j] = table[j][i] = c
    aps, p1 = [], []
    for q in range(n):
        cands = sorted(table[q])
        rel = [texts[c] == texts[q] for c in cands]
        if not any(rel):
            continue
        cost = [table[q][c] for c in cands]
        aps.append(average_precision(cost, rel))
        p1.append(float(rel[min(range(len(cands)), key=lambda k: cost[k])]))
    if not aps:
        raise ValueError("same_text_retrieval: no text is said by two speakers")
    return {"map": sum(aps) / len(aps), "p_at_1": sum(p1) / len(p1), "queries": len(aps)}


def content_retrieval(valid: Tuple[Sequence[torch.Tensor], Sequence[str], Sequence[str]],
                      test: Tuple[Sequence[torch.Tensor], Sequence[str], Sequence[str]]) -> Dict:
    """Same-text cross-speaker retrieval per hidden layer (``L x T x C`` features): the layer with the best
    validation MAP is scored on the test split (SUPERB's QbE reports the best layer; choosing it on validation
    keeps the test split unseen). Returns ``test`` (MAP, a fraction like every probe's score), ``layer``,
    ``per_layer_map_valid``, ``p_at_1``."""
    t0 = time.time()
    num_layers = valid[0][0].size(0)
    per_layer = [same_text_retrieval([f[layer].float() for f in valid[0]], valid[1], valid[2])["map"]
                 for layer in range(num_layers)]
    best = max(range(num_layers), key=lambda layer: per_layer[layer])
    res = same_text_retrieval([f[best].float() for f in test[0]], test[1], test[2])
    return {"test": res["map"], "layer": best, "per_layer_map_valid": per_layer, "p_at_1": res["p_at_1"],
            "queries": res["queries"], "seconds": time.time() - t0}
