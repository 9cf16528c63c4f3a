"""Every example YAML parses, names task/model/criterion ``_name`` (Hydra composes YAML before the user dir
is imported, so fairseq cannot fill them in), and each named component is registered once the plugin is
imported."""
import glob
import os

import pytest
from fairseq.criterions import CRITERION_REGISTRY
from fairseq.models import MODEL_REGISTRY
from fairseq.tasks import TASK_REGISTRY
from omegaconf import OmegaConf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
YAMLS = sorted(glob.glob(os.path.join(REPO, "examples", "*", "config", "*.yaml")))


def test_there_are_example_configs():
    assert len(YAMLS) >= 1


@pytest.mark.parametrize("path", YAMLS, ids=[os.path.relpath(p, REPO) for p in YAMLS])
def test_example_yaml_names_registered_components(path):
    cfg = OmegaConf.load(path)
    for group, registry in (("task", TASK_REGISTRY), ("model", MODEL_REGISTRY), ("criterion", CRITERION_REGISTRY)):
        assert group in cfg, f"{path}: no '{group}' section"
        name = cfg[group].get("_name")
        assert name, f"{path}: {group}._name is missing"
        assert name in registry, f"{path}: {group}._name={name!r} is not registered"
