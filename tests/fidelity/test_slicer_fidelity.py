"""SLICER against the authors' code (github.com/Sreyan88/LAPE): augmentation chain order, EMA stepping, central
padding of short clips, and the authors' config composed against the plugin's dataclasses."""
import os

import numpy as np
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf

from fairseq_plugins.criterions.slicer import SlicerCriterionConfig
from fairseq_plugins.data.spec_augment import fit_kmix_centroids, random_resize_crop
from fairseq_plugins.models.slicer import SlicerConfig, SlicerModel
from fairseq_plugins.tasks.slicer_pretraining import CropDataset, SlicerPretrainingConfig

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _model(**kw) -> SlicerModel:
    base = dict(n_mels=16, conv_channels=4, embed_dim=32, cluster_hidden=32, instance_dim=8, num_clusters=6,
                queue_size=10, ema_momentum=0.9, bn_groups=1, mix_bank_size=32, kmix_clusters=2, norm_updates=3)
    base.update(kw)
    torch.manual_seed(0)
    model = SlicerModel(SlicerConfig(**base))
    if model.uses_kmix():
        feats = model.frontend(_batch()).mean(dim=2).numpy()
        model.set_kmix_centroids(torch.from_numpy(fit_kmix_centroids(feats, 2, 0, model.cfg.kmix_metric)))
    return model.train()


def _batch(b: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3200, generator=g) * torch.logspace(-3, 0, b).unsqueeze(1)


def test_defaults_are_the_authors_chain_and_window():
    cfg = SlicerConfig()
    assert cfg.mix_mode == "mixup_kmix" and cfg.win_length == 1024 and cfg.n_fft == 1024
    assert cfg.hop_length == 160 and cfg.stft_pad_mode == "reflect"


def test_authors_chain_is_mixup_then_crop_then_kmix():
    model = _model()
    x = torch.randn(4, 16, 21)
    labels = torch.tensor([0, 1, 0, 1])
    model.bank.push(torch.randn(5, 16, 21))
    model.kmix_bank.push(torch.randn(6, 16, 21), torch.tensor([0, 1, 0, 1, 0, 1]))
    torch.manual_seed(3)
    view, kmix_input = model.augment(x, labels)
    # reference: the same three steps in the authors' order, from the same random state
    torch.manual_seed(3)
    ref_in = random_resize_crop(model.bank.mix(x, 0.4))
    ref = model.kmix_bank.mix(ref_in, 0.4, labels, model.kmix_centroids, "farthest")
    assert torch.equal(kmix_input, ref_in) and torch.equal(view, ref)
    # the former order (k-mix on the input, then the crop) is something else
    torch.manual_seed(3)
    former = random_resize_crop(model.kmix_bank.mix(x, 0.4, labels, model.kmix_centroids, "farthest"))
    assert not torch.allclose(view, former)


def test_no_kmix_ablation_removes_only_kmix():
    """With k-mix's bank still empty (k-mix is then the identity) the full chain and the ``mixup`` ablation
    give the same views from the same state: the ablation is the chain minus k-mix."""
    full, ablated = _model(), _model(mix_mode="mixup")
    src = _batch()
    past = torch.randn(5, 16, src.size(1) // 160 + 1)
    for m in (full, ablated):
        m.bank.push(past)
    torch.manual_seed(5)
    v_full = full.make_views(src)
    torch.manual_seed(5)
    v_abl = ablated.make_views(src)
    assert all(torch.equal(a, b) for a, b in zip(v_full, v_abl))
    # both banks filled as in the authors' code: the mixup bank holds the inputs, k-mix's the cropped views
    assert len(full.bank) == 5 + src.size(0) and len(full.kmix_bank) == 2 * src.size(0)
    assert len(ablated.kmix_bank) == 0
    torch.manual_seed(5)
    again = full.make_views(src)  # k-mix's bank is no longer empty: now k-mix changes the views
    torch.manual_seed(5)
    assert not torch.equal(again[0], ablated.make_views(src)[0])


def test_kmix_bank_travels_in_the_state_dict():
    model = _model()
    model.make_views(_batch())
    state = model.state_dict()
    other = _model()
    other.load_state_dict(state)
    assert torch.equal(other.kmix_bank.items, model.kmix_bank.items)
    assert torch.equal(other.kmix_bank.labels, model.kmix_bank.labels)


def test_per_view_ema_steps_before_each_teacher_pass():
    m = 0.9
    per_view, per_update = _model(ema_stepping="per_view"), _model()
    with torch.no_grad():
        for p in per_view.student.parameters():
            p.add_(0.5)
    t0 = [p.clone() for p in per_view.teacher.parameters()]
    s = [p.clone() for p in per_view.student.parameters()]
    per_view.set_num_updates(1)  # does not step in per_view
    assert all(torch.equal(a, b) for a, b in zip(per_view.teacher.parameters(), t0))
    per_view(_batch())
    for t, a, b in zip(per_view.teacher.parameters(), t0, s):
        torch.testing.assert_close(t, m * (m * a + (1 - m) * b) + (1 - m) * b)
    u0 = [p.clone() for p in per_update.teacher.parameters()]
    per_update(_batch())  # per_update: the forward itself never steps
    assert all(torch.equal(a, b) for a, b in zip(per_update.teacher.parameters(), u0))
    with pytest.raises(ValueError, match="ema_stepping"):
        _model(ema_stepping="twice")


@pytest.mark.parametrize("mode,left", [("center", 1600), ("end", 0)])
def test_short_clips_are_padded_centrally(tmp_path, mode, left):
    sf.write(tmp_path / "a.wav", np.full(12000, 0.5, dtype=np.float32), 16000, subtype="FLOAT")
    (tmp_path / "train.tsv").write_text(f"{tmp_path}\na.wav\t12000\n")
    ds = CropDataset([str(tmp_path / "train.tsv")], 15200, 16000, seed=1, random_crop=True)
    ds.short_clip_padding = mode
    wav = ds.load(0, 1).numpy()
    assert wav.shape == (15200,)
    nz = np.flatnonzero(wav)
    assert nz[0] == left and nz[-1] == left + 12000 - 1


def _compose(name: str):
    cfg = OmegaConf.load(os.path.join(REPO, "examples", "slicer", "config", name))
    out = {}
    for group, dc in (("model", SlicerConfig), ("criterion", SlicerCriterionConfig),
                      ("task", SlicerPretrainingConfig)):
        section = OmegaConf.to_container(cfg[group])
        section.pop("_name")
        out[group] = OmegaConf.merge(OmegaConf.structured(dc), section)  # a misspelt field raises here
    return cfg, out


def test_authors_config_is_faithful():
    cfg, c = _compose("slicer_authors.yaml")
    model, crit, task = c["model"], c["criterion"], c["task"]
    assert (model.n_fft, model.win_length, model.hop_length, model.f_min, model.f_max) == (1024, 1024, 160, 60.0,
                                                                                           7800.0)
    assert model.mix_mode == "mixup_kmix" and model.bn_groups == 1 and model.ema_stepping == "per_view"
    assert crit.entropy_weight == 0.0 and task.short_clip_padding == "center"
    assert cfg.dataset.batch_size * cfg.distributed_training.distributed_world_size == 512
    assert cfg.dataset.batch_size == 128


def test_tiny_config_composes():
    _, c = _compose("slicer_tiny.yaml")
    assert c["model"].mix_mode == "mixup_kmix"
