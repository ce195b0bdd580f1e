#!/usr/bin/env bash
# Set up (scripts/setup.sh), run the test suite and the benchmark checks, then the CPU kernel
# tests again against an AddressSanitizer + UndefinedBehaviorSanitizer build of the kernels
# (scripts/sanitize.sh). Exits non-zero if either part fails.
# Extra arguments go to pytest, e.g. scripts/test.sh -x -k clip_pair
#
#   CLIPTBP_TEST_SANITIZE=auto (default): run the sanitizer step when no pytest arguments are
#                          given (as in CI); 1: always; 0: never.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/setup.sh

rc=0
.venv/bin/python -m pytest -q tests bench "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
  echo "test.sh: pytest collected no tests: treating that as a failure" >&2
fi

sanitize="${CLIPTBP_TEST_SANITIZE:-auto}"
if [ "$sanitize" = "auto" ]; then
  if [ "$#" -eq 0 ]; then sanitize=1; else sanitize=0; fi
fi
if [ "$sanitize" = "1" ]; then
  echo "test.sh: sanitizer run (scripts/sanitize.sh)"
  src=0
  bash scripts/sanitize.sh || src=$?
  if [ "$src" -ne 0 ]; then
    echo "test.sh: sanitizer run FAILED (exit $src)" >&2
    [ "$rc" -ne 0 ] || rc=$src
  fi
else
  echo "test.sh: sanitizer run skipped (CLIPTBP_TEST_SANITIZE=${CLIPTBP_TEST_SANITIZE:-auto}, $# pytest argument(s))"
fi
exit "$rc"
