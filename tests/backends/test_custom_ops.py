"""The fused backends as custom ops: opcheck, torch.compile, every output element written,
and no index overflow at T = 65,536."""

from __future__ import annotations

import pytest
import torch

import cliptbp_kernels as ck
from cases import PATTERNS, make_batch, per_sample_value_and_grad
from cliptbp_kernels import backends as _backends
from cliptbp_kernels._options import FusedOptions, FusedOutputs, kcap_for
from cliptbp_kernels.backends import cpu as _cpu_backend

FUSED = [b for b in ck.available_backends("cpu") if b != "reference"]
pytestmark = pytest.mark.skipif(not FUSED, reason="no fused backend built")

# (k, tau, positives, negatives, radius, margin_max, margin_base, margin_scale, want_clip,
#  want_boun)
OPTS = [
    (5, 0.07, 0, 0, 1, 0.3, 0.1, 0.1, True, True),
    (3, 0.5, 1, 1, 2, 0.3, 0.1, 0.1, True, False),
    (0, 0.07, 0, 0, 1, 0.3, 0.1, 0.1, False, True),
]

EAGER_DTYPES = [torch.float32, torch.float64, torch.bfloat16]  # one per OPTS entry


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("opts", OPTS)
def test_opcheck_forward(backend, opts):
    ops = _backends.fused_ops(backend)
    emb, labels = make_batch(3, 16, 6, list(PATTERNS), seed=1, dtype=torch.float64)
    emb.requires_grad_(True)
    torch.library.opcheck(ops.forward, (emb, labels, *opts))


@pytest.mark.parametrize("backend", FUSED)
def test_opcheck_backward(backend):
    ops = _backends.fused_ops(backend)
    emb, labels = make_batch(3, 16, 6, list(PATTERNS), seed=2)
    opts = OPTS[0]
    out = ops.forward(emb, labels, *opts)
    g = torch.rand(3)
    args = (g, g.clone(), emb, labels, out[1], out[3], out[4], out[5], out[6], out[7], *opts)
    torch.library.opcheck(ops.backward, args, test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("backend", FUSED)
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    emb, labels = make_batch(4, 30, 8, list(PATTERNS), seed=3)

    def step(e, lab):
        lc, lb = ck.clip_boundary_losses(e, lab, backend=backend, check_labels=False)
        return 3.0 * lc + 3.0 * lb

    compiled = torch.compile(step, fullgraph=True)
    e1 = emb.clone().requires_grad_(True)
    e2 = emb.clone().requires_grad_(True)
    eager = step(e1, labels)
    comp = compiled(e2, labels)
    torch.testing.assert_close(comp, eager, rtol=1e-6, atol=1e-7)
    eager.backward()
    comp.backward()
    torch.testing.assert_close(e2.grad, e1.grad, rtol=1e-6, atol=1e-7)
    # the criterion module compiles too
    crit = ck.ClipTBPLoss(backend=backend)
    out = torch.compile(lambda e, lab: crit(e, lab)["loss"], fullgraph=True)(emb, labels)
    torch.testing.assert_close(out, crit(emb, labels)["loss"], rtol=1e-6, atol=1e-7)


def test_cpu_kernels_write_every_output_element():
    emb, labels = make_batch(5, 21, 7, list(PATTERNS), seed=4)
    labels = labels.contiguous()
    B, T = labels.shape
    for opts in OPTS:
        clean = _cpu_backend.forward(emb, labels, FusedOptions(*opts), kcap_for(opts[0], T))
        poisoned = []
        for t in clean:
            p = torch.empty_like(t)
            if p.dtype.is_floating_point:
                p.fill_(float("nan"))
            elif p.dtype == torch.uint8:
                p.fill_(77)
            else:
                p.fill_(-12345)
            poisoned.append(p)
        _cpu_backend.forward_into(emb, labels, FusedOptions(*opts), FusedOutputs(*poisoned))
        for a, b in zip(clean, poisoned):
            assert torch.equal(a, b)
        # backward into a poisoned gradient buffer
        grad = torch.full(emb.shape, float("nan"))
        g = torch.rand(B, dtype=torch.float64)
        lc, hc, lb, hb, lse, neg, pairs, inv = clean
        _cpu_backend._ext.backward(
            *_cpu_backend._view_args(emb, labels), opts, g.data_ptr(), g.data_ptr(),
            hc.data_ptr(), hb.data_ptr(), lse.data_ptr(), neg.data_ptr(), pairs.data_ptr(),
            pairs.shape[1], inv.data_ptr(), grad.data_ptr(), 2)
        expect = _cpu_backend.OPS.run_backward(emb, labels, opts, g, g,
                                               (hc.bool(), hb.bool(), lse, neg, pairs, inv))
        assert torch.equal(grad, expect)


@pytest.mark.parametrize("backend", FUSED)
def test_long_video_without_index_overflow(backend):
    # T = 65,536 (the Triton backend's limit): pair indices i * T + j reach 2^32 - 1; a few
    # GT clips near the end
    T, D, k = 65536, 16, 12
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(1, T, D, generator=g)
    labels = torch.zeros(1, T, dtype=torch.long)
    gt = torch.tensor([65500, 65501, 65502, 65530, 65535])
    labels[0, gt[:3]] = 1
    labels[0, gt[3:]] = 2
    labels[0, 1000:1010] = -1
    e = emb.clone().requires_grad_(True)
    lc, lb = ck.clip_boundary_losses(e, labels, k=k, backend=backend, reduction="none")
    (lc.sum() + lb.sum()).backward()
    pairs = ck.hard_negative_pairs(emb, labels, k=k, backend=backend)[0]
    # expected: GT rows against every valid clip, computed directly (|G| x T, float64)
    u = torch.nn.functional.normalize(emb[0].double(), dim=-1, eps=1e-8)
    s = u[gt] @ u.T  # [5, T]
    valid = labels[0] >= 0
    cand = []
    for r, i in enumerate(gt.tolist()):
        mask = valid.clone()
        mask[gt] = False  # GT-GT pairs are positives (any)
        js = mask.nonzero().squeeze(1)
        for j, v in zip(js.tolist(), s[r, js].tolist()):
            a, b = min(i, j), max(i, j)
            cand.append((-v, a, b))
    cand.sort()
    expect = torch.tensor([[a, b] for _, a, b in cand[:k]])
    assert torch.equal(pairs, expect)
    # the loss from the same pairs
    # positives="any": every pair of GT clips, whatever their windows
    spos = torch.stack([s[r, gt[q]] for r in range(5) for q in range(r + 1, 5)]) / 0.07
    lse = torch.logsumexp(spos, 0)
    neg = torch.tensor([-v for v, _, _ in cand[:k]], dtype=torch.float64) / 0.07
    expect_loss = torch.log1p(torch.exp(neg - lse).sum())
    torch.testing.assert_close(lc[0].double(), expect_loss, rtol=1e-4, atol=1e-6)
    assert torch.isfinite(e.grad).all()
    assert (e.grad[0, 1000:1010] == 0).all()


def test_auto_backend_prefers_fused_on_cpu():
    assert _backends.resolve("auto", torch.device("cpu")) == FUSED[0]
    emb, labels = make_batch(2, 10, 4, ["windows"], seed=5)
    a = per_sample_value_and_grad("auto", emb, labels)
    b = per_sample_value_and_grad(FUSED[0], emb, labels)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def _run_path(fn, emb, labels, opts, grad_sets):
    """Outputs of `fn` (a forward entry point) and d emb for each pair of upstream gradients
    in `grad_sets` ((clip, boun); None leaves that loss out of the backward), one forward."""
    e = emb.clone().requires_grad_(True)
    out = fn(e, labels, *opts)
    grads = []
    for gc, gb in grad_sets:
        used = [(o, g) for o, g in ((out[0], gc), (out[2], gb)) if g is not None]
        grads.append(torch.autograd.grad([o for o, _ in used], e, [g for _, g in used],
                                         retain_graph=True)[0])
    return [t.detach() for t in out], grads


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", EAGER_DTYPES)
def test_eager_path_equals_custom_op_bitwise(backend, dtype):
    # the autograd Function of eager mode and the custom ops run the same launchers: equal
    # outputs and gradients, bit for bit, also when one loss is left out of the graph.
    # Interpreted Triton: one option set per dtype, every option set once over the dtypes
    ops = _backends.fused_ops(backend)
    option_sets = [OPTS[EAGER_DTYPES.index(dtype)]] if backend == "triton" else OPTS
    emb, labels = make_batch(4, 19, 6, list(PATTERNS), seed=7, dtype=dtype)
    loss_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    g = torch.rand(4, dtype=loss_dtype, generator=torch.Generator().manual_seed(1))
    grad_sets = ((g, g.flip(0)), (None, g), (g, None))
    for opts in option_sets:
        got_out, got_grads = _run_path(lambda e, lab, *o: ops.eager(e, lab, FusedOptions(*o)),
                                       emb, labels, opts, grad_sets)
        want_out, want_grads = _run_path(ops.forward, emb, labels, opts, grad_sets)
        for a, b in zip(got_out, want_out):
            assert a.dtype == b.dtype and torch.equal(a, b)
        for got_grad, want_grad in zip(got_grads, want_grads):
            assert got_grad.dtype == want_grad.dtype and torch.equal(got_grad, want_grad)
    out = ops.eager(emb.clone().requires_grad_(True), labels, FusedOptions(*OPTS[0]))
    assert type(out[0].grad_fn).__name__ == f"{backend.capitalize()}FusedLossesBackward"


class _PassThrough(torch.utils._python_dispatch.TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("backend", FUSED)
def test_eager_path_only_where_safe(backend, monkeypatch):
    # eager calls skip the custom-op dispatch; a dispatch mode, fake tensors and
    # torch.compile get the custom ops
    ops = _backends.fused_ops(backend)
    used = []

    def spy(name, fn):
        def wrapped(*args):
            used.append(name)
            return fn(*args)
        return wrapped

    monkeypatch.setattr(_backends, "fused_ops", lambda name: ops._replace(
        forward=spy("custom", ops.forward), eager=spy("eager", ops.eager)))
    emb, labels = make_batch(2, 12, 4, ["windows"], seed=8)

    def losses(e, lab):
        return ck.clip_boundary_losses(e, lab, backend=backend, check_labels=False)

    want = losses(emb, labels)
    assert used == ["eager"]
    ck.hard_negative_pairs(emb, labels, k=3, backend=backend)
    assert used == ["eager"] * 2
    used.clear()
    with _PassThrough():
        got = losses(emb, labels)
    assert used == ["custom"] and all(torch.equal(a, b) for a, b in zip(got, want))
    used.clear()
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode() as mode:
        fake = losses(mode.from_tensor(emb), mode.from_tensor(labels))
    assert used == ["custom"] and [tuple(t.shape) for t in fake] == [(), ()]
    used.clear()
    torch._dynamo.reset()
    got = torch.compile(losses, fullgraph=True)(emb, labels)
    assert "eager" not in used and all(torch.equal(a, b) for a, b in zip(got, want))
