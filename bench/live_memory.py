"""Peak of live tensor bytes during one forward + backward step, counted on the CPU.

What ``torch.cuda.max_memory_allocated`` tracks on a GPU, without a GPU and without the
allocator's rounding: a torch dispatch mode records every tensor storage an operation creates
and a finaliser its release. The fused backends run through their eager path with the kernel
launches skipped (Triton) or on the CPU (``cpu``), so the count is of the allocations the
launchers make; the reference runs as it is. The peak counts everything allocated during the
step (saved tensors, the gradient, working memory), not the inputs.

    .venv/bin/python -m bench.live_memory --shape long4k --backends reference,triton,cpu
"""

from __future__ import annotations

import argparse
import os
import sys
import weakref
from typing import Optional, Sequence


def peak_live_bytes(backend: str, shape_name: str) -> dict:
    """{"peak": bytes, "grad": bytes of the gradient} of one fwdbwd step at a bench shape."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    import cliptbp_kernels as ck
    from cliptbp_kernels.backends import _ops
    from cliptbp_kernels.backends.triton import launch

    from . import harness

    class Live(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.live, self.cur, self.peak = {}, 0, 0

        def _release(self, key):
            n = self.live.pop(key, None)
            if n is not None:
                self.cur -= n

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor) and t.device.type != "meta":
                    st = t.untyped_storage()
                    key = st.data_ptr()
                    if st.nbytes() and key not in self.live:
                        self.live[key] = st.nbytes()
                        self.cur += st.nbytes()
                        self.peak = max(self.peak, self.cur)
                        weakref.finalize(st, self._release, key)
            return out

    shape = harness.get_shape(shape_name)
    emb, labels = harness.make_inputs(shape, "fwdbwd")

    def step():
        emb.grad = None
        lc, lb = ck.clip_boundary_losses(emb, labels, backend=backend, check_labels=False)
        (lc + lb).backward()

    # the launchers' own allocations are what counts: the eager path (under a dispatch mode
    # the custom ops would hide them) and, for Triton, no kernel run
    saved = _ops.eager_ok, launch._launch
    _ops.eager_ok = lambda e, l: True
    launch._launch = lambda kernel, grid, *args, **meta: None
    try:
        step()  # one-time allocations outside the count
        mode = Live()
        with mode:
            step()
    finally:
        _ops.eager_ok, launch._launch = saved
    return {"peak": mode.peak, "grad": emb.numel() * emb.element_size()}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="long4k", help="a bench shape (qvh, tacos, long4k, ...)")
    p.add_argument("--backends", default="reference,triton,cpu")
    args = p.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    if "triton" in backends and os.environ.get("TRITON_INTERPRET") != "1":
        if "cliptbp_kernels" in sys.modules:
            p.error("the Triton launchers on CPU tensors need TRITON_INTERPRET=1 before "
                    "cliptbp_kernels is imported")
        os.environ["TRITON_INTERPRET"] = "1"
    print(f"peak live tensor bytes of one forward + backward step at {args.shape} (CPU count)")
    print("| backend | peak MiB | gradient MiB | peak / gradient | reference / this |\n"
          "|---|---|---|---|---|")
    ref = None
    for b in backends:
        r = peak_live_bytes(b, args.shape)
        ref = r["peak"] if b == "reference" else ref
        vs = f"{ref / r['peak']:.1f}x" if ref else ""
        print(f"| {b} | {r['peak'] / 2**20:.2f} | {r['grad'] / 2**20:.2f} | "
              f"{r['peak'] / r['grad']:.3f} | {vs} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
