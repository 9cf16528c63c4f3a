"""Unit tests of SLICER: teacher EMA, MoCo queue, losses, k-mix, save/resume of the model state."""
import io
import math

import numpy as np
import pytest
import torch
from fairseq.criterions import CRITERION_REGISTRY
from fairseq.models import MODEL_REGISTRY
from fairseq.tasks import TASK_REGISTRY

from fairseq_plugins.criterions.slicer import SlicerCriterion
from fairseq_plugins.data.spec_augment import (
    assign_clusters,
    fit_kmix_centroids,
    log_mixup_exp,
    pick_partners,
    random_resize_crop,
)
from fairseq_plugins.losses.slicer import cluster_contrast, cluster_entropy, symmetric_info_nce
from fairseq_plugins.models.slicer import SlicerConfig, SlicerModel
from fairseq_plugins.tasks.slicer_pretraining import SlicerPretrainingTask


def tiny_cfg(**kw) -> SlicerConfig:
    base = dict(n_mels=16, conv_channels=4, embed_dim=32, cluster_hidden=32, instance_dim=8, num_clusters=6,
                queue_size=10, ema_momentum=0.9, bn_groups=2, mix_mode="kmix", mix_bank_size=8, kmix_clusters=2,
                norm_updates=3)
    base.update(kw)
    return SlicerConfig(**base)


def tiny_model(**kw) -> SlicerModel:
    torch.manual_seed(0)
    model = SlicerModel(tiny_cfg(**kw))
    if model.cfg.mix_mode == "kmix":  # what the task does before the first epoch, on the test batch itself
        feats = model.frontend(batch()).mean(dim=2).numpy()
        model.set_kmix_centroids(torch.from_numpy(fit_kmix_centroids(feats, 2, 0, model.cfg.kmix_metric)))
    return model


def batch(b: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scale = torch.logspace(-3, 0, b).unsqueeze(1)  # different levels -> both k-mix clusters occur
    return torch.randn(b, 3200, generator=g) * scale


def loss_of(model: SlicerModel, source: torch.Tensor) -> torch.Tensor:
    out = model(source)
    inst = symmetric_info_nce(out["q1"], out["q2"], out["k1"], out["k2"], out["negatives"])
    clus, ent = cluster_contrast(out["c1"], out["c2"])
    return inst + clus + ent


def test_registered_names():
    assert MODEL_REGISTRY["slicer"] is SlicerModel
    assert TASK_REGISTRY["slicer_pretraining"] is SlicerPretrainingTask
    assert CRITERION_REGISTRY["slicer"] is SlicerCriterion


def test_teacher_gets_no_gradient_and_moves_by_the_ema_rule():
    model = tiny_model().train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.set_num_updates(0)  # fresh run: nothing to absorb yet
    t0 = [p.detach().clone() for p in model.teacher.parameters()]
    for p, q in zip(t0, model.student.parameters()):
        assert torch.equal(p, q.detach())  # the teacher starts as a copy
    loss_of(model, batch()).backward()
    assert all(not p.requires_grad and p.grad is None for p in model.teacher.parameters())
    opt.step()
    for p, q in zip(t0, model.teacher.parameters()):
        assert torch.equal(p, q.detach())  # the optimiser never touches the teacher
    s1 = [p.detach().clone() for p in model.student.parameters()]
    model.set_num_updates(1)
    m = model.cfg.ema_momentum
    for t, s, new in zip(t0, s1, model.teacher.parameters()):
        torch.testing.assert_close(new.detach(), m * t + (1 - m) * s, rtol=0, atol=1e-7)
    after = [p.detach().clone() for p in model.teacher.parameters()]
    model.set_num_updates(1)  # update_freq > 1 calls again with the same count: no second step
    assert all(torch.equal(a, b) for a, b in zip(after, model.teacher.parameters()))
    assert int(model.ema_updates) == 1


def test_queue_is_fifo_and_wraps_around():
    model = tiny_model()
    d = model.cfg.instance_dim
    a = torch.arange(3 * d, dtype=torch.float).view(3, d)
    b = 100 + torch.arange(4 * d, dtype=torch.float).view(4, d)
    old = model.queue.clone()
    model.enqueue(a)
    assert int(model.queue_ptr) == 3 and torch.equal(model.queue[:3], a) and torch.equal(model.queue[3:], old[3:])
    model.enqueue(b)
    model.enqueue(b)  # 3 + 4 + 4 = 11 > 10: wraps twice
    # slots: 0-2 a, 3-6 b, 7-9 b[0:3], 0 b[3]; pointer 1
    assert int(model.queue_ptr) == 1
    assert torch.equal(model.queue[0], b[3]) and torch.equal(model.queue[1:3], a[1:3])
    assert torch.equal(model.queue[3:7], b) and torch.equal(model.queue[7:10], b[:3])
    many = torch.randn(25, d)
    model.enqueue(many)  # more keys than slots: the newest 10 remain
    assert sorted(model.queue.sum(1).tolist()) == sorted(many[-10:].sum(1).tolist())


def test_forward_enqueues_the_new_keys_after_using_the_old_queue():
    model = tiny_model().train()
    before = model.queue.clone()
    out = model(batch())
    assert torch.equal(out["negatives"], before)
    keys = torch.cat([out["k1"], out["k2"]])  # 12 keys into a 10-slot queue: the newest 10, from slot 0
    assert torch.equal(model.queue, keys[2:]) and int(model.queue_ptr) == 0


def test_losses_are_symmetric_in_the_views():
    g = torch.Generator().manual_seed(1)
    q1, q2, k1, k2 = (torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=1) for _ in range(4))
    queue = torch.nn.functional.normalize(torch.randn(20, 8, generator=g), dim=1)
    torch.testing.assert_close(symmetric_info_nce(q1, q2, k1, k2, queue), symmetric_info_nce(q2, q1, k2, k1, queue))
    c1, c2 = (torch.softmax(torch.randn(5, 4, generator=g), dim=1) for _ in range(2))
    for x, y in zip(cluster_contrast(c1, c2), cluster_contrast(c2, c1)):
        torch.testing.assert_close(x, y)
    # the model's loss is symmetric too: with two different views, swapping them swaps the q/k/c pairs and
    # leaves the loss unchanged (eval mode: BatchNorm uses running statistics, nothing is enqueued)
    model = tiny_model().eval()
    x = model.logmel(batch())[1]
    v1, v2 = x, random_resize_crop(x, generator=torch.Generator().manual_seed(0))
    model.make_views = lambda source, dummy_batch=False: (v1, v2)
    out = model(batch())
    loss = loss_of(model, batch())
    model.make_views = lambda source, dummy_batch=False: (v2, v1)
    swapped = model(batch())
    assert not torch.allclose(out["q1"], out["q2"])  # the views really differ
    for a, b in (("q1", "q2"), ("k1", "k2"), ("c1", "c2")):
        torch.testing.assert_close(swapped[a], out[b])
        torch.testing.assert_close(swapped[b], out[a])
    torch.testing.assert_close(loss_of(model, batch()), loss)


def test_cluster_columns_sum_as_expected():
    model = tiny_model().eval()
    out = model(batch(6))
    c = out["c1"]
    torch.testing.assert_close(c.sum(1), torch.ones(6))  # each row is a distribution over K clusters
    torch.testing.assert_close(c.sum(0).sum(), torch.tensor(6.0))  # so the K column sums add up to B
    k = c.size(1)
    uniform = torch.full((6, k), 1.0 / k)
    assert abs(float(cluster_entropy(uniform))) < 1e-6  # balanced marginal: no penalty
    collapsed = torch.zeros(6, k)
    collapsed[:, 0] = 1
    assert abs(float(cluster_entropy(collapsed)) - math.log(k)) < 1e-5  # all in one cluster: log K
    # perfectly agreeing one-hot columns give a lower cluster loss than disagreeing ones
    eye = torch.eye(k)
    assert cluster_contrast(eye, eye)[0] < cluster_contrast(eye, eye.roll(1, dims=1))[0]


def test_kmix_picks_a_partner_from_another_cluster():
    centroids = torch.tensor([[0.0], [1.0], [10.0]])
    bank = torch.tensor([0, 0, 1, 1, 2, 0])
    labels = torch.tensor([0, 1, 2, 0])
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        far = pick_partners(labels, bank, centroids, "farthest", g)
        assert bank[far].tolist() == [2, 2, 0, 2]  # farthest cluster present in the bank
        other = pick_partners(labels, bank, centroids, "random_other", g)
        assert all(bank[j] != lab for j, lab in zip(other.tolist(), labels.tolist()))
    only_own = pick_partners(torch.tensor([0]), torch.tensor([0, 0]), centroids, "farthest")
    assert only_own.item() in (0, 1)  # no other cluster in the bank: plain mixup partner
    with pytest.raises(ValueError, match="unknown k-mix partner rule 'nearest'"):
        pick_partners(labels, bank, centroids, "nearest")


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_kmix_kmeans_groups_by_direction_or_by_distance(metric):
    # two spectral shapes (rising / falling over 8 bins), each at a quiet and a loud level
    g = np.random.default_rng(0)
    rise, fall = np.linspace(1, 2, 8), np.linspace(2, 1, 8)
    shape = np.repeat([0, 1, 0, 1], 30)
    level = np.repeat([1.0, 1.0, 20.0, 20.0], 30)
    x = np.stack([rise, fall])[shape] * level[:, None] + g.normal(0, 0.01, (120, 8))
    c = fit_kmix_centroids(x, 2, seed=0, metric=metric)
    labels = assign_clusters(torch.from_numpy(x).float(), torch.from_numpy(c), metric).numpy()
    by = shape if metric == "cosine" else (level > 1).astype(int)  # authors' spherical k-means: by shape
    assert len(set(labels)) == 2 and all(len(set(labels[by == v])) == 1 for v in (0, 1))
    if metric == "cosine":
        np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="k-mix metric"):
        fit_kmix_centroids(x, 2, metric="manhattan")


def test_log_mixup_exp_and_random_resize_crop():
    x, y = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    torch.testing.assert_close(log_mixup_exp(x, y, torch.zeros(3)), x)
    lam = torch.tensor([0.1, 0.2, 0.3])
    ref = torch.log((1 - lam[:, None, None]) * x.exp() + lam[:, None, None] * y.exp())
    torch.testing.assert_close(log_mixup_exp(x, y, lam), ref)
    x = torch.randn(2, 16, 20)
    assert random_resize_crop(x).shape == (2, 16, 20)
    # crop = the whole item: the identity
    torch.testing.assert_close(random_resize_crop(x, (1.0, 1.0), (1.0, 1.0), (1.0, 1.0)), x)
    # a time ramp cropped to half its length at the drawn offset and stretched back: a ramp from j0 to
    # j0 + ct - 1 (end points exact with align_corners; PyTorch's cubic kernel bends a ramp by < 0.1 between)
    ramp = torch.arange(20.0).expand(1, 16, 20)
    out = random_resize_crop(ramp, (1.0, 1.0), (1.0, 1.0), (0.5, 0.5), generator=torch.Generator().manual_seed(2))
    r = torch.rand(4, generator=torch.Generator().manual_seed(2)).tolist()
    ct, j0 = 10, int(r[3] * (20 - 10 + 1))
    assert j0 == 5
    expected = (j0 + torch.arange(20.0) * (ct - 1) / 19).expand(16, 20)
    torch.testing.assert_close(out[0][:, [0, -1]], expected[:, [0, -1]])
    torch.testing.assert_close(out[0], expected, atol=0.1, rtol=0)
    # a 1.5x virtual canvas taken whole: the item shrinks into the middle with zero margins
    out = random_resize_crop(torch.ones(1, 16, 20), (1.0, 1.5), (1.0, 1.0), (1.5, 1.5))[0]
    assert out[:, 0].abs().max() < 1e-6 and out[:, -1].abs().max() < 1e-6
    torch.testing.assert_close(out[:, 8:12], torch.ones(16, 4))


def test_kmix_model_needs_centroids():
    model = SlicerModel(tiny_cfg()).train()
    assert model.needs_kmix_centroids()
    with pytest.raises(RuntimeError, match="k-mix centroids were never fitted"):
        model(batch())


def test_save_resume_round_trip_of_teacher_queue_normaliser_centroids_and_bank():
    model = tiny_model().train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for step in range(3):
        if step == 1:
            assert len(set(model.bank.labels.tolist())) == 2  # k-mix has partners of another cluster
        model.set_num_updates(step)
        opt.zero_grad()
        loss_of(model, batch(seed=step)).backward()
        opt.step()
    model.set_num_updates(3)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    fresh = SlicerModel(tiny_cfg())
    fresh.load_state_dict(state, strict=True)
    a, b = model.state_dict(), fresh.state_dict()
    for key in a:
        if key == "_extra_state":
            continue
        assert torch.equal(a[key], b[key]), key
    for key in ("queue", "queue_ptr", "ema_updates", "kmix_centroids", "kmix_ready", "norm.total", "norm.count"):
        assert key in state
    assert any(k.startswith("teacher.") for k in state)
    assert torch.equal(fresh.bank.items, model.bank.items) and torch.equal(fresh.bank.labels, model.bank.labels)
    assert not fresh.needs_kmix_centroids() and float(fresh.norm.count) > 0
    # the resumed model continues exactly: same next step under the same RNG
    for m in (model, fresh):
        m.train()
        torch.manual_seed(7)
        m.set_num_updates(3)
    torch.manual_seed(7)
    la = loss_of(model, batch(seed=9))
    torch.manual_seed(7)
    lb = loss_of(fresh, batch(seed=9))
    torch.testing.assert_close(la, lb)
    torch.testing.assert_close(model.queue, fresh.queue)


def test_extract_features_shapes_and_padding():
    model = tiny_model().eval()
    feats = model.extract_features(torch.randn(2, 16000))
    assert feats["x"].shape == (2, 101 // 8, 32) and feats["pooled"].shape == (2, 32)
    pad = torch.zeros(2, 16000, dtype=torch.bool)
    pad[1, 8000:] = True
    masked = model.extract_features(torch.randn(2, 16000), padding_mask=pad)
    assert masked["padding_mask"][1].sum() > 0 and not masked["padding_mask"][0].any()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_cast_keeps_teacher_statistics_and_queue_precise(dtype):
    model = tiny_model()
    for _ in range(2):
        model.train()(batch())  # fill the normaliser and the bank
    before = {k: v.clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}
    model = model.to(dtype) if dtype == torch.bfloat16 else model.half()  # what fairseq's trainer does
    assert model.student.instance_head.weight.dtype == dtype
    assert model.student.backbone.convs[0].bn.running_mean.dtype == dtype
    for name in ("norm.total", "norm.total_sq", "norm.count"):
        assert model.state_dict()[name].dtype == torch.float64
        assert torch.equal(model.state_dict()[name], before[name])  # no round trip through half precision
    for name in ("queue", "kmix_centroids"):
        assert model.state_dict()[name].dtype == torch.float32
    assert model.frontend.fbank.dtype == torch.float32 and model.frontend.window.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.teacher.parameters())
    teacher = [p.clone() for p in model.teacher.parameters()]
    model.set_num_updates(1)  # EMA from the half student into the float32 teacher
    m = model.cfg.ema_momentum
    for t0, t1, s in zip(teacher, model.teacher.parameters(), model.student.parameters()):
        torch.testing.assert_close(t1, m * t0 + (1 - m) * s.float(), rtol=0, atol=1e-6)
    out = model.train()(batch(seed=1))
    assert out["q1"].dtype == dtype and out["k1"].dtype == torch.float32
    crit = SlicerCriterion(None)
    loss, n, log = crit(model, {"net_input": {"source": batch(seed=2).to(dtype)}})
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.student.parameters() if p.grad is not None)
    feats = model.eval().extract_features(batch(seed=3).to(dtype))
    assert feats["x"].dtype == dtype and torch.isfinite(feats["pooled"].float()).all()


def test_dummy_batch_joins_the_step_but_adds_nothing_to_queue_bank_or_statistics():
    model = tiny_model(queue_size=16).train()
    model(batch())
    state = {k: v.clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}
    bank = model.bank.items.clone()
    task = SlicerPretrainingTask.__new__(SlicerPretrainingTask)  # train_step needs no task state
    crit = SlicerCriterion(None)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)

    class FairseqOpt:  # the two methods FairseqTask.train_step calls
        def backward(self, loss):
            loss.backward()

    loss, _, _ = task.train_step({"net_input": {"source": batch(seed=5)}}, model, crit, FairseqOpt(), 1,
                                 ignore_grad=True)
    assert float(loss.detach()) == 0.0  # fairseq's rule for the placeholder batch
    for name in ("queue", "queue_ptr", "norm.total", "norm.count", "norm.updates"):
        assert torch.equal(model.state_dict()[name], state[name]), name
    assert torch.equal(model.bank.items, bank)
    # the same batch as a real one does change them
    task.train_step({"net_input": {"source": batch(seed=5)}}, model, crit, FairseqOpt(), 1)
    assert int(model.queue_ptr) != int(state["queue_ptr"]) and not torch.equal(model.bank.items, bank)
    assert float(model.state_dict()["norm.count"]) > float(state["norm.count"])
    del opt
