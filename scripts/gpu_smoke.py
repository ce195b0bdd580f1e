"""Smoke stage of the GPU check (scripts/gpu_check.sh): on CUDA tensors, one call of every
available backend against a float64 CPU evaluation, determinism (two runs bitwise equal),
float32 products without TF32 even when TF32 is enabled globally, and the CUDA module's
runtime (a kernel launch on the current stream). Writes smoke.json to --out.

    python scripts/gpu_smoke.py --out OUT [--sanitizer]

With --sanitizer (under compute-sanitizer) the inputs are small and only the kernels run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import cliptbp_kernels as ck


def batch(B, T, D, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(B, T, D, generator=g)
    labels = torch.zeros(B, T, dtype=torch.long)
    for b in range(B):
        L = max(1, T // 10)
        s = int(torch.randint(0, T - L, (1,), generator=g))
        labels[b, s:s + L] = 1 + b % 3
    labels[0, -3:] = -1
    return emb, labels


def value_and_grad(backend, emb, labels):
    e = emb.detach().clone().requires_grad_(True)
    lc, lb = ck.clip_boundary_losses(e, labels, backend=backend, reduction="none")
    (lc.sum() + lb.sum()).backward()
    return lc.detach(), lb.detach(), e.grad


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="out/gpu_check")
    p.add_argument("--sanitizer", action="store_true")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"ok": True, "checks": []}

    def check(name, cond, detail=""):
        report["checks"].append({"name": name, "ok": bool(cond), "detail": detail})
        report["ok"] &= bool(cond)
        print(("ok   " if cond else "FAIL ") + name + (f": {detail}" if detail else ""), flush=True)

    if not torch.cuda.is_available():
        check("cuda available", False, "torch.cuda.is_available() is False")
        (out / "smoke.json").write_text(json.dumps(report, indent=2))
        return 1
    dev = torch.device("cuda")
    report["device"] = torch.cuda.get_device_name(0)
    report["backends"] = ck.available_backends()
    print("device", report["device"], "backends", report["backends"], flush=True)

    try:
        from cliptbp_kernels import _C_cuda

        report["cuda_runtime"] = _C_cuda.runtime_version()
        buf = torch.zeros(1000, device=dev)
        _C_cuda.fill_f32(buf.data_ptr(), buf.numel(), 3.5, torch.cuda.current_stream().cuda_stream)
        torch.cuda.synchronize()
        check("CUDA module launch", bool((buf == 3.5).all()))
    except ImportError as exc:
        check("CUDA module import", False, str(exc))

    B, T, D = (2, 40, 16) if args.sanitizer else (4, 300, 64)
    emb, labels = batch(B, T, D)
    exact = value_and_grad("reference", emb.double(), labels)
    for backend in ck.available_backends(dev):
        if args.sanitizer and backend == "reference":
            continue
        got = value_and_grad(backend, emb.to(dev), labels.to(dev))
        err_c = (got[0].double().cpu() - exact[0]).abs().max().item()
        err_b = (got[1].double().cpu() - exact[1]).abs().max().item()
        err_g = ((got[2].double().cpu() - exact[2]).flatten(1).norm(dim=1)
                 / exact[2].flatten(1).norm(dim=1).clamp_min(1e-12)).max().item()
        check(f"{backend}: values and gradients vs float64",
              err_c < 1e-4 and err_b < 1e-4 and err_g < 1e-4,
              f"L_clip {err_c:.2e}, L_boun {err_b:.2e}, grad rel {err_g:.2e}")
        again = value_and_grad(backend, emb.to(dev), labels.to(dev))
        check(f"{backend}: deterministic", all(torch.equal(a, b) for a, b in zip(got, again)))
        flag = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            tf32 = value_and_grad(backend, emb.to(dev), labels.to(dev))
        finally:
            torch.backends.cuda.matmul.allow_tf32 = flag
        err = (tf32[0].double().cpu() - exact[0]).abs().max().item()
        check(f"{backend}: no TF32 with allow_tf32=True", err < 1e-4, f"L_clip err {err:.2e}")

    (out / "smoke.json").write_text(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
