"""Host time of one training step of the fused Triton path, kernels left out.

At small shapes (QVHighlights: B=32, T=75) a GPU step is bound by what the host does before
the kernels run: argument checks, the Python of the launchers, allocations, autograd. This
measures exactly that: ``clip_boundary_losses`` forward + ``.backward()`` with the Triton
launches recorded instead of run (`cliptbp_kernels.backends.triton.record_launches`), through
the eager ``autograd.Function`` path and through the ``torch.library`` custom ops, side by side.

    .venv/bin/python -m bench.host                 # CPU tensors (Triton interpreter mode)
    .venv/bin/python -m bench.host --device cuda   # on a GPU: CUDA tensors, same launches

On the CPU, D defaults to 4 so that zeroing and accumulating the gradient (real memory work
on the CPU, an asynchronous kernel on a GPU) does not count.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Optional, Sequence


def measure(path: str, B: int, T: int, D: int, device: str, repeats: int,
            check_labels: bool) -> dict:
    """Median and 20/80 percentiles, in microseconds, of one recorded step via `path`
    ("eager" or "custom op"), and the launches recorded per step."""
    import torch

    import cliptbp_kernels as ck
    from cliptbp_kernels.backends import _ops
    from cliptbp_kernels.backends.triton import record_launches

    from . import harness

    g = torch.Generator().manual_seed(0)
    emb = torch.randn(B, T, D, generator=g).to(device).requires_grad_(True)
    labels = torch.zeros(B, T, dtype=torch.int64)
    labels[:, T // 4: T // 2] = 1
    labels = labels.to(device)

    def step():
        emb.grad = None
        lc, lb = ck.clip_boundary_losses(emb, labels, backend="triton",
                                         check_labels=check_labels)
        (lc + lb).backward()

    step()  # one real call first: first-use work (the self-check, compiling) is not measured
    eager_ok = _ops.eager_ok
    if path == "custom op":
        _ops.eager_ok = lambda emb, labels: False
    try:
        with record_launches() as launches:
            for _ in range(20):
                step()
            n0 = len(launches)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                step()
                times.append((time.perf_counter() - t0) * 1e6)
            per_step = (len(launches) - n0) // repeats
    finally:
        _ops.eager_ok = eager_ok
    return {"path": path, "median_us": statistics.median(times),
            "p20_us": harness.percentile(times, 20), "p80_us": harness.percentile(times, 80),
            "launches": per_step}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--shape", default="32,75", help="B,T (default 32,75: QVHighlights)")
    p.add_argument("--dim", type=int, default=None, help="D (default: 4 on cpu, 256 on cuda)")
    p.add_argument("--repeats", type=int, default=300)
    p.add_argument("--check-labels", action="store_true",
                   help="keep the eager label check (one device sync on a GPU)")
    args = p.parse_args(argv)
    if args.device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        if "cliptbp_kernels" in sys.modules:
            p.error("CPU tensors need TRITON_INTERPRET=1 before cliptbp_kernels is imported")
        os.environ["TRITON_INTERPRET"] = "1"
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    try:
        B, T = (int(x) for x in args.shape.split(","))
    except ValueError:
        p.error(f"--shape expects B,T; got {args.shape!r}")
    D = args.dim or (4 if args.device == "cpu" else 256)
    print(f"host time of one forward + backward step, Triton launches recorded, not run: "
          f"B={B} T={T} D={D} on {args.device}", flush=True)
    print("| path | median us | p20 us | p80 us | launches |\n|---|---|---|---|---|")
    for path in ("eager", "custom op"):
        r = measure(path, B, T, D, args.device, args.repeats, args.check_labels)
        print(f"| {r['path']} | {r['median_us']:.0f} | {r['p20_us']:.0f} | {r['p80_us']:.0f} "
              f"| {r['launches']} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
