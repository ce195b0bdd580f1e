"""Hash the outputs and gradients of the test cases on every backend that runs here.

Refactors that must leave the numbers bitwise unchanged are checked by running this script on
the main before and after the change and comparing the two files::

    .venv/bin/python scripts/hash_outputs.py --out before.json     # on the old checkout
    .venv/bin/python scripts/hash_outputs.py --out after.json      # on the new one
    .venv/bin/python scripts/hash_outputs.py --compare before.json after.json

Every label pattern, dtype and option set of the test cases (``cases.py`` in the test suite)
runs through the public API on each backend: ``reference``, ``cpu``, ``triton`` (interpreted,
with its interpreter block sizes and with the GPU block sizes) and ``cuda`` (its CPU
emulation). Per case the script hashes the per-sample L_clip and L_boun, the gradient of a
weighted sum of them, and the chosen hard-negative pairs. It uses only the public API, so it
runs unchanged on any version of the package.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("CLIPTBP_CUDA_EMULATE", "1")

ROOT = Path(__file__).resolve().parent.parent


def _import_cases():
    """The test suite's case generators (`cases.py`, wherever the suite keeps it)."""
    found = sorted(ROOT.glob("tests/**/cases.py"))
    if not found:
        raise SystemExit("hash_outputs: no tests/**/cases.py in this checkout")
    sys.path.insert(0, str(found[0].parent))
    import cases  # noqa: PLC0415

    return cases


OPTION_SETS = {
    "default": {},
    "same_all": {"positives": "same", "negatives": "all"},
    "k0": {"k": 0},
    "k1_tau": {"k": 1, "tau": 0.5},
    "k_big_r2": {"k": 300, "radius": 2, "margin_max": 0.5, "margin_base": 0.05,
                 "margin_scale": 0.3},
}
DTYPES = ("float16", "bfloat16", "float32", "float64")
SHAPES = ((7, 1, 4), (7, 2, 3), (7, 9, 5), (7, 33, 16), (7, 75, 40))  # B = 7: every pattern


def _digest(*tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.view(-1).view(__import__("torch").uint8).numpy().tobytes()
                 if t.numel() else b"")
    return h.hexdigest()


def _one(ck, torch, backend, emb, labels, opts):
    e = emb.detach().clone().requires_grad_(True)
    lc, lb = ck.clip_boundary_losses(e, labels, backend=backend, reduction="none", **opts)
    g = torch.Generator().manual_seed(7)
    wc = (torch.rand(lc.shape, generator=g, dtype=torch.float64) + 0.5).to(lc.dtype)
    wb = (torch.rand(lb.shape, generator=g, dtype=torch.float64) + 0.5).to(lb.dtype)
    (grad,) = torch.autograd.grad((lc * wc).sum() + (lb * wb).sum(), e)
    pair_opts = {k: v for k, v in opts.items() if k in ("k", "positives", "negatives")}
    pairs = ck.hard_negative_pairs(emb, labels, backend=backend, **pair_opts)
    return _digest(lc, lb, grad, pairs)


def _batches(cases, torch):
    """(name, emb, labels) of every case: every label pattern (one per sample), each shape
    and dtype, with and without duplicated clips, and the exact-tie batches."""
    names = list(cases.PATTERNS)
    for B, T, D in SHAPES:
        for dtype in DTYPES:
            for dup in (False, True):
                emb, labels = cases.make_batch(B, T, D, names, seed=B * 1000 + T,
                                               dtype=getattr(torch, dtype), duplicates=dup)
                yield f"{B}x{T}x{D}/{dtype}/dup{int(dup)}", emb, labels
    for B, T in ((3, 9), (4, 40)):
        emb, labels = cases.exact_tie_batch(B, T, seed=T)
        for dtype in DTYPES:
            yield f"ties/{B}x{T}/{dtype}", emb.to(getattr(torch, dtype)), labels


def run(out: str, backends) -> None:
    import torch

    import cliptbp_kernels as ck

    cases = _import_cases()
    here = ck.available_backends("cpu")
    result = {}
    t0 = time.time()
    for backend in backends:
        name, _, sizes = backend.partition(":")
        if name not in here:
            print(f"hash_outputs: backend {name!r} does not run here; skipped", flush=True)
            continue
        if sizes:
            os.environ["CLIPTBP_TRITON_SIZES"] = sizes
        n = 0
        for case, emb, labels in _batches(cases, torch):
            for oname, opts in OPTION_SETS.items():
                result[f"{backend}|{case}|{oname}"] = _one(ck, torch, name, emb, labels, opts)
                n += 1
        os.environ.pop("CLIPTBP_TRITON_SIZES", None)
        print(f"hash_outputs: {backend}: {n} cases, {time.time() - t0:.0f} s", flush=True)
    Path(out).write_text(json.dumps(result, indent=0, sort_keys=True))
    print(f"hash_outputs: {len(result)} hashes written to {out}")


def compare(a: str, b: str) -> int:
    ha, hb = json.loads(Path(a).read_text()), json.loads(Path(b).read_text())
    only_a, only_b = sorted(set(ha) - set(hb)), sorted(set(hb) - set(ha))
    differ = sorted(k for k in set(ha) & set(hb) if ha[k] != hb[k])
    print(f"hash_outputs: {len(set(ha) & set(hb))} cases in both, {len(differ)} differ, "
          f"{len(only_a)} only in {a}, {len(only_b)} only in {b}")
    for k in (differ + only_a + only_b)[:20]:
        print("  ", k)
    return 1 if differ or only_a or only_b else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="output_hashes.json", help="where to write the hashes")
    p.add_argument("--backends", default="reference,cpu,triton,triton:gpu,cuda",
                   help="comma-separated; 'triton:gpu' runs the GPU block sizes interpreted")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"),
                   help="compare two hash files instead; exit 1 on any difference")
    args = p.parse_args(argv)
    if args.compare:
        return compare(*args.compare)
    run(args.out, [b.strip() for b in args.backends.split(",") if b.strip()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
