"""Probes on synthetic features: separable -> high accuracy, shuffled labels -> chance, layer weights."""
import torch

from fairseq_plugins.evaluate.probes import (
    ProbeConfig,
    WeightedSum,
    align_frames,
    fit,
    layer_stats,
    speaker_verification,
    train_ctc,
    train_frame_classifier,
    train_pooled_classifier,
)

LAYERS, DIM, CLASSES = 4, 16, 4
INFORMATIVE = 2


def _pooled_data(n: int, seed: int, shuffle: bool = False, informative: int = INFORMATIVE):
    """``n x LAYERS x DIM`` pooled features; only layer ``informative`` carries the class (a shifted mean)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % CLASSES
    x = torch.randn(n, LAYERS, DIM, generator=g) * 3.0
    centres = torch.randn(CLASSES, DIM, generator=torch.Generator().manual_seed(123)) * 2.0
    x[:, informative] = centres[y] + 0.5 * torch.randn(n, DIM, generator=g)
    if shuffle:
        y = y[torch.randperm(n, generator=g)]
    return x, y


def test_weighted_sum_weights_are_a_distribution_and_standardise():
    mean, std = torch.arange(3.0).view(3, 1).expand(3, 2), torch.full((3, 2), 2.0)
    ws = WeightedSum(3, 2, mean, std)
    w = ws.weights().detach()
    assert torch.allclose(w, torch.full((3,), 1 / 3)) and abs(float(w.sum()) - 1) < 1e-6
    h = mean + 2.0  # one standard deviation above every layer's mean
    assert torch.allclose(ws(h), torch.ones(2))
    with torch.no_grad():
        ws.layer_logits.copy_(torch.tensor([5.0, -1.0, 0.3]))
    assert abs(float(ws.weights().detach().sum()) - 1) < 1e-6


def test_separable_case_reaches_high_accuracy_and_prefers_informative_layer():
    train, valid, test = _pooled_data(160, 0), _pooled_data(60, 1), _pooled_data(200, 2)
    out = train_pooled_classifier(train, valid, test, CLASSES, ProbeConfig(epochs=15, lr=1e-2, batch_size=32),
                                  seed=0)
    assert out["test"] >= 0.95
    w = out["layer_weights"]
    assert abs(sum(w) - 1) < 1e-5
    assert max(range(LAYERS), key=lambda i: w[i]) == INFORMATIVE
    assert w[INFORMATIVE] > 1.5 / LAYERS  # learned away from the uniform start


def test_shuffled_labels_are_at_chance():
    train, valid = _pooled_data(160, 0, shuffle=True), _pooled_data(60, 1, shuffle=True)
    test = _pooled_data(400, 2, shuffle=True)
    out = train_pooled_classifier(train, valid, test, CLASSES, ProbeConfig(epochs=15, lr=1e-2, batch_size=32),
                                  seed=0)
    assert abs(out["test"] - 1 / CLASSES) < 0.08  # 400 items: chance 0.25, 3 sigma ~ 0.065


def test_seed_repeatable_and_seed_sensitive():
    data = [_pooled_data(80, s) for s in (0, 1, 2)]
    cfg = ProbeConfig(epochs=3, lr=1e-3, batch_size=8)
    a = train_pooled_classifier(*data, CLASSES, cfg, seed=0)
    b = train_pooled_classifier(*data, CLASSES, cfg, seed=0)
    c = train_pooled_classifier(*data, CLASSES, cfg, seed=1)
    assert a["layer_weights"] == b["layer_weights"] and a["test"] == b["test"]
    assert a["layer_weights"] != c["layer_weights"]


def test_fit_keeps_best_validation_state_and_stops_early():
    model = torch.nn.Linear(1, 1)
    scores = iter([0.5, 0.9, 0.1, 0.2, 0.3, 0.95])
    seen = []

    def validate():
        seen.append(float(model.bias.detach()))
        return next(scores)

    out = fit(model, lambda b: (model(torch.ones(1, 1)) - 5).pow(2).sum(), lambda g: [0],
              validate, ProbeConfig(epochs=6, lr=0.1, patience=3), seed=0, higher_is_better=True)
    assert out["best_epoch"] == 2 and out["epochs_run"] == 5 and out["valid"] == 0.9
    assert float(model.bias.detach()) == seen[1]  # the state scored at epoch 2 was restored


def _frame_data(n_utts: int, seed: int):
    """Utterances ``LAYERS x T x DIM`` where layer INFORMATIVE encodes the frame class."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(CLASSES, DIM, generator=torch.Generator().manual_seed(7)) * 2.0
    feats, labels = [], []
    for _ in range(n_utts):
        t = int(torch.randint(20, 40, (1,), generator=g))
        y = torch.randint(0, CLASSES, (t,), generator=g)
        h = torch.randn(LAYERS, t, DIM, generator=g) * 3.0
        h[INFORMATIVE] = centres[y] + 0.5 * torch.randn(t, DIM, generator=g)
        feats.append(h)
        labels.append(y)
    return feats, labels


def test_frame_classifier_separable():
    out = train_frame_classifier(_frame_data(30, 0), _frame_data(8, 1), _frame_data(10, 2), CLASSES,
                                 ProbeConfig(epochs=8, lr=1e-2, batch_size=4), seed=0)
    assert out["test"] >= 0.95
    assert max(range(LAYERS), key=lambda i: out["layer_weights"][i]) == INFORMATIVE


def test_ctc_probe_learns_a_clean_sequence_task():
    # every phone lasts 3 frames and is encoded in layer INFORMATIVE; blanks are not needed between
    # different phones, so a linear CTC head can reach a low PER
    def data(n, seed):
        g = torch.Generator().manual_seed(seed)
        centres = torch.randn(CLASSES, DIM, generator=torch.Generator().manual_seed(7)) * 2.0
        feats, targets = [], []
        for _ in range(n):
            k = int(torch.randint(4, 9, (1,), generator=g))
            seq = [int(torch.randint(0, CLASSES, (1,), generator=g))]
            while len(seq) < k:
                nxt = int(torch.randint(0, CLASSES, (1,), generator=g))
                if nxt != seq[-1]:
                    seq.append(nxt)
            frames = torch.tensor(seq).repeat_interleave(3)
            h = torch.randn(LAYERS, len(frames), DIM, generator=g)
            h[INFORMATIVE] = centres[frames] + 0.3 * torch.randn(len(frames), DIM, generator=g)
            feats.append(h)
            targets.append([s + 1 for s in seq])
        return feats, targets

    out = train_ctc(data(60, 0), data(10, 1), data(20, 2), CLASSES, ProbeConfig(epochs=30, lr=2e-2, batch_size=8),
                    seed=0)
    assert out["test"] < 0.2
    assert out["valid"] is not None and abs(sum(out["layer_weights"]) - 1) < 1e-5


def test_speaker_verification_uses_the_informative_layer():
    x, spk = _pooled_data(40, 0)
    trials = [(int(spk[a] == spk[b]), a, b) for a in range(40) for b in range(a + 1, 40)]
    mean, std = x.mean(0), x.std(0)
    good = speaker_verification(x, trials, torch.eye(LAYERS)[INFORMATIVE], mean, std)
    bad = speaker_verification(x, trials, torch.eye(LAYERS)[0], mean, std)
    assert good["test"] < 0.05 < 0.3 < bad["test"]
    assert min(range(LAYERS), key=lambda i: good["per_layer_eer"][i]) == INFORMATIVE


def test_align_frames_and_layer_stats():
    lab = torch.arange(10)
    assert align_frames(lab, 9).tolist() == list(range(9))
    assert align_frames(lab, 11).tolist() == list(range(10)) + [9]
    assert align_frames(lab, 5).tolist() == [1, 3, 5, 7, 9]  # another frame rate: nearest centre
    mean, std = layer_stats([torch.ones(2, 3, 4), 3 * torch.ones(2, 1, 4)])
    assert torch.allclose(mean, torch.full((2, 4), 1.5)) and torch.allclose(std, torch.full((2, 4), 0.866), atol=1e-3)
