"""Issue 10 item 11: fairseq_plugins/ copied alone (no manifests/ package next to it, none importable) imports,
registers its tasks, and builds and reads data with every task, procedural noise augmentation included (the
noise and manifest code now live in fairseq_plugins/data/). Runs in a subprocess whose sys.path holds the copy
and site-packages only, with the repository's editable-install finder removed and ``manifests`` blocked."""
import os
import shutil
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = textwrap.dedent('''
    import os, sys
    copy, data = sys.argv[1], sys.argv[2]
    sys.meta_path = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "") + repr(f)]
    sys.path = [copy] + [p for p in sys.path if "site-packages" in p or p.endswith((".zip", "lib-dynload"))
                         or os.path.basename(p).startswith("python3")]
    sys.modules["manifests"] = None  # any import of the scripts package raises ImportError
    import fairseq_plugins
    assert fairseq_plugins.__file__.startswith(copy), fairseq_plugins.__file__
    from omegaconf import OmegaConf
    from fairseq.tasks import TASK_REGISTRY, setup_task
    from fairseq_plugins.tasks.laser_finetune import LaserFinetuneConfig
    from fairseq_plugins.tasks.multiview_audio_pretraining import MultiviewAudioPretrainingConfig
    from fairseq_plugins.tasks.slicer_pretraining import SlicerPretrainingConfig
    cfgs = {
        "multiview_audio_pretraining": MultiviewAudioPretrainingConfig(
            data=data, tpu=False, seed=1, train_subset="train", augmentations=["noise(snr=10,kinds=babble)"]),
        "slicer_pretraining": SlicerPretrainingConfig(data=data, train_subset="train"),
        "laser_finetune": LaserFinetuneConfig(data=data, train_subset="train"),
    }
    for name, cfg in cfgs.items():
        cfg = OmegaConf.structured(cfg)
        cfg._name = name
        task = setup_task(cfg)
        assert type(task) is TASK_REGISTRY[name] and type(task).__module__.startswith("fairseq_plugins.tasks")
        task.load_dataset("train")
        item = task.dataset("train")[0]
        print(name, "ok", sorted(item))
    bad = [m for m in sys.modules if m == "manifests" or m.startswith("manifests.")]
    assert sys.modules.get("manifests") is None and bad == ["manifests"], bad
    print("ALONE OK")
''')


def test_plugin_copied_alone_builds_every_task(tmp_path, bad_split):
    copy = tmp_path / "alone"
    shutil.copytree(os.path.join(REPO, "fairseq_plugins"), copy / "fairseq_plugins",
                    ignore=shutil.ignore_patterns("__pycache__"))
    data = tmp_path / "data"
    bad_split(str(data), "train", num_good=3)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(copy), str(data)], cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "ALONE OK" in proc.stdout
    for name in ("multiview_audio_pretraining", "slicer_pretraining", "laser_finetune"):
        assert f"{name} ok" in proc.stdout


def test_no_plugin_module_imports_the_scripts_package():
    import ast

    offenders = []
    for folder, _, files in os.walk(os.path.join(REPO, "fairseq_plugins")):
        for fn in files:
            if not fn.endswith(".py"):
                continue
            path = os.path.join(folder, fn)
            with open(path) as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                if any(n == "manifests" or n.startswith("manifests.") for n in names):
                    offenders.append(f"{os.path.relpath(path, REPO)}:{node.lineno}")
    assert offenders == []
