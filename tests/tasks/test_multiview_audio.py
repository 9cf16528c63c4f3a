"""Tests for the multiview_audio_pretraining task and MultiviewAudioDataset: layout, seeding (also across
persistent data-loader workers and epochs), aligned views, side labels, clean targets, batching by size."""
import numpy as np
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf

from fairseq_plugins.data.manifest_io import write_lines, write_manifest
from fairseq_plugins.tasks.multiview_audio_pretraining import (
    MultiviewAudioPretrainingConfig,
    MultiviewAudioPretrainingTask,
)

SR = 16000
LENGTHS = [12000, 20000, 16000, 4000, 24000]  # the 4000-sample file is below min_sample_size


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Five float WAVs whose samples encode their position (a ramp), a speaker side file and a word file."""
    d = tmp_path_factory.mktemp("mv")
    rows = []
    for i, n in enumerate(LENGTHS):
        x = (np.arange(n) / 2 ** 15 + i).astype(np.float32) / 8  # strictly increasing, distinct per file
        sf.write(d / f"u{i}.wav", x, SR, subtype="FLOAT")
        rows.append((f"u{i}.wav", n))
    for split in ("train", "valid"):
        write_manifest(str(d / f"{split}.tsv"), str(d), rows)
        write_lines(str(d / f"{split}.spk"), [f"spk{i % 2}" for i in range(len(rows))])
    return str(d)


def make_task(data, **overrides):
    cfg = dict(data=data, seed=3, tpu=False, train_subset="train", min_sample_size=8000,
               max_sample_size=10000, augmentations=["gain(db=-6:6)"])
    cfg.update(overrides)
    cfg = OmegaConf.structured(MultiviewAudioPretrainingConfig(**cfg))
    return MultiviewAudioPretrainingTask.setup_task(cfg)


def load(data, split="train", **overrides):
    task = make_task(data, **overrides)
    task.load_dataset(split)
    return task.dataset(split)


def test_batch_layout_and_metadata(corpus):
    ds = load(corpus, augmentations=["gain(db=-6:6)", "speed(factor=0.8|1.25)"], side_labels=["spk"])
    assert len(ds) == 4  # the short file is skipped
    batch = ds.collater([ds[i] for i in range(3)])
    V, B = 2, 3
    src, pad = batch["net_input"]["source"], batch["net_input"]["padding_mask"]
    assert src.shape[0] == V * B and pad.shape == src.shape and not pad.any()
    assert src.shape[1] == int(batch["views"]["lengths"].min())  # cropped to the shortest view
    assert batch["id"].tolist() == [0, 1, 2]
    views = batch["views"]
    assert (views["num_views"], views["batch_size"], views["aligned"], views["layout"]) == (2, 3, False,
                                                                                             "view_major")
    assert views["lengths"].shape == (V, B) and len(views["augmentations"]) == V
    assert batch["side_labels"] == {"spk": ["spk0", "spk1", "spk0"]}
    # every row is a gain-scaled, resampled piece of a ramp (edges skipped: resampling rings at a cut ramp)
    for row in src.numpy():
        assert np.all(np.diff(row[300:-300]) > 0), "not a piece of a ramp"
    # row v*B + b is view v of utterance b: without augmentation it is a crop of file b (values i/8 + ramp)
    plain = load(corpus, augmentations=[])
    src = plain.collater([plain[i] for i in range(3)])["net_input"]["source"].view(V, B, -1)
    assert torch.equal(torch.floor(src * 8), torch.arange(B).float().view(1, B, 1).expand_as(src))


def test_same_seed_same_views_new_epoch_new_views(corpus):
    a, b = load(corpus), load(corpus)
    for i in range(len(a)):
        for x, y in zip(a[i]["views"], b[i]["views"]):
            assert torch.equal(x, y)
    before = a[0]["views"][0].clone()
    a.set_epoch(2)
    assert not torch.equal(a[0]["views"][0], before)
    b.set_epoch(2)
    assert torch.equal(a[0]["views"][0], b[0]["views"][0])
    other_seed = load(corpus, seed=4)
    assert not torch.equal(other_seed[0]["views"][0], before)
    valid = load(corpus, split="valid")  # non-training splits keep their views across epochs
    first = valid[0]["views"][0].clone()
    valid.set_epoch(5)
    assert torch.equal(valid[0]["views"][0], first)


def test_epoch_reaches_persistent_workers(corpus):
    """fairseq keeps data-loader workers alive across epochs; the views must still follow set_epoch."""
    ds = load(corpus)
    expected = {}
    for epoch in (1, 2):
        ds.set_epoch(epoch)
        expected[epoch] = [ds[i]["views"][1] for i in range(len(ds))]
    ds.set_epoch(1)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=1, persistent_workers=True,
                                         collate_fn=lambda s: s)
    for epoch in (1, 2):
        ds.set_epoch(epoch)
        got = [item["views"][1] for item in loader]
        assert all(torch.equal(g, e) for g, e in zip(got, expected[epoch])), f"epoch {epoch}"


def test_aligned_views_share_one_crop(corpus):
    ds = load(corpus, aligned_views=True, augmentations=["gain(db=-6:6)", "timedrop(count=0)"])
    for i in range(len(ds)):
        v0, v1 = ds[i]["views"]
        assert len(v0) == len(v1) == min(ds.sizes[i], 10000)
        ratio = v1 / v0
        assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-4), "views are not the same crop"
    batch = ds.collater([ds[i] for i in range(len(ds))])
    src = batch["net_input"]["source"].view(2, len(ds), -1)
    r = src[1] / src[0]
    assert torch.allclose(r, r[:, :1].expand_as(r), rtol=1e-4)  # the collater crops views identically


def test_non_aligned_views_get_their_own_crops(corpus):
    ds = load(corpus, augmentations=[])
    item = ds[3]  # 24000 samples > max_sample_size: random crops
    assert not torch.equal(item["views"][0], item["views"][1])


def test_shared_crop_views_share_the_crops_samples_and_allow_timing_changes(corpus):
    """task.shared_crop: every view comes from one crop (before augmentation the views are the same samples);
    unlike aligned_views it accepts timing-changing augmentations; independent crops (the default) differ."""
    assert MultiviewAudioPretrainingConfig.shared_crop is False  # the default stays independent crops
    plain = load(corpus, shared_crop=True, augmentations=[])
    independent = load(corpus, augmentations=[])
    item = plain[3]  # 24000 samples > max_sample_size: a random crop
    assert torch.equal(item["views"][0], item["views"][1]) and len(item["views"][0]) == 10000
    assert not torch.equal(independent[3]["views"][0], independent[3]["views"][1])
    gain = load(corpus, shared_crop=True, augmentations=["gain(db=-6:6)"], max_sample_size=100000)
    batch = gain.collater([gain[i] for i in range(len(gain))])  # the collater crops all to 12000 samples
    assert batch["views"]["shared_crop"] and not batch["views"]["aligned"]
    src = batch["net_input"]["source"].view(2, len(gain), -1)
    r = src[1, :, 1:] / src[0, :, 1:]  # (file 0 starts at 0)
    assert torch.allclose(r, r[:, :1].expand_as(r), rtol=1e-4)  # one crop, two gains, cropped alike
    assert not torch.allclose(r[:, 0], torch.ones(len(gain)))  # the two views were augmented independently
    # timing-changing augmentations are allowed; the views stay pieces of the same crop (the files are ramps)
    speed = load(corpus, shared_crop=True, augmentations=["speed(factor=0.8|1.25)"], unaugmented_views=[0])
    for i in range(len(speed)):
        v0, v1 = speed[i]["views"]
        assert v1[300:-300].min() >= v0.min() - 1e-3 and v1[300:-300].max() <= v0.max() + 1e-3
        assert abs(float(v1.median() - v0.median())) < 0.05 * float(v0.max() - v0.min())
    assert load(corpus, aligned_views=True, augmentations=[]).shared_crop  # aligned implies one crop


def test_aligned_views_reject_timing_changes(corpus):
    with pytest.raises(ValueError, match=r"aligned_views=true needs alignment-keeping augmentations, but "
                                         r"\['speed', 'crop'\] change timing or length"):
        make_task(corpus, aligned_views=True, augmentations=["noise", "speed", "crop"])
    with pytest.raises(ValueError, match="clean_target=true needs aligned_views=true"):
        load(corpus, clean_target=True)
    with pytest.raises(ValueError, match="does not support labels"):
        make_task(corpus, labels="ltr")


def test_clean_target_and_unaugmented_views(corpus):
    ds = load(corpus, aligned_views=True, clean_target=True, unaugmented_views=[0],
              augmentations=["gain(db=3)"])
    batch = ds.collater([ds[i] for i in range(len(ds))])
    B = len(ds)
    src = batch["net_input"]["source"].view(2, B, -1)
    clean = batch["net_input"]["target_source"].view(2, B, -1)
    assert torch.equal(src[0], clean[0]) and torch.equal(clean[0], clean[1])  # view 0 is not augmented
    assert torch.allclose(src[1], clean[1] * 10 ** (3 / 20), rtol=1e-5)
    assert batch["views"]["augmentations"][0] == [[]] * B
    assert batch["views"]["augmentations"][1] == [["gain"]] * B


def test_padding_mode(corpus):
    ds = load(corpus, enable_padding=True, max_sample_size=100000, augmentations=[])
    batch = ds.collater([ds[0], ds[1]])
    pad = batch["net_input"]["padding_mask"]
    assert pad.shape == (4, 20000)
    assert pad[0].sum() == 8000 and not pad[1].any()  # 12000 vs 20000 samples
    assert batch["views"]["lengths"].tolist() == [[12000, 20000], [12000, 20000]]


def test_side_labels_skip_like_the_manifest(corpus):
    ds = load(corpus, side_labels=["spk"], min_sample_size=13000)  # skips files 0 (12000) and 3 (4000)
    assert [ds[i]["side_labels"]["spk"] for i in range(len(ds))] == ["spk1", "spk0", "spk0"]
    with pytest.raises(FileNotFoundError, match="side labels 'wrd'"):
        load(corpus, side_labels=["wrd"])


def test_batches_count_every_view(corpus):
    task = make_task(corpus, num_views=3)
    task.load_dataset("train")
    ds = task.dataset("train")
    assert ds.num_tokens(1) == 3 * 10000
    assert ds.num_tokens_vec(np.arange(len(ds))).tolist() == [3 * min(s, 10000) for s in ds.sizes]
    itr = task.get_batch_iterator(ds, max_tokens=60000, required_batch_size_multiple=1)
    batches = list(itr.next_epoch_itr(shuffle=False))
    assert all(b["views"]["batch_size"] <= 2 for b in batches)
    assert sum(b["views"]["batch_size"] for b in batches) == len(ds)
    assert all(b["net_input"]["source"].shape[0] == 3 * b["views"]["batch_size"] for b in batches)
