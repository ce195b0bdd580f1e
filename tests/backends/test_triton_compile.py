"""The Triton kernels compile for the GPU targets (sm_90: H100/H200) on a machine without a
GPU: the variants the launchers launch over the planned inputs (every kernel with every input
dtype, every constexpr value on float32 and float64), in a subprocess without the interpreter
(see tests/helpers/triton_compile.py). The interpreter runs the kernels' semantics on the CPU; this
checks what only the compiler sees."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from cliptbp_kernels.backends import triton as _triton_backend
from paths import REPO

pytestmark = pytest.mark.skipif(not _triton_backend.available(), reason="triton is not installed")

SCRIPT = REPO / "tests" / "helpers" / "triton_compile.py"
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def test_plan_covers_the_full_product(monkeypatch):
    # every constexpr value of the full product (both shapes, every option set) on float32
    # and float64, and every kernel with both losses on for every dtype, at the GPU block
    # sizes (the compile script's); a plan short of either is caught
    import triton_compile as tc

    monkeypatch.setenv(_triton_backend.SIZES_ENV, "gpu")
    monkeypatch.delenv(_triton_backend.GPU_BLOCKS_ENV, raising=False)

    assert tc.missing_from_plan(DTYPES) == []
    no_short = {**tc.PLAN, torch.float64: [p for p in tc.PLAN[torch.float64] if p[0] != tc.SHORT]}
    assert ("torch.float64", "_norm_kernel", "BK", "32") in tc.missing_from_plan(DTYPES, no_short)
    only_k1 = {**tc.PLAN, torch.bfloat16: [(tc.LONG, (3,))]}
    assert ("torch.bfloat16", "_sparse_bwd_kernel") in tc.missing_from_plan(DTYPES, only_k1)


def test_every_kernel_variant_compiles_for_sm90():
    env = dict(os.environ, TRITON_INTERPRET="0")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--arch", "90"], env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    last = lines[-1]
    assert "kernel variants compiled for sm_90" in last, last
    assert int(last.split()[1]) >= 6 * 4  # every kernel, every input dtype
    # register spills: no variant keeps more than 64 bytes of stack frame (the similarity
    # tile kernels once spilled up to 920 bytes, the chosen-pair recomputation at k=300 up to
    # 3.5 KB); checked where Triton's cuobjdump reported the resource usage
    stacks = [(int(m.group(1)), line) for line in lines
              for m in [re.search(r"STACK:(\d+)", line)] if m]
    if stacks:
        assert len(stacks) == int(last.split()[1])
        worst = max(stacks)
        assert worst[0] <= 64, worst[1]
