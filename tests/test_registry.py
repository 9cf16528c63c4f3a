"""Each registered name maps to the plugin's own class, compared by module and qualified name: fairseq's
``register_model`` / ``register_task`` return the class already registered under a taken name, so the plugin's
module attribute can itself be the other class and an identity check against it proves nothing. The expected
names are listed here on purpose: removing or renaming one must fail a test. A clash is provoked for real in a
subprocess (a foreign class registered first under a plugin name): importing the plugin must then fail, naming
the name and both classes."""
import os
import subprocess
import sys
import textwrap

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
    ("model", "mgf", "fairseq_plugins.models.mgf", "MgfModel"),
    ("criterion", "mgf", "fairseq_plugins.criterions.mgf", "MgfCriterion"),
    ("task", "multiview_audio_pretraining", "fairseq_plugins.tasks.multiview_audio_pretraining",
     "MultiviewAudioPretrainingTask"),
    ("criterion", "simsiam_recon", "fairseq_plugins.criterions.simsiam_recon", "SimsiamReconCriterion"),
    ("criterion", "simsiam", "fairseq_plugins.criterions.simsiam", "SimsiamCriterion"),
    ("criterion", "masked_reconstruction", "fairseq_plugins.criterions.masked_reconstruction",
     "MaskedReconstructionCriterion"),
    ("model", "slicer", "fairseq_plugins.models.slicer", "SlicerModel"),
    ("task", "slicer_pretraining", "fairseq_plugins.tasks.slicer_pretraining", "SlicerPretrainingTask"),
    ("criterion", "slicer", "fairseq_plugins.criterions.slicer", "SlicerCriterion"),
    ("model", "csc", "fairseq_plugins.models.csc", "CscModel"),
    ("criterion", "csc", "fairseq_plugins.criterions.csc", "CscCriterion"),
]
REGISTRIES = {"model": MODEL_REGISTRY, "task": TASK_REGISTRY, "criterion": CRITERION_REGISTRY}


@pytest.mark.parametrize("kind,name,module,cls", EXPECTED, ids=[f"{k}:{n}" for k, n, _, _ in EXPECTED])
def test_name_maps_to_plugin_class(kind, name, module, cls):
    registered = REGISTRIES[kind][name]
    assert (registered.__module__, registered.__qualname__) == (module, cls)


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


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOREIGN = {
    "model": ("fairseq.models", "register_model", "BaseFairseqModel"),
    "task": ("fairseq.tasks", "register_task", "FairseqTask"),
    "criterion": ("fairseq.criterions", "register_criterion", "FairseqCriterion"),
}


@pytest.mark.parametrize("kind,name,module,cls", [
    ("model", "slicer", "fairseq_plugins.models.slicer", "SlicerModel"),
    ("task", "laser_finetune", "fairseq_plugins.tasks.laser_finetune", "LaserFinetuneTask"),
    ("criterion", "soft_dtw", "fairseq_plugins.criterions.soft_dtw", "SoftDTWCriterion"),
], ids=["model", "task", "criterion"])
def test_import_fails_when_a_foreign_class_holds_a_plugin_name(kind, name, module, cls):
    fs_module, register_fn, base = FOREIGN[kind]
    script = textwrap.dedent(f"""
        from {fs_module} import {register_fn}, {base}

        @{register_fn}({name!r})
        class ForeignThing({base}):
            pass

        import fairseq_plugins  # must refuse: {name!r} is taken
        print("IMPORTED")
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "IMPORTED" not in out, f"the plugin imported over a foreign {kind}:\n{out[-3000:]}"
    last = out.strip().splitlines()[-1]
    assert last.startswith("fairseq_plugins.compat.RegistryClashError: "), out[-3000:]
    assert f"fairseq {kind} name {name!r} is already registered to __main__.ForeignThing" in last
    assert f"cannot register {module}.{cls} under it" in last


def test_every_registration_goes_through_the_checked_decorator():
    """fairseq's own register_* decorators would reintroduce the silent clash: the package never calls them."""
    import re

    offenders = []
    for root, _, files in os.walk(os.path.join(REPO, "fairseq_plugins")):
        for name in files:
            if name.endswith(".py") and name != "compat.py":
                path = os.path.join(root, name)
                with open(path) as f:
                    for i, line in enumerate(f, 1):
                        if re.search(r"\bregister_(model|task|criterion)\(", line):
                            offenders.append(f"{os.path.relpath(path, REPO)}:{i}: {line.strip()}")
    assert not offenders, "use fairseq_plugins.compat.register instead of:\n" + "\n".join(offenders)
