"""Sweep of the GPU block sizes of the fused GPU backends (the `tune` stage of the GPU check).

    python scripts/gpu_tune.py --out OUT [--backends triton,cuda] [--shapes qvh,long16k,tacos]
        [--budget-s 540] [--dry-run]

Each (backend, shape, candidate) case is the benchmark's forward+backward of L_clip + L_boun
(float32, default options) in a fresh child process (`bench.harness.run_case`), with the
candidate given through the environment: `CLIPTBP_TRITON_GPU_BLOCKS` for Triton (block
sizes, warps, columns per split of the float32/16-bit kernels), `CLIPTBP_CUDA_COL_CHUNK`
for the CUDA C++ kernels (columns per work item). Results go to OUT/tune.csv as they come
(one row per case, with the wall clock and the CUDA-graph GPU time), and the best candidate
per backend and shape (least GPU time, else least wall clock) to OUT/tune.json. The sweep
stops starting cases once --budget-s seconds have passed, so one call stays under the GPU
check's 10-minute cap; what ran is kept.

The defaults in cliptbp_kernels/backends/triton/blocks.py (_Blocks) and backends/cuda.py
(col_chunk) are to be set from tune.json; nothing is applied automatically.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402

CANDIDATES = {
    "triton": ("CLIPTBP_TRITON_GPU_BLOCKS", [
        # the current default first; sm_90 stack frames (D=256, float32) of the forward tile
        # kernel / the backward positive-block kernel in the comments
        "BM=32,BN=64,BK=32,warps=4,bwarps=8",  # 8 / 0 bytes
        "BM=64,BN=64,BK=32,warps=4,bwarps=4",  # 368 / 920: the earlier default
        "BM=64,BN=64,BK=32,warps=8,bwarps=8",  # 104 / 8
        "BM=32,BN=32,BK=32,warps=4,bwarps=4",  # 80 / 72
        "BM=32,BN=64,BK=32,warps=8,bwarps=8",  # 8 / 0
        "BM=32,BN=64,BK=32,warps=4,bwarps=8,cols=2048",
    ]),
    "cuda": ("CLIPTBP_CUDA_COL_CHUNK", ["1024", "256", "512", "4096"]),  # default first
}
FIELDS = ["backend", "shape", "candidate", "status", "median_ms", "gpu_ms", "peak_mem_mb"]


def plan(backends, shapes):
    """The (backend, shape, env var, candidate) cases, in sweep order."""
    return [(b, s, CANDIDATES[b][0], c) for s in shapes for b in backends
            for c in CANDIDATES[b][1]]


def best(rows):
    """{backend: {shape: row}} of the fastest ok case (GPU time, else wall clock)."""
    out = {}
    for r in rows:
        if r["status"] != "ok":
            continue
        key = r.get("gpu_ms") if r.get("gpu_ms") not in (None, "") else r["median_ms"]
        cur = out.setdefault(r["backend"], {}).get(r["shape"])
        if cur is None or float(key) < float(cur["_key"]):
            out[r["backend"]][r["shape"]] = dict(r, _key=key)
    return {b: {s: {k: v for k, v in r.items() if k != "_key"} for s, r in d.items()}
            for b, d in out.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="out/gpu_check")
    p.add_argument("--backends", default="triton,cuda")
    p.add_argument("--shapes", default="qvh,long16k,tacos")
    p.add_argument("--budget-s", type=float, default=540.0)
    p.add_argument("--case-timeout", type=float, default=120.0)
    p.add_argument("--dry-run", action="store_true", help="print the cases, run nothing")
    args = p.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    for b in backends:
        if b not in CANDIDATES:
            p.error(f"unknown backend {b!r} (one of {sorted(CANDIDATES)})")
    shapes = [s for s in args.shapes.split(",") if s]
    for s in shapes:
        harness.get_shape(s)  # ValueError for an unknown shape
    cases = plan(backends, shapes)
    if args.dry_run:
        for b, s, var, c in cases:
            print(f"{b} {s} {var}={c}")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    rows = []
    with open(out / "tune.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for n, (b, s, var, c) in enumerate(cases, 1):
            if time.monotonic() - start > args.budget_s:
                print(f"budget of {args.budget_s:.0f} s reached: {len(cases) - n + 1} cases "
                      "not run", flush=True)
                break
            env = dict(os.environ, TRITON_INTERPRET="0", **{var: c})
            info = harness.run_case(b, s, "fwdbwd", device="cuda", warmup=3,
                                    timeout=args.case_timeout, env=env)
            row = dict(backend=b, shape=s, candidate=c, status=info["status"])
            for k in ("median_ms", "gpu_ms", "peak_mem_mb"):
                v = info.get(k)
                row[k] = f"{v:.6g}" if isinstance(v, (int, float)) else ""
            rows.append(row)
            w.writerow(row)
            f.flush()
            print(f"[{n}/{len(cases)}] {b:6s} {s:8s} {c:34s} {row['status']:7s} "
                  f"wall {row['median_ms'] or '-'} ms  GPU {row['gpu_ms'] or '-'} ms", flush=True)
    chosen = best(rows)
    (out / "tune.json").write_text(json.dumps(chosen, indent=2))
    for b, by_shape in chosen.items():
        for s, r in by_shape.items():
            print(f"best {b} {s}: {r['candidate']} (GPU {r['gpu_ms'] or '-'} ms, wall "
                  f"{r['median_ms']} ms)")
    return 0 if any(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
