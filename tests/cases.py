"""Input generators and comparison helpers shared by the backend tests."""

from __future__ import annotations

import torch

import cliptbp_kernels as ck
from cliptbp_kernels import reference

# Per-sample label patterns, each a function (T, generator) -> LongTensor [T].


def _windows(T, g, n_windows, max_len, ids=None):
    lab = torch.zeros(T, dtype=torch.long)
    for w in range(n_windows):
        L = int(torch.randint(1, max(2, max_len + 1), (1,), generator=g))
        s = int(torch.randint(0, max(1, T - L + 1), (1,), generator=g))
        lab[s:s + L] = ids[w] if ids is not None else w + 1
    return lab


def pattern_windows(T, g):
    return _windows(T, g, 2, max(1, T // 6))


def pattern_padding_middle(T, g):
    lab = _windows(T, g, 2, max(1, T // 5))
    a = int(torch.randint(0, T, (1,), generator=g))
    lab[a:a + max(1, T // 8)] = -1
    lab[-max(1, T // 10):] = -1
    return lab


def pattern_no_gt(T, g):
    lab = torch.zeros(T, dtype=torch.long)
    lab[T // 2:T // 2 + 1] = -1
    return lab


def pattern_all_gt(T, g):
    return torch.ones(T, dtype=torch.long)


def pattern_one_clip_windows(T, g):
    lab = torch.zeros(T, dtype=torch.long)
    lab[::4] = torch.arange(1, (T + 3) // 4 + 1)[: len(lab[::4])]
    return lab


def pattern_sparse_ids(T, g):
    # unordered, non-consecutive ids, a non-contiguous window, windows at both video edges
    lab = _windows(T, g, 3, max(1, T // 8), ids=[907, 3, 2**31 - 1])
    lab[0] = 44
    lab[-1] = 44
    lab[T // 2] = 3
    return lab


def pattern_strided_padding(T, g):
    lab = _windows(T, g, 1, max(1, T // 4))
    lab[1::5] = -1
    return lab


PATTERNS = {
    "windows": pattern_windows,
    "padding_middle": pattern_padding_middle,
    "no_gt": pattern_no_gt,
    "all_gt": pattern_all_gt,
    "one_clip_windows": pattern_one_clip_windows,
    "sparse_ids": pattern_sparse_ids,
    "strided_padding": pattern_strided_padding,
}


def make_batch(B, T, D, patterns, seed, dtype=torch.float32, duplicates=False):
    """Random embeddings (never zeros) and labels with the given per-sample patterns."""
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    if duplicates and T >= 4:
        # exact ties: duplicated clips give identical similarities
        emb[:, T // 2] = emb[:, 0]
        emb[:, T // 3] = emb[:, 1]
        emb[:, -1] = emb[:, 1]
    labels = torch.stack([PATTERNS[patterns[b % len(patterns)]](T, g) for b in range(B)])
    return emb.to(dtype), labels


def losses(backend, emb, labels, reduction="none", **opts):
    return ck.clip_boundary_losses(emb, labels, backend=backend, reduction=reduction, **opts)


def per_sample_value_and_grad(backend, emb, labels, **opts):
    """Per-sample (L_clip, L_boun) and the gradient of their sum w.r.t. emb."""
    e = emb.detach().clone().requires_grad_(True)
    lc, lb = losses(backend, e, labels, **opts)
    g = torch.Generator().manual_seed(7)
    wc = torch.rand(lc.shape, generator=g, dtype=torch.float64).to(lc.device, lc.dtype) + 0.5
    wb = torch.rand(lb.shape, generator=g, dtype=torch.float64).to(lb.device, lb.dtype) + 0.5
    (grad,) = torch.autograd.grad((lc * wc).sum() + (lb * wb).sum(), e, allow_unused=False)
    return lc.detach(), lb.detach(), grad


def spec_eval(emb, labels, **opts):
    """The float64 evaluation of SPEC.md (the reference run in float64)."""
    return per_sample_value_and_grad("reference", emb.double(), labels, **opts)


def assert_values_close(got, ref, what, rtol=1e-4, atol=1e-6):
    got, ref = got.double(), ref.double()
    err = (got - ref).abs()
    tol = rtol * ref.abs() + atol
    bad = err > tol
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} of {bad.numel()} samples off; worst: "
        + ", ".join(f"[{int(i)}] got {got[i].item():.8g} ref {ref[i].item():.8g}"
                    for i in torch.argsort(err - tol, descending=True)[:4])
    )


def sample_grad_error(got, ref):
    """Per-sample Frobenius norms of the error and of the reference gradient."""
    got, ref = got.double(), ref.double()
    return (got - ref).flatten(1).norm(dim=1), ref.flatten(1).norm(dim=1)


def assert_grads_close(got, ref, what, rtol=1e-4, atol=1e-6):
    err, nrm = sample_grad_error(got, ref)
    tol = rtol * nrm + atol
    bad = err > tol
    assert not bad.any(), (
        f"{what}: gradient of {int(bad.sum())} samples off; worst: "
        + ", ".join(f"[{int(i)}] err {err[i].item():.3g} norm {nrm[i].item():.3g}"
                    for i in torch.argsort(err - tol, descending=True)[:4])
    )


def ref_pairs(emb, labels, **opts):
    return reference.hard_negative_pairs(emb.double(), labels, **opts)
