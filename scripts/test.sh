#!/usr/bin/env bash
# Set up (scripts/setup.sh), lint (ruff, configured in pyproject.toml), run the test suite and
# the benchmark checks, then the CPU kernel tests again against an AddressSanitizer +
# UndefinedBehaviorSanitizer build of the kernels (scripts/sanitize.sh). Exits non-zero if any
# part fails.
# Extra arguments go to pytest, e.g. scripts/test.sh -x -k clip_pair
#
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

rc=0
echo "test.sh: ruff check"
if ! .venv/bin/ruff check .; then
  echo "test.sh: ruff check FAILED" >&2
  rc=1
fi

t=$SECONDS
prc=0
.venv/bin/python -m pytest -q tests "$@" || prc=$?
took "pytest" "$t"
if [ "$prc" -eq 5 ]; then
  echo "test.sh: pytest collected no tests: treating that as a failure" >&2
fi
[ "$prc" -eq 0 ] || rc=$prc

sanitize="${CLIPTBP_TEST_SANITIZE:-auto}"
if [ "$sanitize" = "auto" ]; then
  if [ "$#" -eq 0 ]; then sanitize=1; else sanitize=0; fi
fi
if [ "$sanitize" = "1" ]; then
  echo "test.sh: sanitizer run (scripts/sanitize.sh)"
  src=0
  t=$SECONDS
  bash scripts/sanitize.sh || src=$?
  took "the sanitizer run" "$t"
  if [ "$src" -ne 0 ]; then
    echo "test.sh: sanitizer run FAILED (exit $src)" >&2
    [ "$rc" -ne 0 ] || rc=$src
  fi
else
  echo "test.sh: sanitizer run skipped (CLIPTBP_TEST_SANITIZE=${CLIPTBP_TEST_SANITIZE:-auto}, $# pytest argument(s))"
fi
took "the whole run" "$T0"
exit "$rc"
