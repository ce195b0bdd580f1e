#!/usr/bin/env bash
# Staged GPU check (README.md, "Benchmarks (CPU)", and docs/testing.md). Each stage stays well under 10 minutes and
# writes its logs and results to $OUT as it goes, so any one call returns something useful.
#
#   bash scripts/gpu_check.sh all                 # build smoke tests sanitizer bench
#   bash scripts/gpu_check.sh build smoke         # any subset, in the order given
#
#   bash scripts/gpu_check.sh lease               # what fits one call of a 15-minute lease
#
# Stages:
#   build      nvidia-smi, nvcc version, `pip install --no-build-isolation -e .` (no network
#              needed: torch, triton, pybind11, cmake, ninja must be installed already), for
#              the present GPU's architecture only (CLIPTBP_CUDA_ARCH, default: detected),
#              without the CPU emulation module, with every core
#   smoke      one call per available backend (triton included) on CUDA tensors,
#              determinism, TF32 off,
#              the CUDA module's runtime (scripts/gpu_smoke.py), then
#              `python -m cliptbp_kernels.selfcheck --no-timing` (selfcheck.json, .log)
#   gputests   the GPU tests (tests/backends/test_gpu.py: every GPU backend against docs/losses.md, and the
#              API / custom-op tests that use CUDA), with the Triton kernels compiled
#              (TRITON_INTERPRET=0), in parallel workers when pytest-xdist is installed
#   tests      gputests, then the whole suite (TRITON_INTERPRET=0)
#   sanitizer  compute-sanitizer memcheck, racecheck and synccheck over the smoke calls of
#              every GPU backend, then memcheck and racecheck over the CUDA C++ backend's GPU
#              tests (tests/backends/test_gpu.py -k cuda, each run capped at 200 s)
#   targets    the cases of the speed and memory targets only (bench.harness --targets) and
#              their verdicts with the floor estimate (bench.targets, with the copy bandwidth
#              and float32 rate measured on the card first), then the host time of a Triton
#              step through both call paths (bench.host): targets.md, targets.json
#   bench      bench.harness --device cuda (+ plot), results in cuda.csv and cuda.png
#   tune       (not in "all") sweep of the GPU backends' block sizes at the benchmark shapes
#              (scripts/gpu_tune.py; starts no case after its budget): tune.csv, tune.json
#   lease      build smoke gputests targets tune: the stages that settle the GPU backends'
#              correctness, targets and block sizes, in one call of under 10 minutes
#
# Time: with GPU_CHECK_DEADLINE_S=N (lease: 540 unless set) a stage starts only while the
# seconds left since the script started cover its usual length, runs with the time left as
# its limit, and the tune sweep gets what remains.
#
# Output: stages write their logs to a work folder (GPU_CHECK_WORK, default a new folder in
# /tmp); after each stage $OUT receives at most 8 files: summary.txt, smoke.json, cuda.csv,
# targets.md, tune.csv, tune.json and logs.tgz (the whole work folder), so that a device
# call that brings back at most 8 files brings back everything.
#
# Environment: OUT (default out/gpu_check), PYTHON (default python3).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/out/gpu_check}"
PY="${PYTHON:-python3}"
WORK="${GPU_CHECK_WORK:-$(mktemp -d /tmp/cliptbp_gpu_check.XXXXXX)}"
mkdir -p "$OUT" "$WORK"
export CLIPTBP_CUDA="${CLIPTBP_CUDA:-1}"
export ROOT OUT PY WORK
T0=$SECONDS

log() { echo "[gpu_check $(date -u +%H:%M:%S) +$((SECONDS - T0))s] $*" | tee -a "$WORK/summary.txt"; }

# at most 8 files in $OUT: the summary, the main results, and everything else as one archive
publish() {
  local f
  for f in summary.txt smoke.json cuda.csv targets.md tune.csv tune.json; do
    [ -f "$WORK/$f" ] && cp "$WORK/$f" "$OUT/$f"
  done
  tar czf "$OUT/logs.tgz.tmp" -C "$WORK" . 2>/dev/null && mv "$OUT/logs.tgz.tmp" "$OUT/logs.tgz"
}

# seconds left before the deadline (a large number without one)
left() {
  if [ "${DEADLINE:-0}" -gt 0 ]; then echo $((DEADLINE - (SECONDS - T0))); else echo 100000; fi
}

# run_stage NAME NEEDS_S: stage_NAME under the time left, if that covers NEEDS_S seconds
run_stage() {
  local name="$1" needs="$2" start=$SECONDS rem code
  rem=$(left)
  if [ "$rem" -lt "$needs" ]; then
    log "stage $name: SKIPPED (${rem} s left before the deadline, it needs about ${needs} s)"
    return 1
  fi
  log "stage $name: start"
  STAGE_LEFT=$rem timeout --kill-after=15 "$rem" bash -c "stage_$name" > "$WORK/$name.log" 2>&1
  code=$?
  if [ $code -eq 0 ]; then
    log "stage $name: ok ($((SECONDS - start)) s)"
  else
    [ $code -eq 124 ] && log "stage $name: stopped at the deadline"
    log "stage $name: FAILED (exit $code, $((SECONDS - start)) s), see $name.log in logs.tgz"
    tail -n 30 "$WORK/$name.log"
  fi
  publish
  return $code
}

stage_build() {
  nvidia-smi || true
  command -v nvcc && nvcc --version || /usr/local/cuda/bin/nvcc --version || true
  "$PY" -c "import torch, sys; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
  local arch="${CLIPTBP_CUDA_ARCH:-}"
  if [ -z "$arch" ]; then
    arch="$("$PY" -c "import torch; a, b = torch.cuda.get_device_capability(0); print(f'{a}{b}')")" || return 1
  fi
  echo "building for CUDA architecture(s) $arch"
  CLIPTBP_CUDA_ARCH="$arch" CLIPTBP_CUDA_EMU="${CLIPTBP_CUDA_EMU:-0}" \
    CLIPTBP_BUILD_JOBS="${CLIPTBP_BUILD_JOBS:-$(nproc)}" \
    "$PY" -m pip install --no-build-isolation --no-deps -e . -v || return 1
  "$PY" -c "import cliptbp_kernels as ck; b = ck.available_backends('cuda'); print('backends', b); assert {'triton', 'cuda'} <= set(b), 'a GPU backend is missing'"
}

stage_smoke() {
  TRITON_INTERPRET=0 "$PY" scripts/gpu_smoke.py --out "$WORK" || return 1
  # the package's own check of every backend on every device and dtype (report in logs.tgz)
  TRITON_INTERPRET=0 "$PY" -m cliptbp_kernels.selfcheck --no-timing \
    --json "$WORK/selfcheck.json" > "$WORK/selfcheck.log" 2>&1
}

# parallel pytest workers when pytest-xdist is there (Triton compiles in every worker)
xdist_args() {
  if "$PY" -c "import xdist" 2>/dev/null; then echo "-n ${GPU_CHECK_WORKERS:-8}"; fi
}

# TRITON_INTERPRET=0: the Triton kernels compiled for the GPU (the tests' default is the
# CPU interpreter, which would also serve CUDA tensors)
stage_gputests() {
  # shellcheck disable=SC2046
  TRITON_INTERPRET=0 "$PY" -m pytest -q -ra $(xdist_args) tests/backends/test_gpu.py tests/library/test_api.py \
    tests/backends/test_custom_ops.py -p no:cacheprovider --junitxml "$WORK/tests_gpu.xml"
}

stage_tests() {
  stage_gputests || return 1
  TRITON_INTERPRET=0 "$PY" -m pytest -q -ra tests -p no:cacheprovider \
    --ignore=tests/backends/test_triton_compile.py --junitxml "$WORK/tests.xml"
}

stage_sanitizer() {
  local cs
  cs="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"
  for tool in memcheck racecheck synccheck; do
    TRITON_INTERPRET=0 "$cs" --tool "$tool" --error-exitcode 9 "$PY" scripts/gpu_smoke.py --out "$WORK/$tool" --sanitizer || return 1
  done
  # the CUDA C++ kernels under the GPU tests' shapes and options (not Triton's: its
  # compilation under the sanitizer takes most of the time budget)
  for tool in memcheck racecheck; do
    TRITON_INTERPRET=0 timeout 200 "$cs" --tool "$tool" --error-exitcode 9 \
      "$PY" -m pytest -q -x tests/backends/test_gpu.py -k "cuda and not triton" -p no:cacheprovider \
      > "$WORK/${tool}_gpu_tests.log" 2>&1
    local code=$?
    tail -n 5 "$WORK/${tool}_gpu_tests.log"
    if [ $code -eq 124 ]; then
      echo "$tool over the GPU tests: time cap reached (the smoke run above passed)"
    elif [ $code -ne 0 ]; then
      return 1
    fi
  done
}

stage_targets() {
  export TRITON_INTERPRET=0
  "$PY" scripts/gpu_ceilings.py --out "$WORK/ceilings.json" || return 1
  "$PY" -m bench.harness --device cuda --targets --csv "$WORK/cuda.csv" --case-timeout 150 &&
  "$PY" -m bench.targets --csv "$WORK/cuda.csv" --json "$WORK/targets.json" \
    $("$PY" -c "import json; c = json.load(open('$WORK/ceilings.json')); print(f\"--tflops {c['fp32_tflops']:.1f} --tbps {c['copy_tbps']:.2f}\")") \
    | tee "$WORK/targets.md" &&
  { echo; "$PY" -m bench.host --device cuda --repeats 200; } | tee -a "$WORK/targets.md"
}

stage_bench() {
  export TRITON_INTERPRET=0
  "$PY" -m bench.harness --device cuda --csv "$WORK/cuda.csv" --case-timeout 240 &&
  "$PY" -m bench.harness --device cuda --csv "$WORK/cuda.csv" --case-timeout 240 \
      --shapes qvh,tacos,long4k --modes crit_fwdbwd &&
  "$PY" -m bench.plot --csv "$WORK/cuda.csv" --out "$WORK/cuda.png"
}

# the sweep stops starting cases 30 s before the stage's time runs out
stage_tune() { "$PY" scripts/gpu_tune.py --out "$WORK" --budget-s $((STAGE_LEFT > 60 ? STAGE_LEFT - 30 : 30)); }

export -f log left stage_build stage_smoke xdist_args stage_gputests stage_tests \
  stage_sanitizer stage_targets stage_bench stage_tune

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(all)
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  log "no CUDA GPU visible to $PY (torch.cuda.is_available() is False): nothing to check"
  publish
  exit 1
fi
DEADLINE="${GPU_CHECK_DEADLINE_S:-0}"
if [ "${stages[0]}" = "all" ]; then
  stages=(build smoke tests sanitizer bench)
elif [ "${stages[0]}" = "lease" ]; then
  stages=(build smoke gputests targets tune)
  DEADLINE="${GPU_CHECK_DEADLINE_S:-540}"
fi
export DEADLINE T0
# the usual length of each stage on an H100/H200 machine (seconds), for the deadline
declare -A NEEDS=([build]=60 [smoke]=30 [gputests]=90 [tests]=600 [sanitizer]=300
                  [targets]=120 [bench]=480 [tune]=90)
rc=0
log "work folder $WORK, results to $OUT, stages: ${stages[*]}, deadline: ${DEADLINE} s"
for s in "${stages[@]}"; do
  case "$s" in
    build|smoke|gputests|tests|sanitizer|targets|bench|tune)
      run_stage "$s" "${NEEDS[$s]}" || rc=1 ;;
    *) echo "unknown stage $s (build smoke gputests tests sanitizer targets bench tune all lease)" >&2
       exit 2 ;;
  esac
done
log "done, rc=$rc"
publish
echo
echo "===== summary ====="
cat "$WORK/summary.txt"
[ -f "$WORK/smoke.json" ] && grep -h '"ok": false' -B2 "$WORK/smoke.json" | head -20
[ -f "$WORK/targets.md" ] && { echo; cat "$WORK/targets.md"; }
[ -f "$WORK/tune.json" ] && { echo; cat "$WORK/tune.json"; }
exit $rc
