#!/usr/bin/env bash
# Set up (scripts/setup.sh), then run the test suite and the benchmark checks.
# Extra arguments go to pytest, e.g. scripts/test.sh -x -k clip_pair
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/setup.sh

rc=0
.venv/bin/python -m pytest -q tests bench "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
  echo "test.sh: pytest collected no tests: treating that as a failure" >&2
fi
exit "$rc"
