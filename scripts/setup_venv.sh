#!/usr/bin/env bash
# Creates the project's virtual environment for CPU machines (the project's machine kind).
#   - Every version comes from constraints.txt (the lock, exported as PIP_CONSTRAINT so that isolated build
#     environments honour it too): nothing below names a version, and no new release of anything changes
#     what gets installed. torch is its CPU build, so no CUDA wheel is ever pulled.
#   - fairseq-fixed (official fairseq 0.12.2 cannot be built or imported on Python 3.11, see README.md,
#     "Installing"; fairseq-fixed is a fork of fairseq main with the 3.11 fix) compiles Cython/C++ extensions
#     against the installed torch, so it is installed without build isolation, after torch, cython and numpy.
#     pip caches the built wheel: a second setup takes seconds.
#   - torchaudio: fairseq-fixed depends on it, and the only build on PyPI for torch 2.13 is CUDA-only
#     (import raises OSError next to CPU torch). The plugin never imports it; we uninstall it so no
#     CUDA-linked package remains in the venv.
#   - The plugin itself: editable, with its extras (eval: probe metrics/plots, corpus: espeak-ng, hf:
#     transformers/safetensors formats), then the test tools of requirements-dev.txt.
#   - Real human speech for the real-speech probes (manifests/real_dev.py, tested by tests/real_dev) comes from
#     Debian packages: the missing ones are installed with apt-get (root, or password-less sudo), first.
set -euo pipefail
PY=${1:-python3}
VENV=${2:-.venv}
HERE=$(cd "$(dirname "$0")/.." && pwd)
REAL_DEV_PACKAGES="hedgewars-data ktuberling-data klettres-data codec2-examples"
missing=$(for p in $REAL_DEV_PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo -n "$p "; done)
if [ -n "$missing" ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
  if ! command -v apt-get >/dev/null || { [ -n "$SUDO" ] && ! sudo -n true 2>/dev/null; }; then
    echo "setup: the real-speech probe set (manifests/real_dev.py) needs the Debian packages: ${missing}" >&2
    echo "setup: cannot install them here (apt-get missing, or not root and no password-less sudo): run" >&2
    echo "  apt-get install -y --no-install-recommends ${missing}" >&2
    echo "as root, then rerun make setup" >&2
    exit 1
  fi
  echo "setup: installing ${missing}(apt-get, for the real-speech probe set)"
  # shellcheck disable=SC2086
  $SUDO apt-get install -y -q --no-install-recommends $missing >/dev/null \
    || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q --no-install-recommends $missing >/dev/null; }
fi
export PIP_CONSTRAINT=${PIP_CONSTRAINT:-$HERE/constraints.txt}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
"$VPY" -m pip install -q --upgrade pip setuptools wheel
"$VPY" -m pip install -q torch numpy cython
# fairseq-fixed drags torchaudio in; its CUDA wheel is useless here, so keep it out of the venv
"$VPY" -m pip install -q --no-build-isolation fairseq-fixed
"$VPY" -m pip uninstall -q -y torchaudio || true
"$VPY" -m pip install -q --no-build-isolation -e "$HERE[eval,corpus,hf]"
"$VPY" -m pip install -q -r "$HERE/requirements-dev.txt"
"$VPY" - <<'PY'
import subprocess, sys
import torch, fairseq
bad = [l for l in subprocess.run([sys.executable, "-m", "pip", "list"], capture_output=True, text=True).stdout.splitlines()
       if l.lower().startswith(("nvidia", "triton"))]
if bad:
    sys.exit(f"CUDA packages found in the venv (they should never be installed here): {bad}")
print(f"venv ready: torch {torch.__version__}, fairseq {fairseq.__version__}")
PY
