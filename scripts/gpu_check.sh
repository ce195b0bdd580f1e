#!/usr/bin/env bash
# Staged GPU check (DESIGN.md, "The GPU check"). Each stage stays well under 10 minutes and
# writes its logs and results to $OUT as it goes, so any one call returns something useful.
#
#   bash scripts/gpu_check.sh all                 # build smoke tests sanitizer bench
#   bash scripts/gpu_check.sh build smoke         # any subset, in the order given
#
# Stages:
#   build      nvidia-smi, nvcc version, `pip install --no-build-isolation -e .` (no network
#              needed: torch, triton, pybind11, cmake, ninja must be installed already)
#   smoke      one call per available backend (triton included) on CUDA tensors,
#              determinism, TF32 off,
#              the CUDA module's runtime (scripts/gpu_smoke.py)
#   tests      the GPU tests first (tests/test_gpu.py: every GPU backend against SPEC.md), then
#              the whole suite, with the Triton kernels compiled (TRITON_INTERPRET=0)
#   sanitizer  compute-sanitizer memcheck, racecheck and synccheck over the smoke calls of
#              every GPU backend, then memcheck and racecheck over the CUDA C++ backend's GPU
#              tests (tests/test_gpu.py -k cuda, each run capped at 200 s)
#   bench      bench.harness --device cuda (+ plot), results in $OUT/cuda.csv and cuda.png
#   tune       (not in "all") sweep of the GPU backends' block sizes at the benchmark shapes
#              (scripts/gpu_tune.py; starts no case after 8 minutes): $OUT/tune.csv, tune.json
#
# Environment: OUT (default out/gpu_check), PYTHON (default python3).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/out/gpu_check}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
export CLIPTBP_CUDA="${CLIPTBP_CUDA:-1}"

log() { echo "[gpu_check $(date -u +%H:%M:%S)] $*" | tee -a "$OUT/summary.txt"; }

run_stage() {
  local name="$1"; shift
  local start=$SECONDS
  log "stage $name: start"
  if "$@" > "$OUT/$name.log" 2>&1; then
    log "stage $name: ok ($((SECONDS - start)) s)"
  else
    log "stage $name: FAILED ($((SECONDS - start)) s), see $name.log"
    tail -n 30 "$OUT/$name.log"
    return 1
  fi
}

stage_build() {
  nvidia-smi || true
  command -v nvcc && nvcc --version || /usr/local/cuda/bin/nvcc --version || true
  "$PY" -c "import torch, sys; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
  "$PY" -m pip install --no-build-isolation -e . -v
  "$PY" -c "import cliptbp_kernels as ck; print('backends', ck.available_backends())"
}

stage_smoke() { TRITON_INTERPRET=0 "$PY" scripts/gpu_smoke.py --out "$OUT"; }

# TRITON_INTERPRET=0: the Triton kernels compiled for the GPU (the tests' default is the
# CPU interpreter, which would also serve CUDA tensors)
stage_tests() {
  TRITON_INTERPRET=0 "$PY" -m pytest -q -ra tests/test_gpu.py tests/test_api.py \
    tests/test_custom_ops.py -p no:cacheprovider --junitxml "$OUT/tests_gpu.xml" || return 1
  TRITON_INTERPRET=0 "$PY" -m pytest -q -ra tests bench -p no:cacheprovider \
    --ignore=tests/test_triton_compile.py --junitxml "$OUT/tests.xml"
}

stage_sanitizer() {
  local cs
  cs="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"
  for tool in memcheck racecheck synccheck; do
    TRITON_INTERPRET=0 "$cs" --tool "$tool" --error-exitcode 9 "$PY" scripts/gpu_smoke.py --out "$OUT/$tool" --sanitizer || return 1
  done
  # the CUDA C++ kernels under the GPU tests' shapes and options (not Triton's: its
  # compilation under the sanitizer takes most of the time budget)
  for tool in memcheck racecheck; do
    TRITON_INTERPRET=0 timeout 200 "$cs" --tool "$tool" --error-exitcode 9 \
      "$PY" -m pytest -q -x tests/test_gpu.py -k "cuda and not triton" -p no:cacheprovider \
      > "$OUT/${tool}_gpu_tests.log" 2>&1
    local code=$?
    tail -n 5 "$OUT/${tool}_gpu_tests.log"
    if [ $code -eq 124 ]; then
      echo "$tool over the GPU tests: time cap reached (the smoke run above passed)"
    elif [ $code -ne 0 ]; then
      return 1
    fi
  done
}

stage_bench() {
  export TRITON_INTERPRET=0
  "$PY" -m bench.harness --device cuda --csv "$OUT/cuda.csv" --case-timeout 240 &&
  "$PY" -m bench.harness --device cuda --csv "$OUT/cuda.csv" --case-timeout 240 \
      --shapes qvh,tacos,long4k --modes crit_fwdbwd &&
  "$PY" -m bench.plot --csv "$OUT/cuda.csv" --out "$OUT/cuda.png"
}

stage_tune() { "$PY" scripts/gpu_tune.py --out "$OUT" --budget-s 480; }

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(all)
[ "${stages[0]}" = "all" ] && stages=(build smoke tests sanitizer bench)
rc=0
for s in "${stages[@]}"; do
  case "$s" in
    build|smoke|tests|sanitizer|bench|tune) run_stage "$s" "stage_$s" || rc=1 ;;
    *) echo "unknown stage $s (build smoke tests sanitizer bench tune all)" >&2; exit 2 ;;
  esac
done
log "done, rc=$rc"
exit $rc
