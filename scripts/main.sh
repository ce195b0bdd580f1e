#!/usr/bin/env bash
# The main job: set up (scripts/setup.sh), then train the reference moment retrieval model on
# the built-in synthetic data set with and without the ClipTBP losses (3 seeds) and print the
# comparison table, plus the time of one training step at TACoS length with the fused
# criterion against the PyTorch reference. Results: runs/compare/comparison.{md,json}.
# Extra arguments go to `python -m cliptbp_kernels.pipeline.compare` (e.g. --seeds 0 --epochs 4).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/setup.sh
exec .venv/bin/python -m cliptbp_kernels.pipeline.compare "$@"
