#!/usr/bin/env bash
# Run the CPU kernel tests against a copy of cliptbp_kernels._C_cpu built with
# AddressSanitizer + UndefinedBehaviorSanitizer. Fails on any sanitizer report.
#
#   bash scripts/sanitize.sh                 # build (incremental) + run the default tests
#   bash scripts/sanitize.sh -k long_video   # extra arguments go to pytest
#
# The sanitized module is built by CMake directly into build/sanitize/ (never by setup.py,
# so the editable build's cliptbp_kernels/_C_cpu*.so is left alone). A sitecustomize.py
# written to build/sanitize/shim/ and put first on PYTHONPATH makes every Python process of
# the run (pytest and the subprocesses some tests start) import that copy as
# cliptbp_kernels._C_cpu; the rest of the package is the working tree's. Python itself and
# torch are not instrumented, so the sanitizer runtime is preloaded (LD_PRELOAD); it then
# also guards every heap buffer torch allocates, which is where the kernels read and write.
#
# Environment:
#   PYTHON                    interpreter (default: .venv/bin/python)
#   CXX                       GCC C++ compiler (default: g++); its libasan/libubsan are preloaded
#   CLIPTBP_SANITIZE_DIR      build folder (default: build/sanitize)
#   CLIPTBP_SANITIZE_OPT      optimisation flags of the sanitized build (default: -O1)
#   CLIPTBP_SANITIZE_TESTS    test files to run (default: see TESTS below)
#
# Any report fails the run. AddressSanitizer reports go to $CLIPTBP_SANITIZE_DIR/logs/ (one
# file per process that reported, printed at the end), so one written by a subprocess whose
# output a test captured still fails the run. UndefinedBehaviorSanitizer reports go to stderr
# (pytest runs with --capture=sys so they are not swallowed) and end the process with exit
# status 1 (-fno-sanitize-recover=all). The build also turns on libstdc++'s bounds
# assertions (-D_GLIBCXX_ASSERTIONS) and std::vector container-overflow annotations.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PY="${PYTHON:-$ROOT/.venv/bin/python}"
CXX_BIN="${CXX:-g++}"
BUILD="${CLIPTBP_SANITIZE_DIR:-$ROOT/build/sanitize}"
OPT="${CLIPTBP_SANITIZE_OPT:--O1}"
TESTS="${CLIPTBP_SANITIZE_TESTS:-tests/backends/test_fused_backends.py tests/backends/test_custom_ops.py tests/backends/test_failures.py tests/backends/test_scale.py tests/backends/test_cpu_pool.py}"
LOGS="$BUILD/logs"

start=$(date +%s)
say() { echo "sanitize.sh: $*"; }

defs="$("$CXX_BIN" -dM -E -x c++ /dev/null 2>/dev/null || true)"
if [[ "$defs" != *__GNUC__* || "$defs" == *__clang__* ]]; then
  say "CXX=$CXX_BIN is not a working GCC: the preloaded runtime must match the compiler; set CXX=g++" >&2
  exit 2
fi
ASAN_LIB="$("$CXX_BIN" -print-file-name=libasan.so)"
UBSAN_LIB="$("$CXX_BIN" -print-file-name=libubsan.so)"
for lib in "$ASAN_LIB" "$UBSAN_LIB"; do
  if [ ! -e "$lib" ]; then
    say "sanitizer runtime $lib not found (apt-get install libasan8 libubsan1, or the gcc package)" >&2
    exit 2
  fi
done

# --- build -------------------------------------------------------------------------------
read -r CMAKE NINJA PYBIND11_DIR < <("$PY" - <<'PYEOF'
import os, shutil
try:
    import cmake
    cm = os.path.join(cmake.CMAKE_BIN_DIR, "cmake")
except Exception:
    cm = shutil.which("cmake") or "cmake"
try:
    import ninja
    nj = os.path.join(ninja.BIN_DIR, "ninja")
except Exception:
    nj = shutil.which("ninja") or ""
import pybind11
print(cm, nj or "-", pybind11.get_cmake_dir())
PYEOF
)
if [ -z "${PYBIND11_DIR:-}" ]; then
  say "$PY cannot import pybind11 (run scripts/setup.sh first)" >&2
  exit 2
fi
gen=()
if [ "$NINJA" != "-" ]; then gen=(-G Ninja "-DCMAKE_MAKE_PROGRAM=$NINJA"); fi

mkdir -p "$BUILD"
say "building _C_cpu with -fsanitize=address,undefined ($OPT) in $BUILD"
"$CMAKE" -S "$ROOT" -B "$BUILD/cmake" "${gen[@]}" \
  -DCMAKE_BUILD_TYPE=Debug \
  "-DCMAKE_CXX_COMPILER=$(command -v "$CXX_BIN")" \
  "-DCMAKE_CXX_FLAGS_DEBUG=$OPT -g" \
  "-DCMAKE_CXX_FLAGS=-fno-sanitize-recover=all -D_GLIBCXX_ASSERTIONS -D_GLIBCXX_SANITIZE_VECTOR" \
  "-DPython_EXECUTABLE=$PY" "-Dpybind11_DIR=$PYBIND11_DIR" \
  -DCLIPTBP_CUDA=OFF -DCLIPTBP_CUDA_EMU=OFF -DCLIPTBP_SANITIZE=ON \
  "-DCLIPTBP_OUTPUT_DIR=$BUILD/module" > "$BUILD/configure.log" 2>&1 \
  || { cat "$BUILD/configure.log" >&2; say "CMake configure failed" >&2; exit 2; }
"$CMAKE" --build "$BUILD/cmake" --parallel "$(nproc 2>/dev/null || echo 2)" --target _C_cpu \
  || { say "build failed" >&2; exit 2; }
SO="$(ls "$BUILD"/module/_C_cpu*.so | head -n1)"
if ! (nm -D "$SO" 2>/dev/null || true) | grep "__asan_report" > /dev/null; then
  say "$SO carries no AddressSanitizer instrumentation" >&2
  exit 2
fi

# --- shim: import the sanitized copy as cliptbp_kernels._C_cpu ---------------------------
mkdir -p "$BUILD/shim"
cat > "$BUILD/shim/sitecustomize.py" <<'PYEOF'
# Written by scripts/sanitize.sh: import cliptbp_kernels._C_cpu from the sanitized build.
import importlib.machinery
import importlib.util
import os
import sys

_PATH = os.environ.get("CLIPTBP_SANITIZED_CPU_MODULE", "")


class _SanitizedCpuModule:
    @staticmethod
    def find_spec(fullname, path=None, target=None):
        if fullname != "cliptbp_kernels._C_cpu" or not _PATH:
            return None
        loader = importlib.machinery.ExtensionFileLoader(fullname, _PATH)
        return importlib.util.spec_from_file_location(fullname, _PATH, loader=loader)


sys.meta_path.insert(0, _SanitizedCpuModule())

# Chain to a sitecustomize this one shadows, if any.
_here = os.path.dirname(os.path.abspath(__file__))
_rest = [p for p in sys.path if os.path.abspath(p or ".") != _here]
_spec = importlib.machinery.PathFinder.find_spec("sitecustomize", _rest)
if _spec is not None and _spec.origin and os.path.dirname(os.path.abspath(_spec.origin)) != _here:
    _mod = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_mod)
PYEOF

rm -rf "$LOGS"
mkdir -p "$LOGS"
export CLIPTBP_SANITIZED_CPU_MODULE="$SO"
export PYTHONPATH="$BUILD/shim${PYTHONPATH:+:$PYTHONPATH}"
export LD_PRELOAD="$ASAN_LIB $UBSAN_LIB${LD_PRELOAD:+ $LD_PRELOAD}"
# detect_leaks=0: CPython and torch keep their allocations until exit by design.
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:detect_stack_use_after_return=1:check_initialization_order=1:strict_string_checks=1:log_path=$LOGS/asan${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$LOGS/ubsan${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
# torch.compile (tests/backends/test_custom_ops.py): compile in-process rather than in a pool of
# worker processes (its C++ compiler runs inherit the preload, which is harmless).
export TORCHINDUCTOR_COMPILE_THREADS=1

report_logs() {
  local found=0 f
  for f in "$LOGS"/*; do
    [ -e "$f" ] || continue
    found=1
    echo "==== sanitizer report: $f" >&2
    cat "$f" >&2
  done
  return "$found"
}

# The module really is the sanitized copy, and the runtime is live.
"$PY" - <<'PYEOF'
import os
import cliptbp_kernels._C_cpu as m
from cliptbp_kernels.backends import cpu as _cpu_backend
want = os.path.realpath(os.environ["CLIPTBP_SANITIZED_CPU_MODULE"])
assert os.path.realpath(m.__file__) == want, (m.__file__, want)
assert _cpu_backend._ext is m, "cliptbp_kernels.backends.cpu did not pick up the sanitized module"
with open("/proc/self/maps") as f:
    assert "libasan" in f.read(), "the AddressSanitizer runtime is not loaded"
print(f"sanitize.sh: cliptbp_kernels._C_cpu = {m.__file__} (tiles: {m.simd_level()})")
PYEOF

rc=0
# TRITON_INTERPRET=0, CLIPTBP_CUDA_EMULATE=0: the sanitized module is the C++ CPU one; the
# interpreted Triton backend and the emulated CUDA kernels (uninstrumented, and their fiber
# stacks would confuse AddressSanitizer) drop out of the backends on CPU tensors.
# shellcheck disable=SC2086
TRITON_INTERPRET=0 CLIPTBP_CUDA_EMULATE=0 "$PY" -m pytest -q -p no:cacheprovider --capture=sys $TESTS "$@" || rc=$?
if ! report_logs; then
  say "FAILED: sanitizer reports above" >&2
  [ "$rc" -ne 0 ] || rc=1
fi
if [ "$rc" -eq 5 ]; then
  say "pytest collected no tests: treating that as a failure" >&2
fi
say "$([ "$rc" -eq 0 ] && echo passed || echo "FAILED (exit $rc)") in $(( $(date +%s) - start )) s"
exit "$rc"
