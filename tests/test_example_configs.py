"""Every example YAML under examples/ is composed and validated the way ``fairseq-hydra-train`` does it, and the
task, model and criterion it names are built from it.

Composition (:func:`compose_example`): Hydra composes the YAML against fairseq's ``FairseqConfig`` schema
(fairseq's ``hydra_init`` stores it under the YAML's name, so ``common``, ``checkpoint``, ``dataset``,
``optimization``, ... are dataclasses and a misspelt key there fails), then fairseq's ``add_defaults`` merges
``task``, ``model``, ``criterion``, ``optimizer`` and ``lr_scheduler`` onto their registered dataclasses
(``merge_with_parent``, struct mode: a misspelt key fails) and the whole config is resolved (a broken
interpolation fails). ``add_defaults`` silently skips a ``_name`` it does not know, so every ``_name`` must be
registered once the plugin is imported. test_misspelt_fields_fail shows each of these failing.

Building: the task, model and criterion are built from the composed config with the YAML's own values except
the paths (the session's mini corpus and tiny HuBERT checkpoint, which make these tests slow) and, for
pre-training models, a tiny size override. Fine-tuning configs take their size from the checkpoint; the WavLM
LASER / SCORE configs are built on the tiny HuBERT (their fields do not depend on the backbone kind).
"""
import argparse
import glob
import os
import shutil
import warnings
from typing import Any, Dict, Optional, Sequence

import pytest
from fairseq.models import MODEL_DATACLASS_REGISTRY, MODEL_REGISTRY
from fairseq.registry import REGISTRIES
from fairseq.tasks import TASK_DATACLASS_REGISTRY, TASK_REGISTRY
from omegaconf import DictConfig, OmegaConf, open_dict

import fairseq_plugins  # noqa: F401  (registers the plugin's names)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
YAMLS = sorted(glob.glob(os.path.join(REPO, "examples", "**", "*.yaml"), recursive=True))
IDS = [os.path.relpath(p, os.path.join(REPO, "examples")) for p in YAMLS]
GROUPS = ("task", "model", "criterion", "optimizer", "lr_scheduler")

# tiny sizes for the pre-training models, on top of conftest's shared TINY_ENCODER / TINY_SIMSIAM_RECON
TINY_SLICER = dict(conv_channels=8, embed_dim=32, instance_dim=16, num_clusters=8, cluster_hidden=32, queue_size=64,
                   mix_bank_size=16)
TINY_MGF = dict(frame_layer=1, utt_proj_hidden_dim=64)  # frame_layer within the tiny encoder's 2 layers


def _dataclass_registry(group):
    if group == "task":
        return TASK_DATACLASS_REGISTRY
    if group == "model":
        return MODEL_DATACLASS_REGISTRY
    return REGISTRIES[group]["dataclass_registry"]


def _registry(group):
    if group == "task":
        return TASK_REGISTRY
    if group == "model":
        return MODEL_REGISTRY
    return REGISTRIES[group]["registry"]


def _legacy_keys(group, cls):
    """The options a legacy (argparse, no dataclass) fairseq component reads: its add_args destinations."""
    parser = argparse.ArgumentParser(add_help=False)
    cls.add_args(parser)
    keys = {a.dest for a in parser._actions}
    return keys | {"lr"} if group == "optimizer" else keys  # legacy optimizers read lr from their own section


def _chain(err: BaseException) -> str:
    parts = []
    while err is not None:
        parts.append(f"{type(err).__name__}: {err}")
        err = err.__cause__ or err.__context__
    return " <- ".join(parts)


def compose_example(path: str, overrides: Optional[Dict[str, Any]] = None,
                    cli_overrides: Sequence[str] = ()) -> DictConfig:
    """The config ``fairseq-hydra-train --config-dir DIR --config-name NAME`` would run with, validated.

    ``cli_overrides`` are command-line override strings, applied by Hydra's own parser as the command line
    applies them (so ``model.x=1`` for a key the YAML lacks fails as it does there, and ``++model.x=1`` works).
    ``overrides`` (dotted key -> value) are then set on the composed config; mandatory values (``???``) still
    missing after them get a placeholder so that the config resolves.
    Raises AssertionError naming the file and, through the exception chain, the offending key.
    """
    from fairseq.dataclass.initialize import add_defaults, hydra_init
    from hydra import compose, initialize_config_dir

    config_dir, name = os.path.dirname(path), os.path.basename(path)[: -len(".yaml")]
    try:
        hydra_init(name)
        with warnings.catch_warnings():  # Hydra's deprecation note on schema matching, which fairseq relies on
            warnings.simplefilter("ignore", UserWarning)
            with initialize_config_dir(config_dir=config_dir, job_name="example_configs"):
                cfg = compose(config_name=name, overrides=list(cli_overrides))
        for group in GROUPS:
            node = cfg.get(group)
            assert node is not None and node.get("_name"), f"{group}._name is missing"
            assert node._name in _registry(group), f"{group}._name={node._name!r} is not registered"
            if node._name not in _dataclass_registry(group):  # legacy component: fairseq validates nothing
                allowed = _legacy_keys(group, _registry(group)[node._name])
                unknown = sorted(set(node) - allowed - {"_name"})
                assert not unknown, f"{group} ({node._name}) has no option(s) {unknown}; it reads {sorted(allowed)}"
        with open_dict(cfg):
            for key, value in (overrides or {}).items():
                OmegaConf.update(cfg, key, value, merge=False)
            for key in OmegaConf.missing_keys(cfg):
                OmegaConf.update(cfg, key, f"<{key}>", merge=False)
        add_defaults(cfg)  # merge_with_parent of every group onto its dataclass: unknown keys raise here
        cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    except Exception as err:
        raise AssertionError(f"{path}: {_chain(err)}") from err
    OmegaConf.set_struct(cfg, True)
    return cfg


def test_there_are_example_configs():
    assert len(YAMLS) >= 12, YAMLS


@pytest.mark.parametrize("path", YAMLS, ids=IDS)
def test_example_composes_against_the_dataclasses(path):
    cfg = compose_example(path)
    for group in GROUPS:
        dc = _dataclass_registry(group).get(cfg[group]._name)
        if dc is None:  # legacy component, checked against its add_args in compose_example
            continue
        # every key of the YAML section is a field of the dataclass (merge_with_parent enforced it)
        raw = OmegaConf.load(path).get(group, {})
        unknown = sorted(set(raw) - set(dc.__dataclass_fields__) - {"_name"})
        assert not unknown, f"{path}: {group} keys {unknown} are not fields of {dc.__name__}"


def _misspell(tmp_path, src, old, new):
    text = open(src).read()
    assert text.count(old) == 1, (src, old)
    dst = tmp_path / os.path.basename(src)
    dst.write_text(text.replace(old, new))
    return str(dst)


LASER_WAVLM = "laser/config/laser_wavlm_base.yaml"
SLICER_TINY = "slicer/config/slicer_tiny.yaml"


@pytest.mark.parametrize("example,old,new,message", [
    (LASER_WAVLM, "  projection_dim: 256\n", "  projection_dimm: 256\n", "projection_dimm"),  # model (plugin)
    (LASER_WAVLM, "  alpha: 0.15\n", "  alhpa: 0.15\n", "alhpa"),  # criterion
    (LASER_WAVLM, "  pitch_semitones:", "  pitch_semitone:", "pitch_semitone"),  # task
    (LASER_WAVLM, "  max_update: 3600\n", "  max_updates: 3600\n", "max_updates"),  # optimization (FairseqConfig)
    (LASER_WAVLM, "  warmup_updates: 1000\n", "  warmup_update: 1000\n", "warmup_update"),  # lr_scheduler
    (LASER_WAVLM, "  _name: soft_dtw\n", "  _name: soft_dwt\n", "criterion._name='soft_dwt' is not registered"),
    (SLICER_TINY, "  momentum: 0.9\n", "  momentun: 0.9\n", "optimizer (sgd) has no option(s) ['momentun']"),
    (SLICER_TINY, "  embed_dim: 256\n", "  embed_dims: 256\n", "embed_dims"),  # model (plugin)
], ids=["model", "criterion", "task", "optimization", "lr_scheduler", "name", "legacy-optimizer", "slicer-model"])
def test_misspelt_fields_fail(tmp_path, example, old, new, message):
    src = os.path.join(REPO, "examples", example)
    compose_example(src)  # the real file is fine
    with pytest.raises(AssertionError) as err:
        compose_example(_misspell(tmp_path, src, old, new))
    assert message in str(err.value), str(err.value)


# ------------------------------------------------------------------------------------------------------------
# building what each YAML names
# ------------------------------------------------------------------------------------------------------------
def _ctc_data(mini_corpus, tmp_path):
    """The mini corpus manifest plus the letter dictionary fairseq's audio_finetuning task reads."""
    src = os.path.join(mini_corpus, "manifest")
    if os.path.isfile(os.path.join(src, "dict.ltr.txt")):
        return src
    dst = tmp_path / "ctc_data"
    shutil.copytree(src, dst)
    counts = {}
    for split in ("train", "valid"):
        for line in open(dst / f"{split}.ltr"):
            for sym in line.split():
                counts[sym] = counts.get(sym, 0) + 1
    (dst / "dict.ltr.txt").write_text("".join(f"{s} {c}\n" for s, c in sorted(counts.items(), key=lambda x: -x[1])))
    return str(dst)


@pytest.mark.slow
@pytest.mark.parametrize("path", YAMLS, ids=IDS)
def test_example_builds_its_task_model_and_criterion(path, mini_corpus, tiny_hubert, tiny, tmp_path):
    from fairseq import tasks

    cfg = compose_example(path)
    manifest = os.path.join(mini_corpus, "manifest")
    with open_dict(cfg):
        cfg.task.data = _ctc_data(mini_corpus, tmp_path) if cfg.task._name == "audio_finetuning" else manifest
        if "label_dir" in cfg.task:
            cfg.task.label_dir = manifest
        for key in ("checkpoint", "w2v_path"):  # fine-tuning: the size comes from the checkpoint
            if key in cfg.model:
                cfg.model[key] = tiny_hubert["ckpt"]
        if not any(key in cfg.model for key in ("checkpoint", "w2v_path")):  # pre-training: tiny sizes
            for key, value in {**tiny.encoder, **tiny.simsiam_recon, **TINY_SLICER, **TINY_MGF}.items():
                if key in cfg.model:
                    cfg.model[key] = value
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    assert criterion is not None
    # tiny for real: the paper-size configs would build 90M+ parameters
    assert 0 < sum(p.numel() for p in model.parameters()) < 2_000_000, type(model).__name__
