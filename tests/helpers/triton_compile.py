"""Compile the Triton kernels as the launchers launch them, for real GPU targets, on a machine
without a GPU: the launchers run on CPU tensors with launches recorded instead of run
(`cliptbp_kernels.backends.triton.record_launches`) over the inputs and options of `PLAN`
(every kernel with every input dtype, every constexpr value on float32 and float64; checked
against the full product of shapes and option sets before compiling), and each distinct
(kernel, signature, constexprs) is compiled to a cubin with `triton.compile` for the
targets given (default: sm_80 and sm_90). This catches what the interpreter cannot: type
errors in branches, non-constexpr globals, dot shapes below 16, unsupported conversions. Each
line also gives the variant's registers per thread and stack frame (local memory: spilled
registers) from `cuobjdump --dump-resource-usage` (the one Triton ships), when that tool is
there.

    python tests/helpers/triton_compile.py [--arch 80,90] [--quick]

Run without TRITON_INTERPRET (the kernels must be JIT functions, not interpreted ones).
Prints one line per compiled variant and a summary; exits 1 on the first failure.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from cliptbp_kernels.backends import triton as TB

TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32",
         torch.float64: "fp64", torch.int64: "i64", torch.int32: "i32", torch.uint8: "u8",
         torch.bool: "i1"}


def arg_type(a):
    if isinstance(a, torch.Tensor):
        return "*" + TYPES[a.dtype]
    if isinstance(a, bool):
        return "i1"
    if isinstance(a, int):
        return "i32" if -2**31 <= a < 2**31 else "i64"
    if isinstance(a, float):
        return "fp32"
    raise TypeError(f"unexpected kernel argument {a!r}")


def resource_usage(cubin: bytes) -> str:
    """"REG:n STACK:m" of a cubin (registers per thread, stack frame bytes), or "" when
    Triton's cuobjdump is not there."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                        "cuobjdump")
    if not os.path.exists(tool):
        return ""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True,
                             text=True, timeout=60).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", out)
    return f"REG:{m.group(1)} STACK:{m.group(2)}" if m else ""


# The option sets a launch is recorded with (positives/negatives as codes: 0 any/cross, 1
# same/all): k = 20, k = 300 with a wide radius, k = 0 without L_clip, k = 1 without L_boun.
OPTION_SETS = [
    dict(k=20, positives=0, negatives=0, radius=1, want_clip=True, want_boun=True),
    dict(k=300, positives=1, negatives=1, radius=3, want_clip=True, want_boun=True),
    dict(k=0, positives=0, negatives=0, radius=1, want_clip=False, want_boun=True),
    dict(k=1, positives=0, negatives=0, radius=1, want_clip=True, want_boun=False),
]

# What each input dtype is compiled with: (B, T, D) shapes, each with the indices of the
# OPTION_SETS it runs. The long video with D = 256 gives every dtype its largest tiles (where
# registers spill first) and runs every option set on float32 and float64; the short one with
# D = 19 gives the small-D block sizes, which do not depend on the options beyond k, so it runs
# the widest option set (k = 300, positives "same", negatives "all", radius 3) on float32 and
# float64 (float16 and bfloat16 take float32's block sizes at every D). float16 and bfloat16
# differ from float32 only in the input loads, so they share the option sets out: every kernel
# still compiles for each of them with both losses on, float16 with k = 20 and k = 0 (the
# chain kernel with and without hard negatives, L_clip off), bfloat16 with k = 300 (the
# largest top-k tiles) and k = 1 (L_boun off). `missing_from_plan` checks these claims
# against the full product of shapes and option sets.
LONG, SHORT = (2, 700, 256), (3, 77, 19)
PLAN = {torch.float32: [(SHORT, (1,)), (LONG, (0, 1, 2, 3))],
        torch.float64: [(SHORT, (1,)), (LONG, (0, 1, 2, 3))],
        torch.float16: [(LONG, (0, 2))], torch.bfloat16: [(LONG, (1, 3))]}


def launches(dtypes, plan=PLAN, with_options=False):
    """(kernel, args, meta) of every launch of forward and backward over the given inputs
    (``plan``: per dtype, the (B, T, D) shapes with the indices of OPTION_SETS each runs);
    with ``with_options``, (kernel, args, meta, dtype, option set) instead."""
    out = []
    for dtype in dtypes:
        for (B, T, D), picks in plan[dtype]:
            g = torch.Generator().manual_seed(T)
            emb = torch.randn(B, T, D, generator=g).to(dtype)
            labels = torch.randint(-1, 3, (B, T), generator=g)
            for opt in (OPTION_SETS[i] for i in picks):
                opts = (opt["k"], 0.07, opt["positives"], opt["negatives"], opt["radius"],
                        0.3, 0.1, 0.1, opt["want_clip"], opt["want_boun"])
                with TB.record_launches() as rec:
                    res = TB.OPS.run_forward(emb, labels, opts)
                    gz = torch.ones(B, dtype=torch.float64)
                    TB.OPS.run_backward(emb, labels, opts, gz, gz, res.saved)
                out.extend((*r, dtype, opt) if with_options else r for r in rec)
    return out


def _coverage(dtypes, plan):
    """What a plan compiles: (dtype, kernel, constexpr, value) of every launch, and (dtype,
    kernel) of the launches with both losses on."""
    values, both = set(), set()
    for kernel, _, meta, dtype, opt in launches(dtypes, plan, with_options=True):
        name = kernel.fn.__name__
        values.update((str(dtype), name, k, repr(v)) for k, v in meta.items())
        if opt["want_clip"] and opt["want_boun"]:
            both.add((str(dtype), name))
    return values, both


def missing_from_plan(dtypes, plan=PLAN) -> list:
    """What ``plan`` leaves out of the full product (both shapes, every option set): a
    constexpr value of a kernel on float32 or float64, or a kernel compiled with both losses
    on for any dtype. Empty when the plan's claims hold."""
    full = {d: [(SHORT, tuple(range(len(OPTION_SETS)))), (LONG, tuple(range(len(OPTION_SETS))))]
            for d in dtypes}
    want_values, want_both = _coverage(dtypes, full)
    got_values, got_both = _coverage(dtypes, plan)
    exact = {str(torch.float32), str(torch.float64)}
    return sorted(v for v in want_values - got_values if v[0] in exact) + sorted(
        want_both - got_both)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="80,90", help="comma-separated compute capabilities")
    ap.add_argument("--quick", action="store_true", help="float32 and float64 only")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("triton_compile.py: unset TRITON_INTERPRET (kernels must be compiled, not "
              "interpreted)")
        return 2
    dtypes = [torch.float32, torch.float64]
    if not args.quick:
        dtypes += [torch.float16, torch.bfloat16]
    missing = missing_from_plan(dtypes)
    if missing:
        print(f"FAILED the plan leaves out {len(missing)} of the full product's variants, e.g. "
              f"{missing[:5]}")
        return 1
    seen = {}
    for kernel, kargs, meta in launches(dtypes):
        names = [n for n in kernel.arg_names]
        meta = dict(meta)
        num_warps = meta.pop("num_warps", 4)
        sig = {}
        pos = 0
        for n in names:
            if n in meta:
                sig[n] = "constexpr"
            else:
                sig[n] = arg_type(kargs[pos])
                pos += 1
        key = (kernel.fn.__name__, tuple(sig.items()), tuple(sorted(meta.items(), key=str)),
               num_warps)
        seen.setdefault(key, (kernel, sig, meta, num_warps))
    archs = [int(a) for a in args.arch.split(",") if a]
    n = 0
    t0 = time.time()
    for kernel, sig, meta, num_warps in seen.values():
        consts = {k: (v if not isinstance(v, torch.dtype) else v) for k, v in meta.items()}
        for cc in archs:
            t = time.time()
            try:
                src = ASTSource(fn=kernel, signature=sig, constexprs=consts)
                k = triton.compile(src, target=GPUTarget("cuda", cc, 32),
                                   options={"num_warps": num_warps})
                assert k.asm.get("cubin"), "no cubin produced"
            except Exception as exc:  # report the variant, then fail
                print(f"FAILED {kernel.fn.__name__} sm_{cc} {meta}: {type(exc).__name__}: {exc}")
                return 1
            n += 1
            print(f"ok {kernel.fn.__name__:20s} sm_{cc} {time.time() - t:5.1f}s "
                  f"{resource_usage(k.asm['cubin'])} warps={num_warps} "
                  + " ".join(f"{k}={v}" for k, v in meta.items()), flush=True)
    print(f"triton_compile: {n} kernel variants compiled for sm_{'/sm_'.join(map(str, archs))} "
          f"in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
