"""GPU tests: they run on a machine with a CUDA GPU and skip only where there is none."""

from __future__ import annotations

import pytest
import torch

import cliptbp_kernels as ck
from cases import (
    PATTERNS,
    assert_grads_close,
    assert_values_close,
    make_batch,
    per_sample_value_and_grad,
    spec_eval,
)

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
GPU_BACKENDS = ck.available_backends("cuda") if torch.cuda.is_available() else []


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_backends_match_spec(backend, dtype):
    emb, labels = make_batch(len(PATTERNS), 77, 32, list(PATTERNS), seed=1, dtype=dtype)
    rc, rb, rg = spec_eval(emb, labels)
    lc, lb, g = per_sample_value_and_grad(backend, emb.cuda(), labels.cuda())
    assert lc.is_cuda and g.is_cuda and g.dtype == dtype
    assert_values_close(lc.cpu(), rc, f"{backend} L_clip")
    assert_values_close(lb.cpu(), rb, f"{backend} L_boun")
    assert_grads_close(g.cpu(), rg, f"{backend} grad")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_cuda_no_tf32_even_when_enabled(backend):
    emb, labels = make_batch(4, 200, 128, ["windows", "all_gt"], seed=2)
    rc, _, _ = spec_eval(emb, labels)
    flag = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        lc, _, _ = per_sample_value_and_grad(backend, emb.cuda(), labels.cuda())
    finally:
        torch.backends.cuda.matmul.allow_tf32 = flag
    assert_values_close(lc.cpu(), rc, f"{backend} L_clip with TF32 allowed")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_cuda_deterministic(backend):
    emb, labels = make_batch(3, 150, 64, list(PATTERNS), seed=3)
    a = per_sample_value_and_grad(backend, emb.cuda(), labels.cuda())
    b = per_sample_value_and_grad(backend, emb.cuda(), labels.cuda())
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_cuda_module_runtime_and_launch():
    from cliptbp_kernels import _C_cuda

    assert _C_cuda.device_count() >= 1
    buf = torch.zeros(257, device="cuda")
    _C_cuda.fill_f32(buf.data_ptr(), buf.numel(), 1.25, torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    assert (buf == 1.25).all()
