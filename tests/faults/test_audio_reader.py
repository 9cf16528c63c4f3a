"""Issue 16 items 1-3: every task and the evaluation read audio through one checked reader, and every bad file
(NaN, Inf, 0 samples, 8 kHz, stereo, wrong manifest count, truncated WAV) stops with the manifest, its line,
the path and what was expected vs found; stereo downmix is an opt-in config field that logs when it acts."""
import logging
import os

import numpy as np
import pytest
from omegaconf import OmegaConf

from fairseq_plugins.data.audio import AudioError, read_audio

KINDS = ("nan", "inf", "empty", "8khz", "stereo", "wrong_count", "truncated")


def assert_names(err: Exception, manifest: str, line: int, path: str, expect: str) -> None:
    msg = str(err)
    assert f"{manifest}:{line}: " in msg, msg
    assert path in msg and expect in msg, msg


def first_error(dataset, n: int) -> Exception:
    for i in range(n):
        try:
            dataset[i]
        except AudioError as e:
            return e
    raise AssertionError("no AudioError raised")


@pytest.mark.parametrize("kind", KINDS)
def test_multiview_task_names_the_bad_file(tmp_path, bad_split, kind):
    from fairseq_plugins.tasks.multiview_audio_pretraining import (
        MultiviewAudioPretrainingConfig,
        MultiviewAudioPretrainingTask,
    )

    path, line, expect = bad_split(str(tmp_path), "train", bad=kind)
    cfg = OmegaConf.structured(MultiviewAudioPretrainingConfig(
        data=str(tmp_path), tpu=False, seed=1, train_subset="train", augmentations=["gain(db=-6:6)"]))
    task = MultiviewAudioPretrainingTask.setup_task(cfg)
    task.load_dataset("train")
    ds = task.dataset("train")
    assert_names(first_error(ds, len(ds)), str(tmp_path / "train.tsv"), line, path, expect)


@pytest.mark.parametrize("kind", KINDS)
def test_laser_pairs_name_the_bad_file(tmp_path, bad_split, kind):
    from fairseq_plugins.data.laser_pairs import LaserPairDataset

    path, line, expect = bad_split(str(tmp_path), "train", bad=kind)
    ds = LaserPairDataset(str(tmp_path / "train.tsv"), 16000, [0.9, 1.0, 1.1], [-2.0, 2.0], min_sample_size=400,
                          max_sample_size=16000 * 5)
    assert_names(first_error(ds, len(ds)), str(tmp_path / "train.tsv"), line, path, expect)


@pytest.mark.parametrize("kind", KINDS)
def test_slicer_crops_name_the_bad_file(tmp_path, bad_split, kind):
    from fairseq_plugins.tasks.slicer_pretraining import SlicerPretrainingConfig, SlicerPretrainingTask

    path, line, expect = bad_split(str(tmp_path), "train", bad=kind)
    task = SlicerPretrainingTask.setup_task(OmegaConf.structured(SlicerPretrainingConfig(
        data=str(tmp_path), train_subset="train")))
    task.load_dataset("train")
    ds = task.dataset("train")
    assert_names(first_error(ds, len(ds)), str(tmp_path / "train.tsv"), line, path, expect)


@pytest.mark.parametrize("kind", KINDS)
def test_evaluation_split_names_the_bad_file(tmp_path, bad_split, kind):
    from fairseq_plugins.evaluate.data import Split

    path, line, expect = bad_split(str(tmp_path), "train", bad=kind)
    split = Split(str(tmp_path), "train")
    with pytest.raises(AudioError) as e:
        for i in range(len(split)):
            split.read(i)
    assert_names(e.value, str(tmp_path / "train.tsv"), line, path, expect)


@pytest.mark.parametrize("kind", ("nan", "stereo", "truncated"))
def test_noise_manifest_of_the_augmentation_names_the_bad_file(tmp_path, bad_split, kind):
    from fairseq_plugins.data.augment import AugmentationChain

    path, line, expect = bad_split(str(tmp_path), "noise", num_good=0, bad=kind, bad_index=0)
    chain = AugmentationChain.from_specs(["noise(snr=10)"], 16000, noise_manifest=str(tmp_path / "noise.tsv"))
    with pytest.raises(AudioError) as e:
        chain(np.zeros(8000, np.float32) + 0.1, np.random.default_rng(0))
    assert_names(e.value, str(tmp_path / "noise.tsv"), line, path, expect)


def test_hubert_labels_name_the_nan_file(tmp_path, bad_split):
    from manifests.hubert_labels import make_kmeans_labels

    path, line, expect = bad_split(str(tmp_path), "train", bad="nan")
    with pytest.raises(AudioError) as e:
        make_kmeans_labels(str(tmp_path), splits=("train",), n_clusters=2)
    assert_names(e.value, str(tmp_path / "train.tsv"), line, path, expect)


def test_stereo_downmix_is_opt_in_and_logged(tmp_path, bad_split, caplog):
    from fairseq_plugins.tasks.multiview_audio_pretraining import (
        MultiviewAudioPretrainingConfig,
        MultiviewAudioPretrainingTask,
    )

    path, line, _ = bad_split(str(tmp_path), "train", bad="stereo")
    cfg = OmegaConf.structured(MultiviewAudioPretrainingConfig(
        data=str(tmp_path), tpu=False, seed=1, train_subset="train", augmentations=[], downmix_stereo=True))
    task = MultiviewAudioPretrainingTask.setup_task(cfg)
    task.load_dataset("train")
    with caplog.at_level(logging.WARNING, logger="fairseq_plugins.data.audio"):
        item = task.dataset("train")[line - 2]
    assert item["views"][0].shape == (16000,)
    assert any("2 channels averaged to mono" in r.getMessage() and path in r.getMessage() for r in caplog.records)


def test_good_files_read_unchanged(tmp_path, bad_split):
    import soundfile as sf

    bad_split(str(tmp_path), "train", num_good=2)
    x = read_audio(str(tmp_path / "train_1.wav"), 16000, expected_samples=16000)
    y, _ = sf.read(str(tmp_path / "train_1.wav"), dtype="float32")
    assert x.dtype == np.float32 and np.array_equal(x, y)
    seg = read_audio(str(tmp_path / "train_1.wav"), 16000, expected_samples=16000, start=100, frames=50)
    assert np.array_equal(seg, y[100:150])
    assert os.path.isfile(str(tmp_path / "train.tsv"))
