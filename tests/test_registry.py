"""Each registered name maps to the plugin's own class: fairseq's registries silently keep the first class
registered under a name, so a clash (fairseq main already has unrelated `laser` names) would otherwise go
unnoticed. The expected names are listed here on purpose: removing or renaming one must fail a test."""
import importlib

import pytest
from fairseq.criterions import CRITERION_REGISTRY
from fairseq.models import MODEL_REGISTRY
from fairseq.tasks import TASK_REGISTRY

import fairseq_plugins  # noqa: F401

EXPECTED = [
    ("model", "hubert_ctc_compat", "fairseq_plugins.models.hubert_ctc_compat", "HubertCtcCompat"),
    ("model", "wavlm", "fairseq_plugins.models.wavlm", "WavLMModel"),
    ("model", "laser_finetune", "fairseq_plugins.models.laser_finetune", "LaserFinetuneModel"),
    ("task", "laser_finetune", "fairseq_plugins.tasks.laser_finetune", "LaserFinetuneTask"),
    ("criterion", "soft_dtw", "fairseq_plugins.criterions.soft_dtw", "SoftDTWCriterion"),
    ("model", "simsiam_recon", "fairseq_plugins.models.simsiam_recon", "SimsiamReconModel"),
    ("task", "multiview_audio_pretraining", "fairseq_plugins.tasks.multiview_audio_pretraining",
     "MultiviewAudioPretrainingTask"),
    ("criterion", "simsiam_recon", "fairseq_plugins.criterions.simsiam_recon", "SimsiamReconCriterion"),
    ("criterion", "simsiam", "fairseq_plugins.criterions.simsiam", "SimsiamCriterion"),
    ("criterion", "masked_reconstruction", "fairseq_plugins.criterions.masked_reconstruction",
     "MaskedReconstructionCriterion"),
    ("model", "slicer", "fairseq_plugins.models.slicer", "SlicerModel"),
    ("task", "slicer_pretraining", "fairseq_plugins.tasks.slicer_pretraining", "SlicerPretrainingTask"),
    ("criterion", "slicer", "fairseq_plugins.criterions.slicer", "SlicerCriterion"),
]
REGISTRIES = {"model": MODEL_REGISTRY, "task": TASK_REGISTRY, "criterion": CRITERION_REGISTRY}


@pytest.mark.parametrize("kind,name,module,cls", EXPECTED, ids=[f"{k}:{n}" for k, n, _, _ in EXPECTED])
def test_name_maps_to_plugin_class(kind, name, module, cls):
    assert REGISTRIES[kind][name] is getattr(importlib.import_module(module), cls)


def test_no_bare_laser_name():
    for kind, registry in REGISTRIES.items():
        cls = registry.get("laser")
        assert cls is None or not cls.__module__.startswith("fairseq_plugins"), kind


def test_every_plugin_registration_is_listed():
    listed = {(k, n) for k, n, _, _ in EXPECTED}
    for kind, registry in REGISTRIES.items():
        for name, cls in registry.items():
            if getattr(cls, "__module__", "").startswith("fairseq_plugins"):
                assert (kind, name) in listed, f"{kind} {name} ({cls.__module__}) is not listed in EXPECTED"
