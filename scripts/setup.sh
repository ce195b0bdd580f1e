#!/usr/bin/env bash
# Set up a development machine: .venv in the repo root (created if absent), the pinned
# dependencies, and an editable build of the package (CPU module always, CUDA module when
# nvcc is found; see setup.py for the CLIPTBP_* build switches). Safe to run again: it only
# installs what is missing and rebuilds incrementally. Works from any directory.
#
#   PYTHON=python3.12 scripts/setup.sh      # interpreter used to create .venv (default python3)
#   CLIPTBP_SETUP_SKIP_DEPS=1 scripts/setup.sh   # offline machine with the dependencies in place
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="$ROOT/.venv"
PY="$VENV/bin/python"

if [ ! -x "$PY" ]; then
  echo "setup.sh: creating $VENV"
  "${PYTHON:-python3}" -m venv "$VENV"
fi

if [ "${CLIPTBP_SETUP_SKIP_DEPS:-0}" != "1" ]; then
  echo "setup.sh: installing dependencies into $VENV"
  # torch pinned to the CPU wheel on this machine's index; triton 3.6 needs numpy < 2.4; ruff
  # is the linter scripts/test.sh runs.
  "$PY" -m pip install -q \
    "torch==2.13.0" "triton==3.6.0" "numpy<2.4" \
    pybind11 ninja cmake setuptools wheel \
    pytest pytest-benchmark hypothesis tqdm matplotlib ruff
fi

echo "setup.sh: building cliptbp_kernels (editable)"
"$PY" -m pip install -q --no-build-isolation -e .

# Report what was built. The CUDA module may fail to import without a driver: report the file.
"$PY" - <<'PYEOF'
import glob, importlib, os
import cliptbp_kernels
pkg = os.path.dirname(cliptbp_kernels.__file__)
for name in ("_C_cpu", "_C_cuda"):
    files = glob.glob(os.path.join(pkg, name + ".*.so")) + glob.glob(os.path.join(pkg, name + ".*.pyd"))
    if not files:
        print(f"setup.sh: cliptbp_kernels.{name}: not built")
        continue
    try:
        mod = importlib.import_module("cliptbp_kernels." + name)
        extra = ""
        if name == "_C_cuda":
            extra = f" (CUDA runtime {mod.runtime_version()}, {mod.device_count()} device(s))"
        print(f"setup.sh: cliptbp_kernels.{name}: built, imports{extra}")
    except Exception as e:  # e.g. no driver for a dynamically linked CUDA runtime
        print(f"setup.sh: cliptbp_kernels.{name}: built ({os.path.basename(files[0])}), import failed: {e}")
PYEOF
