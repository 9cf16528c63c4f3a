"""The content probe (same-text cross-speaker retrieval with DTW) against a naive reference on small cases, and
its registration in the evaluation CLI."""
import math

import pytest
import torch

from fairseq_plugins.evaluate import pipeline
from fairseq_plugins.evaluate.probes import average_precision, content_retrieval, dtw_costs, same_text_retrieval


def _naive_dtw(a, b):
    a = torch.nn.functional.normalize(a.double(), dim=-1)
    b = torch.nn.functional.normalize(b.double(), dim=-1)
    n, m = a.size(0), b.size(0)
    acc = [[math.inf] * (m + 1) for _ in range(n + 1)]
    acc[0][0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            c = 1.0 - float(a[i - 1] @ b[j - 1])
            acc[i][j] = c + min(acc[i - 1][j], acc[i][j - 1], acc[i - 1][j - 1])
    return acc[n][m] / (n + m)


def test_dtw_costs_match_the_naive_recursion():
    g = torch.Generator().manual_seed(0)
    lengths = [(5, 7), (9, 3), (1, 4), (6, 6), (8, 1)]
    a = [torch.randn(n, 4, generator=g) for n, _ in lengths]
    b = [torch.randn(m, 4, generator=g) for _, m in lengths]
    ours = dtw_costs(a, b, chunk=2)  # several chunks with different padding
    ref = torch.tensor([_naive_dtw(x, y) for x, y in zip(a, b)], dtype=torch.float64)
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=0)
    # a time-stretched copy aligns at zero cost
    x = torch.randn(6, 4, generator=g)
    assert float(dtw_costs([x], [x.repeat_interleave(2, dim=0)])[0]) < 1e-12
    with pytest.raises(ValueError, match="no frames"):
        dtw_costs([torch.zeros(0, 4)], [x])


def test_average_precision_by_hand():
    assert average_precision([0.1, 0.2, 0.3], [True, False, True]) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision([0.3, 0.2, 0.1], [True, False, False]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        average_precision([0.1], [False])


def _corpus(seed=0, noise=0.05):
    """Three 'words' (frame templates), each said by three speakers at different speeds, plus noise."""
    g = torch.Generator().manual_seed(seed)
    templates = {w: torch.randn(6, 8, generator=g) for w in ("yes", "no", "stop")}
    feats, texts, spks = [], [], []
    for s, rate in enumerate((1, 2, 3)):
        for w, t in templates.items():
            x = t.repeat_interleave(rate, dim=0)
            feats.append(x + noise * torch.randn(x.shape, generator=g))
            texts.append(w)
            spks.append(f"spk{s}")
    return feats, texts, spks


def test_same_text_retrieval_ranks_the_same_words_first():
    feats, texts, spks = _corpus()
    res = same_text_retrieval(feats, texts, spks)
    assert res["map"] == pytest.approx(1.0) and res["p_at_1"] == 1.0 and res["queries"] == 9
    # the same features with the texts shuffled: retrieval can no longer be perfect
    shuffled = ["yes", "no", "stop", "no", "stop", "yes", "stop", "yes", "no"]
    assert same_text_retrieval(feats, shuffled, spks)["map"] < 0.7
    # a naive reference: rank by the naive DTW of every cross-speaker pair
    q = 0
    cands = [j for j in range(len(feats)) if spks[j] != spks[q]]
    cost = [_naive_dtw(feats[q], feats[j]) for j in cands]
    assert texts[cands[min(range(len(cands)), key=cost.__getitem__)]] == texts[q]


def test_content_retrieval_picks_the_layer_on_valid():
    feats, texts, spks = _corpus()
    g = torch.Generator().manual_seed(3)
    noise = [torch.randn(f.shape, generator=g) for f in feats]
    layered = [torch.stack([n, f]) for n, f in zip(noise, feats)]  # layer 0: noise, layer 1: content
    out = content_retrieval((layered, texts, spks), (layered, texts, spks))
    assert out["layer"] == 1 and out["test"] == pytest.approx(1.0)
    assert out["per_layer_map_valid"][0] < out["per_layer_map_valid"][1]


def test_registered_in_the_evaluation_cli():
    assert "content_qbe" in pipeline.TASKS and pipeline.METRICS["content_qbe"] == ("MAP", True)
    from fairseq_plugins.evaluate.__main__ import build_parser

    args = build_parser().parse_args(["--manifest-dir", "m", "--out", "o", "--tasks", "content_qbe"])
    assert args.tasks == ["content_qbe"]
