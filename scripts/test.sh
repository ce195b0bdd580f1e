#!/usr/bin/env bash
# Set up (scripts/setup.sh), lint (ruff, configured in pyproject.toml), run the test suite and
# the benchmark checks, then the CPU kernel tests again against an AddressSanitizer +
# UndefinedBehaviorSanitizer build of the kernels (scripts/sanitize.sh). Exits non-zero if any
# part fails.
# Extra arguments go to pytest, e.g. scripts/test.sh -x -k clip_pair (then one pytest process)
#
#   CLIPTBP_TEST_SHARDS=2 (default without arguments): two pytest processes side by side;
#                          1: one process.
#   CLIPTBP_TEST_SANITIZE=auto (default): run the sanitizer step when no pytest arguments are
#                          given (as in CI); 1: always; 0: never.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# the whole run should stay under 30 minutes on 2 cores: say where the time went
T0=$SECONDS
took() { echo "test.sh: $1 took $(( (SECONDS - $2) / 60 )) min $(( (SECONDS - $2) % 60 )) s"; }

bash scripts/setup.sh
took "setup" "$T0"

# Idle threads sleep instead of spinning. The suite runs two pytest processes on the cores
# (below), each with torch's OpenMP threads and, under the Triton interpreter, numpy's
# OpenBLAS threads; a thread that spin-waits for a sibling the scheduler has taken off its
# core burns a whole time slice (two processes doing small matrix products side by side took
# about 11x the CPU time of one alone). OpenBLAS gets one thread (the interpreter's matrices are
# small), torch keeps its thread count (the CPU kernels' parallel paths still run) with
# passive waits. Either can be overridden from the environment.
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

rc=0
echo "test.sh: ruff check"
if ! .venv/bin/ruff check .; then
  echo "test.sh: ruff check FAILED" >&2
  rc=1
fi

sanitize="${CLIPTBP_TEST_SANITIZE:-auto}"
if [ "$sanitize" = "auto" ]; then
  if [ "$#" -eq 0 ]; then sanitize=1; else sanitize=0; fi
fi

# the sanitizer step (scripts/sanitize.sh); returns its exit status
run_sanitizer() {
  local src=0 t=$SECONDS
  echo "test.sh: sanitizer run (scripts/sanitize.sh)"
  bash scripts/sanitize.sh || src=$?
  took "the sanitizer run" "$t"
  [ "$src" -eq 0 ] || echo "test.sh: sanitizer run FAILED (exit $src)" >&2
  return "$src"
}

# pytest exit status 5 (nothing collected) is a failure too
pytest_rc() {
  [ "$1" -ne 5 ] || echo "test.sh: pytest collected no tests: treating that as a failure" >&2
  return "$1"
}

# Without pytest arguments the suite runs as two pytest processes side by side (most tests
# are single-threaded interpreted kernels, so one process leaves a core idle): shard 1 is the
# files below, followed by the sanitizer step; shard 2 is every other file under tests/, so a
# new test file always runs. CLIPTBP_TEST_SHARDS=1 runs one process, as with arguments.
SHARD1=(
  tests/backends/test_fused_backends.py
  tests/backends/test_triton_compile.py
  tests/backends/test_failures.py
  tests/backends/test_scale.py
  tests/backends/test_triton_launch.py
)
shards="${CLIPTBP_TEST_SHARDS:-2}"
[ "$#" -eq 0 ] || shards=1

if [ "$shards" = "1" ]; then
  t=$SECONDS
  prc=0
  .venv/bin/python -m pytest -q tests "$@" || prc=$?
  took "pytest" "$t"
  pytest_rc "$prc" || rc=$prc
  if [ "$sanitize" = "1" ]; then
    src=0
    run_sanitizer || src=$?
    [ "$rc" -ne 0 ] || rc=$src
  else
    echo "test.sh: sanitizer run skipped (CLIPTBP_TEST_SANITIZE=${CLIPTBP_TEST_SANITIZE:-auto}, $# pytest argument(s))"
  fi
else
  LOGS="$ROOT/build/test-logs"
  mkdir -p "$LOGS"
  ignores=()
  for f in "${SHARD1[@]}"; do ignores+=("--ignore=$f"); done
  echo "test.sh: pytest in two processes; output in $LOGS/shard1.log and shard2.log," \
       "printed when each ends"
  t=$SECONDS
  (
    r=0
    .venv/bin/python -m pytest -q -o cache_dir=.pytest_cache/shard1 "${SHARD1[@]}" || r=$?
    took "pytest shard 1" "$t"
    pytest_rc "$r" || true
    src=0
    if [ "$sanitize" = "1" ]; then run_sanitizer || src=$?; fi
    [ "$r" -ne 0 ] && exit "$r"
    exit "$src"
  ) > "$LOGS/shard1.log" 2>&1 &
  pid1=$!
  (
    r=0
    .venv/bin/python -m pytest -q -o cache_dir=.pytest_cache/shard2 tests "${ignores[@]}" || r=$?
    took "pytest shard 2" "$t"
    pytest_rc "$r"
  ) > "$LOGS/shard2.log" 2>&1 &
  pid2=$!
  s1=0; s2=0
  wait "$pid2" || s2=$?
  echo "test.sh: ---- shard 2 (every other file under tests/) ----"
  cat "$LOGS/shard2.log"
  wait "$pid1" || s1=$?
  echo "test.sh: ---- shard 1 (${SHARD1[*]}; then the sanitizer) ----"
  cat "$LOGS/shard1.log"
  label="pytest (both shards)"
  [ "$sanitize" != "1" ] || label="$label and the sanitizer"
  took "$label" "$t"
  for s in "$s1" "$s2"; do
    if [ "$s" -ne 0 ] && [ "$rc" -eq 0 ]; then rc=$s; fi
  done
  [ "$s1" -eq 0 ] || echo "test.sh: shard 1 FAILED (exit $s1)" >&2
  [ "$s2" -eq 0 ] || echo "test.sh: shard 2 FAILED (exit $s2)" >&2
fi
took "the whole run" "$T0"
exit "$rc"
