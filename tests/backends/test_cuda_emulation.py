"""The CUDA kernels under their CPU emulation: barrier hazards and the emulation itself.

Every other backend test runs the CUDA kernels through the emulation (conftest.py sets
CLIPTBP_CUDA_EMULATE=1). Here: the emulated threads of a block run between two barriers in
increasing, then in decreasing order; a read of shared memory that lacks a barrier sees a
different value in one of the two orders, so every output and gradient must be bitwise
equal across them. The cases reach every phase: several row tiles and column splits, the
partial top-k merge with full candidate buffers (k close to the limit), windows, padding.
"""

import os

import pytest
import torch

import cliptbp_kernels as ck
from cliptbp_kernels.backends import cuda as _cuda_backend

pytestmark = pytest.mark.skipif(
    "cuda" not in ck.available_backends("cpu") or _cuda_backend._emu is None,
    reason="the CUDA emulation module is not built or CLIPTBP_CUDA_EMULATE is off")


def _labels(B, T, seed):
    g = torch.Generator().manual_seed(seed)
    lab = torch.zeros(B, T, dtype=torch.int64)
    for b in range(B):
        n = int(torch.randint(1, 4, (1,), generator=g))
        for w in range(1, n + 1):
            s = int(torch.randint(0, T - 2, (1,), generator=g))
            e = min(T, s + int(torch.randint(1, max(2, T // 3), (1,), generator=g)))
            lab[b, s:e] = w
        lab[b, T - int(torch.randint(0, T // 5 + 1, (1,), generator=g)):] = -1
    return lab


CASES = [
    # B, T, D, dtype, options
    (2, 77, 19, torch.float32, dict()),
    (3, 150, 40, torch.float64, dict(k=700, negatives="all", positives="same", radius=3)),
    (1, 200, 8, torch.float32, dict(k=1024, negatives="all")),  # full candidate buffers
    (2, 70, 33, torch.bfloat16, dict(k=5, radius=2)),
]


def _run(emb, lab, opts):
    e = emb.clone().requires_grad_(True)
    lc, lb = ck.clip_boundary_losses(e, lab, reduction="none", backend="cuda", **opts)
    pairs = ck.hard_negative_pairs(emb, lab, backend="cuda",
                                   **{k: v for k, v in opts.items() if k in
                                      ("k", "positives", "negatives")})
    g = torch.linspace(0.5, 1.5, lc.shape[0], dtype=lc.dtype)
    ((lc * g).sum() + (lb * g.flip(0)).sum()).backward()
    return lc.detach(), lb.detach(), pairs, e.grad


@pytest.mark.parametrize("case", range(len(CASES)))
def test_thread_order_does_not_change_results(case):
    B, T, D, dtype, opts = CASES[case]
    torch.manual_seed(case)
    emb = torch.randn(B, T, D).to(dtype)
    emb[:, 5] = emb[:, 9]  # exact ties
    lab = _labels(B, T, case)
    mod = _cuda_backend._emu
    before = mod.switches()
    try:
        mod.set_order(0)
        first = _run(emb, lab, opts)
        mod.set_order(1)
        second = _run(emb, lab, opts)
    finally:
        mod.set_order(0)
    assert mod.switches() > before  # the kernels really ran emulated
    for a, b in zip(first, second):
        assert torch.equal(a, b), (a, b)
    # and the result is the CPU backend's (within docs/losses.md's bound; values, not bits)
    ref = ck.clip_boundary_losses(emb, lab, reduction="none", backend="cpu", **opts)
    tol = 1e-4 if dtype in (torch.float32, torch.float64) else 2e-2
    for got, want in zip(first[:2], ref):
        torch.testing.assert_close(got.double(), want.double(), rtol=tol, atol=1e-6)


def test_emulation_needs_the_switch():
    """Without CLIPTBP_CUDA_EMULATE=1, CPU tensors are refused with a clear reason."""
    old = os.environ.get("CLIPTBP_CUDA_EMULATE")
    os.environ["CLIPTBP_CUDA_EMULATE"] = "0"
    try:
        with pytest.raises(ValueError, match="CLIPTBP_CUDA_EMULATE"):
            ck.clip_pair_loss(torch.randn(1, 4, 3), torch.ones(1, 4, dtype=torch.int64),
                              backend="cuda")
    finally:
        if old is None:
            del os.environ["CLIPTBP_CUDA_EMULATE"]
        else:
            os.environ["CLIPTBP_CUDA_EMULATE"] = old
