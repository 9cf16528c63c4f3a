"""`pip install .` (a wheel, not the editable checkout) gives a working plugin, and the pins live in one place.

The wheel is built from a copy of the working tree (no build/ or egg-info left in the repository), installed with
``--no-deps --no-index`` into a throwaway venv whose only link to the dev venv is a ``.pth`` line naming .venv's
site-packages directory: that puts torch/fairseq/... on ``sys.path`` without running .venv's own ``.pth`` files,
so the editable install's meta-path finder cannot shadow the wheel. The smoke run happens outside the
repository, asserts that ``fairseq_plugins`` comes from the throwaway venv, imports every module of the
package, checks the registrations, and compiles the soft-DTW C++ kernel from the *installed* source (in a fresh
extensions directory) and checks it is the backend in use. Nothing is downloaded.

The pin tests: constraints.txt is the lock of the local venv; every dependency declared by setup.py (with its
extras), requirements-dev.txt and scripts/setup_venv.sh must have an exact pin there, and .venv must hold exactly
the pinned versions (a new transformers or librosa release cannot change what ``make test`` installs).
"""
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("fairseq_plugins", "manifests")
COPY_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "*.egg-info", "build")


def _run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-6000:]}")
    return proc.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel `pip wheel .` builds from (a copy of) the working tree."""
    src = tmp_path_factory.mktemp("src")
    for name in ("setup.py", "pyproject.toml"):
        shutil.copy(os.path.join(REPO, name), src / name)
    for pkg in PACKAGES:
        shutil.copytree(os.path.join(REPO, pkg), src / pkg, ignore=COPY_IGNORE)
    out = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index", "--no-build-isolation", "-q",
          "-w", str(out), str(src)])
    (whl,) = list(out.glob("fairseq_plugins-*.whl"))
    return whl


def _declared_requirements(whl):
    """{extra or '': [requirement strings]} from the wheel's METADATA."""
    with zipfile.ZipFile(whl) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("Requires-Dist: "):
            req = line[len("Requires-Dist: "):]
            m = re.search(r"""extra\s*==\s*["']([^"']+)["']""", req)
            out.setdefault(m.group(1) if m else "", []).append(req.split(";")[0].strip())
    return out


def _name(req):
    return re.split(r"[<>=!~\[ ;]", req, maxsplit=1)[0].strip().lower().replace("_", "-")


def test_wheel_ships_the_kernel_source_and_declares_what_the_code_imports(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    assert "fairseq_plugins/losses/_sdtw_cpu.cpp" in names, sorted(n for n in names if "losses" in n)
    reqs = _declared_requirements(wheel)
    assert {"fairseq", "eval", "corpus", "hf"} <= set(reqs), reqs
    declared = {_name(r) for rs in reqs.values() for r in rs}
    # every third-party module the shipped code imports is declared (module name -> distribution of .venv)
    import ast
    from importlib.metadata import packages_distributions

    dists = packages_distributions()
    missing = {}
    with zipfile.ZipFile(wheel) as z:
        for n in names:
            if not n.endswith(".py"):
                continue
            for node in ast.walk(ast.parse(z.read(n).decode(), n)):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
                for mod in mods:
                    top = mod.split(".")[0]
                    if top in sys.stdlib_module_names or top in PACKAGES or top == "torchaudio":  # torchaudio: optional
                        continue
                    owners = {d.lower().replace("_", "-") for d in dists.get(top, [top])}
                    if not owners & declared:
                        missing.setdefault(top, set()).add(n)
    assert not missing, f"imported but not declared in setup.py: {missing} (declared: {sorted(declared)})"
    torch_req = next(r for r in reqs[""] if _name(r) == "torch")
    assert torch_req == "torch>=2.4", torch_req  # add_safe_globals (safe loading) exists from torch 2.4 on


SMOKE = textwrap.dedent("""
    import importlib, json, os, pkgutil, sys
    import torch
    import fairseq_plugins
    from fairseq.criterions import CRITERION_REGISTRY
    from fairseq.models import MODEL_REGISTRY
    from fairseq.tasks import TASK_REGISTRY
    from fairseq_plugins.losses import soft_dtw as sd

    site = sys.argv[1]
    assert os.path.realpath(fairseq_plugins.__file__).startswith(os.path.realpath(site) + os.sep), (
        f"fairseq_plugins imported from {fairseq_plugins.__file__}, not from the installed wheel in {site}")
    modules = [m.name for m in pkgutil.walk_packages(fairseq_plugins.__path__, "fairseq_plugins.")
               if not m.name.endswith("__main__")]
    for name in modules:
        importlib.import_module(name)
    registered = sorted(f"{kind}:{name}" for kind, reg in
                        (("model", MODEL_REGISTRY), ("task", TASK_REGISTRY), ("criterion", CRITERION_REGISTRY))
                        for name, cls in reg.items() if cls.__module__.startswith("fairseq_plugins."))
    backend = sd.selected_backend("auto", "cpu")
    assert backend == "cpp", f"compiled soft-DTW kernel not in use: {sd.cpp_backend_error()}"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 9, 4, generator=g, dtype=torch.float64)
    y = torch.randn(3, 7, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(sd.soft_dtw(x, y, 0.1), sd.soft_dtw(x, y, 0.1, backend="torch"), rtol=1e-12, atol=1e-10)
    print("SMOKE " + json.dumps({"file": fairseq_plugins.__file__, "kernel_source": str(sd._CPP_SOURCE),
                                 "modules": len(modules), "registered": registered, "backend": backend}))
""")


@pytest.mark.slow
def test_installed_wheel_works_outside_the_repository(wheel, tmp_path_factory):
    venv = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    vpy = venv / "bin" / "python"
    site = _run([str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip()
    # .venv's site-packages as a plain path: its .pth files (the editable finder) are NOT processed
    with open(os.path.join(site, "_dev_venv_packages.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(vpy), "install", "-q", "--no-deps", "--no-index", str(wheel)])
    work = tmp_path_factory.mktemp("elsewhere")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FAIRSEQ_PLUGINS_SDTW_BACKEND")}
    env.update(OMP_NUM_THREADS="2", TORCH_EXTENSIONS_DIR=str(tmp_path_factory.mktemp("torch_ext")))
    out = _run([str(vpy), "-c", SMOKE, site], cwd=str(work), env=env)
    result = json.loads(next(line for line in out.splitlines() if line.startswith("SMOKE "))[len("SMOKE "):])
    assert result["backend"] == "cpp"
    assert result["kernel_source"].startswith(site) and os.path.isfile(result["kernel_source"])
    assert "model:slicer" in result["registered"] and "criterion:soft_dtw" in result["registered"]
    assert result["modules"] >= 40, result
    assert (venv / "bin" / "fairseq-plugins-train").is_file()  # the console script of setup.py's entry_points


def test_torch_without_the_allow_list_api_is_refused_by_name(monkeypatch):
    """torch < 2.4 has no torch.serialization.add_safe_globals: importing the plugin says so instead of loading
    checkpoints unsafely."""
    import torch

    from fairseq_plugins import compat

    monkeypatch.delattr(torch.serialization, "add_safe_globals")
    monkeypatch.setattr(compat, "_SAFE_GLOBALS_INSTALLED", False)
    with pytest.raises(ImportError, match=r"fairseq_plugins needs torch >= 2.4 \(torch.serialization.add_safe_glob"):
        compat.install_safe_globals()


# ------------------------------------------------------------------------------------------------------------
# pins: one place
# ------------------------------------------------------------------------------------------------------------
def _pins():
    pins = {}
    with open(os.path.join(REPO, "constraints.txt")) as f:
        for i, line in enumerate(f, 1):
            line = line.split("#")[0].strip()
            if not line:
                continue
            m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^=<>!~,;\s]+)", line)
            assert m, f"constraints.txt:{i}: {line!r} is not an exact pin name==version"
            name = m.group(1).lower().replace("_", "-")
            assert name not in pins, f"constraints.txt:{i}: {name} pinned twice"
            pins[name] = m.group(2)
    return pins


def _dev_requirements():
    with open(os.path.join(REPO, "requirements-dev.txt")) as f:
        return [line.split("#")[0].strip() for line in f if line.split("#")[0].strip()]


def test_requirement_files_keep_ranges_and_every_dependency_is_pinned(wheel):
    pins = _pins()
    declared = [r for rs in _declared_requirements(wheel).values() for r in rs] + _dev_requirements()
    with open(os.path.join(REPO, "scripts", "setup_venv.sh")) as f:
        script = f.read()
    assert not re.search(r"pip install[^\n]*==", script), "setup_venv.sh names a version: pin it in constraints.txt"
    for req in declared:
        assert "==" not in req, f"{req!r}: setup.py / requirements-dev.txt keep ranges, the pin goes to constraints.txt"
    installed_by_script = ["pip", "setuptools", "wheel", "torch", "numpy", "cython", "fairseq-fixed", "torchaudio"]
    unpinned = sorted(n for n in {_name(r) for r in declared} | set(installed_by_script) if n not in pins)
    assert not unpinned, f"not pinned in constraints.txt: {unpinned}"


def test_dev_venv_holds_exactly_the_pinned_versions():
    from importlib.metadata import PackageNotFoundError, version

    wrong = {}
    for name, pinned in _pins().items():
        try:
            have = version(name)
        except PackageNotFoundError:
            if name != "torchaudio":  # installed by fairseq-fixed, then removed by setup_venv.sh on purpose
                wrong[name] = (pinned, None)
            continue
        if have.split("+")[0] != pinned:
            wrong[name] = (pinned, have)
    assert not wrong, f"constraints.txt pin vs .venv (run `make setup`): {wrong}"
