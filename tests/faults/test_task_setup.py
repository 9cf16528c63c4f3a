"""Issue 16 item 6 and issue 10 item 5: the plugin's tasks check their paths at setup (absolute and existing;
Hydra has changed the working directory by then), warn about a relative checkpoint.save_dir, skip the checks
when fairseq rebuilds a task from a checkpoint, and decide "training split" from dataset.train_subset (a manifest
called train_960 gets random crops and fresh views)."""
import logging

import pytest
from omegaconf import OmegaConf


def _multiview(data, **kw):
    from fairseq_plugins.tasks.multiview_audio_pretraining import (
        MultiviewAudioPretrainingConfig,
        MultiviewAudioPretrainingTask,
    )

    kw = {"tpu": False, "seed": 1, "augmentations": ["gain(db=-6:6)"], **kw}
    return MultiviewAudioPretrainingTask, OmegaConf.structured(MultiviewAudioPretrainingConfig(data=data, **kw))


def _slicer(data, **kw):
    from fairseq_plugins.tasks.slicer_pretraining import SlicerPretrainingConfig, SlicerPretrainingTask

    return SlicerPretrainingTask, OmegaConf.structured(SlicerPretrainingConfig(data=data, **kw))


def _laser(data, **kw):
    from fairseq_plugins.tasks.laser_finetune import LaserFinetuneConfig, LaserFinetuneTask

    return LaserFinetuneTask, OmegaConf.structured(LaserFinetuneConfig(data=data, **kw))


TASKS = {"multiview": _multiview, "slicer": _slicer, "laser": _laser}


@pytest.mark.parametrize("name", TASKS)
def test_relative_data_is_refused_at_setup(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "manifest").mkdir()
    cls, cfg = TASKS[name]("manifest")
    with pytest.raises(ValueError, match=r"task.data=manifest is a relative path: fairseq-hydra-train changes the "
                                         r"working directory"):
        cls.setup_task(cfg)


@pytest.mark.parametrize("name", TASKS)
def test_missing_data_is_refused_at_setup(name, tmp_path):
    missing = str(tmp_path / "nowhere")
    cls, cfg = TASKS[name](missing)
    with pytest.raises(FileNotFoundError, match=f"task.data={missing}: no such directory"):
        cls.setup_task(cfg)


@pytest.mark.parametrize("name", TASKS)
def test_checks_are_skipped_when_rebuilt_from_a_checkpoint(name, tmp_path):
    cls, cfg = TASKS[name](str(tmp_path / "trained_elsewhere"))
    assert isinstance(cls.setup_task(cfg, from_checkpoint=True), cls)


@pytest.mark.parametrize("name", TASKS)
def test_relative_save_dir_is_warned_about(name, tmp_path, caplog):
    cls, cfg = TASKS[name](str(tmp_path), checkpoint_save_dir="ckpt")
    with caplog.at_level(logging.WARNING, logger="fairseq_plugins.tasks.base"):
        cls.setup_task(cfg)
    assert any("checkpoint.save_dir=ckpt is relative" in r.getMessage() for r in caplog.records)
    caplog.clear()
    cls, cfg = TASKS[name](str(tmp_path), checkpoint_save_dir=str(tmp_path / "ckpt"))
    with caplog.at_level(logging.WARNING, logger="fairseq_plugins.tasks.base"):
        cls.setup_task(cfg)
    assert not any("is relative" in r.getMessage() for r in caplog.records)


def test_slicer_extra_data_and_multiview_noise_manifest_are_checked(tmp_path):
    cls, cfg = _slicer(str(tmp_path), extra_data=["clips"])
    with pytest.raises(ValueError, match="task.extra_data=clips is a relative path"):
        cls.setup_task(cfg)
    cls, cfg = _multiview(str(tmp_path), noise_manifest=str(tmp_path / "noise.tsv"))
    with pytest.raises(FileNotFoundError, match=f"task.noise_manifest={tmp_path / 'noise.tsv'}: no such file"):
        cls.setup_task(cfg)


def test_laser_backbone_checkpoint_path_is_checked_before_reading(tmp_path, monkeypatch):
    from fairseq_plugins.models.laser_finetune import LaserFinetuneModelConfig

    cls, cfg = _laser(str(tmp_path))
    task = cls.setup_task(cfg)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hubert.pt").write_bytes(b"")
    model_cfg = OmegaConf.structured(LaserFinetuneModelConfig(checkpoint="hubert.pt"))
    model_cfg._name = "laser_finetune"
    with pytest.raises(ValueError, match="model.checkpoint=hubert.pt is a relative path"):
        task.build_model(model_cfg)
    model_cfg.checkpoint = str(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match=f"model.checkpoint={tmp_path / 'missing.pt'}: no such file"):
        task.build_model(model_cfg)


def test_train_960_is_a_training_split_for_slicer(tmp_path, bad_split):
    bad_split(str(tmp_path), "train_960", num_good=4)
    bad_split(str(tmp_path), "train", num_good=4)
    cls, cfg = _slicer(str(tmp_path), train_subset="train_960")
    task = cls.setup_task(cfg)
    assert task.is_train_split("train_960") and not task.is_train_split("train")
    for split in ("train_960", "train"):
        task.load_dataset(split)
    assert task.dataset("train_960").random_crop and not task.dataset("train").random_crop
    assert task.train_splits() == ["train_960"]


def test_train_960_is_a_training_split_for_multiview(tmp_path, bad_split):
    bad_split(str(tmp_path), "train_960", num_good=4)
    bad_split(str(tmp_path), "valid", num_good=4)
    cls, cfg = _multiview(str(tmp_path), train_subset="train_960,train_other")
    task = cls.setup_task(cfg)
    assert task.train_splits() == ["train_960", "train_other"]
    task.load_dataset("train_960")
    task.load_dataset("valid")
    assert task.dataset("train_960").fixed_epoch is None  # new views every epoch
    assert task.dataset("valid").fixed_epoch == 1


@pytest.mark.parametrize("name", ("multiview", "slicer"))
def test_unresolved_train_subset_is_an_error_not_a_guess(name, tmp_path):
    cls, cfg = TASKS[name](str(tmp_path))
    task = cls.setup_task(cfg)
    with pytest.raises(ValueError, match="task.train_subset is unresolved"):
        task.is_train_split("train")
