"""Does this package work on this machine? Run this first on a new GPU.

    python -m cliptbp_kernels.selfcheck                 # or: cliptbp-selfcheck
    python -m cliptbp_kernels.selfcheck --json report.json --no-timing

Prints the versions (package, torch, triton, CUDA), every device and its compute capability,
the architectures the CUDA module holds, which backends can run on which device and why the
others cannot; runs the self-check of every runnable fused backend on every device in every
dtype (its launchers against the reference on a small input with several windows, padding,
exact ties and k beyond the candidates: docs/losses.md, section 13.3); times each fused
backend against the reference at the benchmark shapes (quick: a few repeats; interpreted or
emulated backends are not timed); writes a JSON report to attach to an issue. Exits 1 when
any backend disagrees with the reference.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from typing import Dict, List, Optional, Sequence

import torch

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
#: (name, B, T, D): the benchmark shapes (bench/README.md)
SHAPES = (("qvh", 32, 75, 256), ("tacos", 8, 702, 256), ("long4k", 2, 4096, 256))


def versions() -> Dict[str, Optional[str]]:
    from . import __version__

    try:
        import triton

        triton_version: Optional[str] = triton.__version__
    except Exception as e:  # absent or broken: say so
        triton_version = f"not importable ({type(e).__name__}: {e})"
    return {"cliptbp_kernels": __version__, "torch": torch.__version__,
            "triton": triton_version, "cuda (torch)": torch.version.cuda,
            "python": platform.python_version(), "platform": platform.platform()}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def devices() -> List[Dict]:
    out = [{"device": "cpu", "name": _cpu_name(), "threads": torch.get_num_threads()}]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            out.append({"device": f"cuda:{i}", "name": torch.cuda.get_device_name(i),
                        "capability": f"sm_{major}{minor}"})
    return out


def backends_table(devs: Sequence[str]) -> List[Dict]:
    from .backends import REGISTRY, why_not

    return [{"backend": name, "device": d, "why_not": why_not(name, torch.device(d))}
            for name in REGISTRY for d in devs]


def _how(name: str, device: str) -> str:
    """How a backend runs on a device when that is not the real thing."""
    if device == "cpu" and name == "triton":
        return "Triton interpreter"
    if device == "cpu" and name == "cuda":
        return "CUDA emulation"
    return ""


def checks(rows: List[Dict]) -> List[Dict]:
    from .backends import selfcheck

    out = []
    for r in rows:
        if r["why_not"] is not None or r["backend"] == "reference":
            continue
        for dtype in DTYPES:
            res = selfcheck.compare(r["backend"], torch.device(r["device"]), dtype)
            out.append({"backend": r["backend"], "device": r["device"],
                        "dtype": selfcheck.dtype_name(dtype), "ok": res.ok,
                        "worst": res.worst, "seconds": round(res.seconds, 4)})
            print(f"  {r['backend']:>9} on {r['device']:<7} {out[-1]['dtype']:<9} "
                  f"{'ok' if res.ok else 'MISMATCH: ' + res.worst} ({res.seconds:.2f} s)",
                  flush=True)
    return out


def _time(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up (compiles / allocates)
    ts = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        ts.append(time.perf_counter() - t0)
    return 1000 * sorted(ts)[len(ts) // 2]


def timings(rows: List[Dict], repeats: int = 3) -> List[Dict]:
    """Median ms of clip_boundary_losses forward + backward, each fused backend and the
    reference, per shape (the reference is skipped where it would need over 4 GB)."""
    from .api import clip_boundary_losses

    out = []
    runnable = [(r["backend"], r["device"]) for r in rows
                if r["why_not"] is None and not _how(r["backend"], r["device"])]
    for dev in sorted({d for _, d in runnable}):
        device = torch.device(dev)
        names = [n for n, d in runnable if d == dev]
        for shape, B, T, D in SHAPES:
            g = torch.Generator().manual_seed(0)
            emb = torch.randn(B, T, D, generator=g).to(device).requires_grad_(True)
            labels = torch.zeros(B, T, dtype=torch.int64)
            labels[:, T // 10: T // 10 + max(2, T // 14)] = 1
            labels = labels.to(device)
            res = {"device": dev, "shape": shape, "B": B, "T": T, "D": D}
            for name in names:
                if name == "reference" and B * T * T * 4 * 8 > 4e9:
                    continue

                def step(name=name, emb=emb, labels=labels):
                    emb.grad = None
                    lc, lb = clip_boundary_losses(emb, labels, backend=name)
                    (lc + lb).backward()

                res[f"{name}_ms"] = round(_time(step, device, repeats), 3)
            if "reference_ms" in res:
                for name in names:
                    if name != "reference" and f"{name}_ms" in res:
                        res[f"{name}_speedup"] = round(res["reference_ms"] / res[f"{name}_ms"], 2)
            print("  " + ", ".join(f"{k}={v}" for k, v in res.items()), flush=True)
            out.append(res)
    return out


def cuda_module() -> Dict:
    from .backends import cuda

    if cuda._ext is None:
        return {"built": False, "why": str(cuda.IMPORT_ERROR)}
    archs = cuda.module_archs()
    return {"built": True, "architectures": list(archs),
            "holds": cuda.describe_archs(archs) if archs else "unknown (built before the "
            "architecture list was recorded)"}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="cliptbp-selfcheck", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", default="cliptbp_selfcheck.json", help="report file to write")
    p.add_argument("--no-timing", action="store_true", help="skip the timing")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per case (quick)")
    args = p.parse_args(argv)

    report: Dict = {"versions": versions(), "devices": devices(), "cuda_module": cuda_module()}
    print("cliptbp_kernels selfcheck")
    for k, v in report["versions"].items():
        print(f"  {k}: {v}")
    print("devices:")
    for d in report["devices"]:
        print("  " + ", ".join(f"{k}={v}" for k, v in d.items()))
    cm = report["cuda_module"]
    print("CUDA module: " + (f"holds {cm['holds']}" if cm["built"]
                             else f"not built ({cm['why']})"))
    rows = backends_table([d["device"] for d in report["devices"]])
    report["backends"] = rows
    print("backends:")
    for r in rows:
        how = _how(r["backend"], r["device"])
        state = "runs" + (f" ({how})" if how else "") if r["why_not"] is None \
            else f"cannot run: {r['why_not']}"
        print(f"  {r['backend']:>9} on {r['device']:<7} {state}")
    print("self-checks (fused launchers against the reference):")
    report["checks"] = checks(rows)
    if not args.no_timing:
        print(f"timing (forward + backward, median of {args.repeats}, ms):")
        report["timings"] = timings(rows, args.repeats)
    report["ok"] = all(c["ok"] for c in report["checks"])
    with open(args.json, "w") as f:
        json.dump(report, f, indent=2)
    print(("all backends agree with the reference" if report["ok"]
           else "MISMATCH: a backend disagrees with the reference (see above)")
          + f"; report written to {args.json}")
    return 0 if report["ok"] else 1


def cli() -> None:
    """Console script entry point (`cliptbp-selfcheck`)."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
