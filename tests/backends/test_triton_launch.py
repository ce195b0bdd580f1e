"""The Triton launchers' host side: the index lists built on the device by `_prep_kernel`
against a plain Python construction from docs/losses.md, and the host work of one forward and one
backward (kernel launches and torch ops: at B=32, T=75 the step is bound by it, not by the
kernels).

Runs through the interpreter on CPU tensors (TRITON_INTERPRET=1, set by conftest.py)."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from cases import block_edge_labels, check_prep, random_labels
from cliptbp_kernels.backends import triton as TB

pytestmark = pytest.mark.skipif(
    TB.why_not(torch.device("cpu")) is not None,
    reason="the Triton backend does not run on CPU tensors here (triton missing or "
           "TRITON_INTERPRET unset)")


@pytest.mark.parametrize("sorted_ids", [True, False], ids=["time-ordered", "random-ids"])
@pytest.mark.parametrize("T", [1, 2, 3, 75, 700])
def test_prep_lists_match_spec(T, sorted_ids):
    labels = random_labels(5, T, seed=T, sorted_ids=sorted_ids)
    labels[0] = torch.arange(T) % 3 - 1  # alternating padding, background, window 1
    inv = torch.rand(5, T, dtype=torch.float64)
    if T > 2:
        inv[3, T // 2] = float("nan")  # a non-finite clip: flagged only where it is valid
        labels[3, T // 2] = 0
        inv[4, 1] = float("nan")
        labels[4, 1] = -1
    check_prep(labels, inv)


def test_prep_lists_cross_every_block_boundary():
    # T above the interpreter's list block (4096) and GT counts above its ranking tile (512),
    # with window ids falling in time (the ranking path) and runs across block edges
    labels = block_edge_labels()
    inv = torch.rand(labels.shape, dtype=torch.float64)
    check_prep(labels, inv)
    check_prep(labels.flip(1), inv)


def test_prep_all_windows_distinct_and_falling():
    # every clip its own window, ids falling in time: nwin = T, worst case of the ranking
    T = 1100
    labels = torch.arange(T, 0, -1).unsqueeze(0).repeat(2, 1)
    labels[1, ::3] = -1
    check_prep(labels, torch.rand(2, T, dtype=torch.float64))


class _CountOps(TorchDispatchMode):
    """Records the torch ops run inside, and the bytes of every allocation (aten.empty)."""

    def __init__(self):
        super().__init__()
        self.ops = []
        self.nbytes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten.empty.memory_format:
            self.nbytes.append(out.untyped_storage().nbytes())
        return out


def test_host_work_of_one_step_is_bounded():
    """At B=32, T=75 (QVHighlights) one forward and backward is a few dozen host operations:
    4 kernel launches each way and allocations, no index-list ops and no device sync (a
    `.item()`-like read would show as aten._local_scalar_dense)."""
    B, T, D = 32, 75, 256
    emb = torch.randn(B, T, D)
    labels = random_labels(B, T, seed=0, sorted_ids=True)
    opts = (20, 0.07, 0, 0, 1, 0.3, 0.1, 0.1, True, True)
    out = TB.OPS.run_forward(emb, labels, opts)  # real outputs for the backward below
    with TB.record_launches() as fwd_launches, _CountOps() as fwd_ops:
        TB.OPS.run_forward(emb, labels, opts)
    g = torch.ones(B, dtype=torch.float64)
    with TB.record_launches() as bwd_launches, _CountOps() as bwd_ops:
        TB.OPS.run_backward(emb, labels, opts, g, g, out.saved)
    assert len(fwd_launches) == 4 and len(bwd_launches) == 4
    for ops in (fwd_ops.ops, bwd_ops.ops):
        assert "aten._local_scalar_dense.default" not in ops
        other = [op for op in ops if op not in ("aten.empty.memory_format", "aten.unbind.int",
                                                "aten.zero_.default", "aten.view.dtype",
                                                "aten.detach.default")]
        assert other == [], other
    assert len(fwd_ops.ops) <= 20 and len(bwd_ops.ops) <= 16, (fwd_ops.ops, bwd_ops.ops)


def test_upstream_gradients_are_read_in_place():
    """The backward reads the upstream gradients as autograd hands them over (float32, an
    expanded scalar of stride 0) and gives bitwise what their float64 copies give."""
    emb = torch.randn(3, 40, 16)
    labels = random_labels(3, 40, seed=5, sorted_ids=True)
    labels[:, 5:15] = 1
    opts = (20, 0.07, 0, 0, 1, 0.3, 0.1, 0.1, True, True)
    out = TB.OPS.run_forward(emb, labels, opts)
    gc = torch.tensor(0.75).expand(3)  # stride 0, as from .mean() / .sum()
    gb = torch.tensor([0.5, -1.25, 2.0])[[2, 1, 0]][::1]
    assert gc.stride(0) == 0
    got = TB.OPS.run_backward(emb, labels, opts, gc, gb, out.saved)
    want = TB.OPS.run_backward(emb, labels, opts, gc.double().contiguous(),
                               gb.double().contiguous(), out.saved)
    assert got.abs().sum() > 0 and torch.equal(got, want)


def test_backward_working_memory_is_32_bytes_per_clip():
    """Besides the gradient, the backward allocates the GT rows and the window table (32 bytes
    per clip) and O(B k) coefficients: at B=2, T=4096 the step's peak stays within a few
    per cent of the gradient itself (the memory target is 100x less than the reference)."""
    B, T, D, k = 2, 4096, 256, 20
    emb = torch.randn(B, T, D)
    labels = random_labels(B, T, seed=3, sorted_ids=True)
    opts = (k, 0.07, 0, 0, 1, 0.3, 0.1, 0.1, True, True)
    with TB.record_launches():
        out = TB.OPS.run_forward(emb, labels, opts)
    g = torch.ones(B, dtype=torch.float64)
    with TB.record_launches(), _CountOps() as alloc:
        TB.OPS.run_backward(emb, labels, opts, g, g, out.saved)
    grad_bytes = emb.numel() * 4
    assert max(alloc.nbytes) == grad_bytes
    extra = sum(alloc.nbytes) - grad_bytes
    assert extra <= B * T * 32 + B * k * 8 + 4 * B * 8, alloc.nbytes
    assert extra / grad_bytes < 0.035
