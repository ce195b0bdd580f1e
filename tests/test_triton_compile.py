"""The Triton kernels compile for the GPU targets (sm_90: H100/H200) on a machine without a
GPU: every variant the launchers would launch, in a subprocess without the interpreter (see
tests/triton_compile.py). The interpreter runs the kernels' semantics on the CPU; this checks
what only the compiler sees."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cliptbp_kernels import _triton_backend

pytestmark = pytest.mark.skipif(not _triton_backend.available(), reason="triton is not installed")

SCRIPT = Path(__file__).resolve().parent / "triton_compile.py"


def test_every_kernel_variant_compiles_for_sm90():
    env = dict(os.environ, TRITON_INTERPRET="0")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--arch", "90"], env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert "kernel variants compiled for sm_90" in last, last
    assert int(last.split()[1]) >= 7 * 4  # every kernel, every input dtype
