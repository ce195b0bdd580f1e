"""Failure behaviour: a failing kernel call raises a Python exception that names the cause,
non-finite input poisons only its own sample on every backend, and nothing hangs or crashes.

tests/backends/test_fused_backends.py already checks one NaN / +-Inf clip in a windows sample
(float32, default options) and NaN in padding; these tests complement it."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import cliptbp_kernels as ck
from cases import each_value_once, make_batch, per_sample_value_and_grad
from cliptbp_kernels.backends import cpu as _cpu_backend

HAS_CPU = _cpu_backend.available()
needs_cpu = pytest.mark.skipif(not HAS_CPU, reason="the CPU extension is not built")
BACKENDS = ["reference"] + [b for b in ck.available_backends("cpu") if b != "reference"]
# scripts/sanitize.sh sets this; AddressSanitizer reserves terabytes of address space, so an
# address-space limit (how the tests below provoke allocation failures) cannot work there.
SANITIZED = bool(os.environ.get("CLIPTBP_SANITIZED_CPU_MODULE"))
TIMEOUT = 300  # seconds for a subprocess: far above its normal run time (a few seconds)

# (k, tau, positives, negatives, radius, margin_max, margin_base, margin_scale, want_clip,
#  want_boun), as the bindings take them
OPTS = (5, 0.07, 0, 0, 1, 0.3, 0.1, 0.1, True, True)


# --------------------------------------------------------------------------------------
# The raw bindings reject bad arguments with ValueError / TypeError naming them
# --------------------------------------------------------------------------------------

class RawCall:
    """Valid arguments of `_C_cpu.forward` / `_C_cpu.backward` with real buffers behind every
    pointer, so a check that failed to fire could not make the kernel touch bad memory."""

    def __init__(self, B=3, T=12, D=5):
        emb, labels = make_batch(B, T, D, ["windows", "no_gt", "all_gt"], seed=0)
        self.emb, self.labels = emb, labels.contiguous()
        self.view, self.lab_ptr = _cpu_backend._view_args(self.emb, self.labels)
        self.kcap = 5
        f64 = dict(dtype=torch.float64)
        self.out = [torch.empty(B, **f64), torch.empty(B, dtype=torch.uint8),
                    torch.empty(B, **f64), torch.empty(B, dtype=torch.uint8),
                    torch.empty(B, **f64), torch.empty(B, **f64),
                    torch.empty(B, self.kcap, dtype=torch.int64), torch.empty(B, T, **f64)]
        self.grad_up = torch.ones(B, **f64)
        self.grad = torch.empty(B, T, D)

    def forward(self, view=None, opts=OPTS, kcap=None, threads=2):
        o = self.out
        _cpu_backend._ext.forward(
            self.view if view is None else view, self.lab_ptr, opts,
            *[t.data_ptr() for t in o[:6]], o[6].data_ptr(),
            self.kcap if kcap is None else kcap, o[7].data_ptr(), threads)
        return [t.clone() for t in o]

    def backward(self, view=None, opts=OPTS, kcap=None, threads=2):
        o = self.out
        _cpu_backend._ext.backward(
            self.view if view is None else view, self.lab_ptr, opts, self.grad_up.data_ptr(),
            self.grad_up.data_ptr(), o[1].data_ptr(), o[3].data_ptr(), o[4].data_ptr(),
            o[5].data_ptr(), o[6].data_ptr(), self.kcap if kcap is None else kcap,
            o[7].data_ptr(), self.grad.data_ptr(), threads)
        return self.grad.clone()


def _replace(t, i, v):
    return t[:i] + (v,) + t[i + 1:]


BAD_VIEWS = [  # (how to break the view tuple, message)
    (lambda v: v[:7], "emb view must have 8 entries"),
    (lambda v: v + (0,), "emb view must have 8 entries"),
    (lambda v: _replace(v, 1, 4), "unknown dtype code"),
    (lambda v: _replace(v, 1, -1), "unknown dtype code"),
    (lambda v: _replace(v, 2, -1), "invalid embedding shape"),
    (lambda v: _replace(v, 3, -2), "invalid embedding shape"),
    (lambda v: _replace(v, 4, 0), "invalid embedding shape"),
]
BAD_OPTIONS = [
    (OPTS[:9], "options must have 10 entries"),
    (OPTS + (1,), "options must have 10 entries"),
    (_replace(OPTS, 0, -1), "k must be >= 0"),
    (_replace(OPTS, 1, 0.0), "tau must be > 0"),
    (_replace(OPTS, 1, float("nan")), "tau must be > 0"),
    (_replace(OPTS, 1, -1.0), "tau must be > 0"),
    (_replace(OPTS, 2, 2), "unknown positives code"),
    (_replace(OPTS, 3, -1), "unknown negatives code"),
    (_replace(OPTS, 4, 0), "radius must be >= 1"),
]


@needs_cpu
@pytest.mark.parametrize("which", ["forward", "backward"])
def test_raw_bindings_reject_bad_arguments(which):
    call = RawCall()
    good = call.forward()
    fn = getattr(call, which)
    expect = fn()
    for breaker, msg in BAD_VIEWS:
        with pytest.raises(ValueError, match=msg):
            fn(view=breaker(call.view))
    for opts, msg in BAD_OPTIONS:
        with pytest.raises(ValueError, match=msg):
            fn(opts=opts)
    with pytest.raises(ValueError, match="kcap must be >= 0"):
        fn(kcap=-1)
    # wrong Python types: pybind11's own errors, before the kernel runs
    with pytest.raises(TypeError, match="incompatible function arguments"):
        fn(view=list(call.view))
    with pytest.raises((TypeError, RuntimeError), match="[Cc]ast"):
        fn(opts=_replace(OPTS, 0, "5"))
    with pytest.raises((TypeError, RuntimeError), match="[Cc]ast"):
        fn(opts=_replace(OPTS, 8, "yes"))
    # nothing was left in a bad state: the same call gives the same result
    if which == "forward":
        for a, b in zip(call.forward(), good):
            assert torch.equal(a, b)
    else:
        call.forward()
        assert torch.equal(call.backward(), expect)


@needs_cpu
@pytest.mark.parametrize("threads", [0, -3, 1, 64])
def test_raw_thread_count_out_of_range_still_runs(threads):
    # fewer than one thread means one; more threads than work is fine
    call = RawCall()
    ref = call.forward(threads=1)
    got = call.forward(threads=threads)
    for a, b in zip(got, ref):
        assert torch.equal(a, b)
    assert torch.equal(call.backward(threads=threads), call.backward(threads=1))


# --------------------------------------------------------------------------------------
# Allocation failures (in a subprocess under an address-space limit: no real memory used)
# --------------------------------------------------------------------------------------

_LIMITED = textwrap.dedent(
    """
    import resource, sys
    import torch
    import cliptbp_kernels as ck

    def vm_size():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize"):
                    return int(line.split()[1]) * 1024

    def losses(emb, labels):
        e = emb.clone().requires_grad_(True)
        lc, lb = ck.clip_boundary_losses(e, labels, backend="cpu", reduction="none")
        (lc.sum() + lb.sum()).backward()
        return lc.detach(), lb.detach(), e.grad

    # warm up (thread pool, lazy initialisation), then allow ~1 GiB more address space
    emb = torch.randn(3, 40, 8)
    labels = torch.zeros(3, 40, dtype=torch.long)
    labels[:, 5:12] = 1
    before = losses(emb, labels)
    resource.setrlimit(resource.RLIMIT_AS, (vm_size() + 2**30, resource.RLIM_INFINITY))

    case = sys.argv[1]
    try:
        if case == "bookkeeping":
            # T = 2^25 padding clips as a stride-0 view: the kernel's per-clip index lists
            # (about 100 bytes per clip: 3 GiB) cannot be allocated; torch's buffers (labels,
            # inverse norms: 512 MiB) can
            T = 2**25
            ck.clip_pair_loss(torch.zeros(1, 1, 1).expand(1, T, 1),
                              torch.full((1, T), -1, dtype=torch.long), backend="cpu")
        elif case == "pair_buffer":
            # k far above the pair count: the [B, min(k, T(T-1)/2)] pair buffer (16 GiB)
            T = 2**16
            labels2 = torch.zeros(1, T, dtype=torch.long)
            labels2[0, :5] = 1
            ck.clip_pair_loss(torch.randn(1, T, 4), labels2, k=10**12, backend="cpu")
        elif case == "topk_heap":
            # negatives="all", k = 2e7 < 7.2e7 candidates: the pair buffer (160 MiB) fits, the
            # per-thread top-k heaps (16 bytes per kept pair each) do not
            T = 12000
            labels2 = torch.zeros(1, T, dtype=torch.long)
            labels2[0, :5] = 1
            ck.clip_pair_loss(torch.randn(1, T, 4), labels2, k=2 * 10**7, negatives="all",
                              backend="cpu")
        print("NO ERROR")
    except BaseException as exc:
        print(f"RAISED {type(exc).__name__}: {exc}")
    # the process is still usable, with every thread
    after = losses(emb, labels)
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    print("STILL WORKS")
    """
)


def run_limited(case):
    return subprocess.run([sys.executable, "-c", _LIMITED, case], capture_output=True,
                          text=True, timeout=TIMEOUT)


limited_memory = pytest.mark.skipif(
    SANITIZED or not sys.platform.startswith("linux"),
    reason="needs Linux and a build without AddressSanitizer (address-space limit)",
)


@needs_cpu
@limited_memory
def test_allocation_failure_in_kernel_raises_memory_error():
    proc = run_limited("bookkeeping")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RAISED MemoryError" in proc.stdout, proc.stdout
    assert "STILL WORKS" in proc.stdout


@needs_cpu
@limited_memory
def test_pair_buffer_too_large_for_k_raises():
    # the caller-side buffer: torch's allocator raises before the kernel runs
    proc = run_limited("pair_buffer")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RAISED" in proc.stdout and "memory" in proc.stdout.lower(), proc.stdout
    assert "STILL WORKS" in proc.stdout


@needs_cpu
@limited_memory
def test_allocation_failure_inside_parallel_region_raises_memory_error():
    proc = run_limited("topk_heap")
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    assert "RAISED MemoryError" in proc.stdout, proc.stdout
    assert "STILL WORKS" in proc.stdout


# --------------------------------------------------------------------------------------
# Non-finite input: NaN for that sample only, on every backend
# --------------------------------------------------------------------------------------

def poisoned_losses(backend, emb, labels, sample, clip, value, **opts):
    """Per-sample values and gradients, clean and with emb[sample, clip, 0] = value."""
    bad = emb.clone()
    bad[sample, clip, 0] = value
    clean = per_sample_value_and_grad(backend, emb, labels, **opts)
    dirty = per_sample_value_and_grad(backend, bad, labels, **opts)
    return clean, dirty, bad


def assert_only_sample_poisoned(clean, dirty, sample):
    (cc, cb, cg), (dc, db, dg) = clean, dirty
    B = cc.shape[0]
    keep = torch.tensor([b for b in range(B) if b != sample], dtype=torch.long)
    assert torch.isnan(dc[sample]) and torch.isnan(db[sample])
    assert torch.equal(dc[keep], cc[keep]) and torch.equal(db[keep], cb[keep])
    assert torch.equal(dg[keep], cg[keep])
    assert dg.shape == cg.shape and dg.dtype == cg.dtype


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_in_sample_without_gt(backend, value):
    # a sample with no GT has no loss; a non-finite valid clip still makes it NaN (and counted)
    emb, labels = make_batch(3, 24, 8, ["windows", "no_gt", "windows"], seed=31)
    clip = int((labels[1] == 0).nonzero()[0])
    clean, dirty, bad = poisoned_losses(backend, emb, labels, 1, clip, value)
    assert clean[0][1] == 0 and clean[1][1] == 0
    assert_only_sample_poisoned(clean, dirty, 1)
    for fn in (ck.clip_pair_loss, ck.boundary_margin_loss):
        assert torch.isnan(fn(bad, labels, backend=backend))  # the mean counts it
        assert torch.isnan(fn(bad, labels, backend=backend, reduction="sum"))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("positives", ["any", "same"])
def test_nan_with_negatives_all(backend, positives):
    # with negatives="all" a background clip pairs with every clip: poison a background clip
    emb, labels = make_batch(4, 30, 8, ["windows", "padding_middle", "all_gt", "sparse_ids"],
                             seed=32)
    clip = int((labels[1] == 0).nonzero()[-1])
    clean, dirty, _ = poisoned_losses(backend, emb, labels, 1, clip, float("nan"),
                                      negatives="all", positives=positives, k=7)
    assert_only_sample_poisoned(clean, dirty, 1)


def _non_finite_grid():
    # interpreted Triton: each dtype once and each value once (a pairwise cover of two axes
    # would be the whole product)
    dtypes = (torch.float16, torch.bfloat16, torch.float64)
    values = (float("nan"), float("inf"), -float("inf"))
    return [pytest.param(b, d, v, id=f"{b}-{str(d)[6:]}-{v}") for b in BACKENDS
            for d, v in (each_value_once(dtypes, values) if b == "triton"
                         else itertools.product(dtypes, values))]


@pytest.mark.parametrize(("backend", "dtype", "value"), _non_finite_grid())
def test_non_finite_in_gt_clip_each_dtype(backend, dtype, value):
    emb, labels = make_batch(3, 26, 8, ["windows", "windows", "one_clip_windows"], seed=33,
                             dtype=dtype)
    clip = int((labels[2] >= 1).nonzero()[1])  # a GT clip of sample 2
    clean, dirty, _ = poisoned_losses(backend, emb, labels, 2, clip, value)
    assert_only_sample_poisoned(clean, dirty, 2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_sample_non_finite(backend):
    emb, labels = make_batch(3, 20, 8, ["windows", "no_gt", "all_gt"], seed=34)
    bad = emb.clone()
    bad[0, 0, 0] = float("nan")
    bad[1, 5, 3] = float("inf")
    bad[2, 19, 7] = -float("inf")
    e = bad.clone().requires_grad_(True)
    lc, lb = ck.clip_boundary_losses(e, labels, backend=backend, reduction="none")
    assert torch.isnan(lc).all() and torch.isnan(lb).all()
    mc, mb = ck.clip_boundary_losses(e, labels, backend=backend)
    assert torch.isnan(mc) and torch.isnan(mb)
    (mc + mb).backward()  # unspecified values, but it runs and has the right shape
    assert e.grad.shape == e.shape and e.grad.dtype == e.dtype
    pairs = ck.hard_negative_pairs(bad, labels, k=4, backend=backend)
    assert pairs.shape == (3, 4, 2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_sample_leaves_other_hard_negatives_alone(backend):
    emb, labels = make_batch(3, 30, 8, ["windows", "windows", "padding_middle"], seed=35)
    bad = emb.clone()
    bad[1, int((labels[1] >= 0).nonzero()[4]), 1] = float("nan")
    for negatives in ("cross", "all"):
        a = ck.hard_negative_pairs(emb, labels, k=6, negatives=negatives, backend=backend)
        b = ck.hard_negative_pairs(bad, labels, k=6, negatives=negatives, backend=backend)
        assert torch.equal(a[[0, 2]], b[[0, 2]])


@needs_cpu
@pytest.mark.parametrize("dtype, scale", [(torch.float32, 1e37), (torch.float64, 1e300),
                                          (torch.float16, 4e3)])
def test_huge_finite_values_are_not_non_finite(dtype, scale):
    # squares of such values overflow the input dtype; the loss is scale invariant and must
    # stay finite (the CPU kernels take norms in float64 with scaling)
    emb, labels = make_batch(3, 24, 8, ["windows", "padding_middle", "all_gt"], seed=36)
    big = (emb.double() * scale).to(dtype)
    assert torch.isfinite(big).all()
    lc, lb, g = per_sample_value_and_grad("cpu", big, labels)
    rc, rb, _ = per_sample_value_and_grad("cpu", (big.double() / scale).to(dtype), labels)
    assert torch.isfinite(lc).all() and torch.isfinite(lb).all() and torch.isfinite(g).all()
    tol = dict(rtol=1e-3, atol=1e-3) if dtype == torch.float16 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lc, rc, **tol)
    torch.testing.assert_close(lb, rb, **tol)


# --------------------------------------------------------------------------------------
# Nothing hangs or crashes: every such input, every backend and thread count, in a subprocess
# --------------------------------------------------------------------------------------

_NO_HANG = textwrap.dedent(
    """
    import itertools, sys
    import torch
    import cliptbp_kernels as ck
    from cases import make_batch

    patterns = ["windows", "no_gt", "all_gt", "padding_middle", "one_clip_windows",
                "sparse_ids", "strided_padding"]
    options = list(itertools.product(("any", "same"), ("cross", "all")))
    # the reference once per input; the CPU kernels with 1 and 3 threads and k = 0, 3, 10^4
    plan = [("reference", 1, 3)] + [("cpu", t, k) for t in (1, 3) for k in (0, 3, 10**4)
                                    if "cpu" in ck.available_backends("cpu")]
    runs = 0
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        for T in (1, 37):
            emb, labels = make_batch(len(patterns), T, 6, patterns, seed=T, dtype=dtype)
            for where in ("one", "all"):
                bad = emb.clone()
                if where == "one":
                    bad[2, T // 2, 0] = float("nan")
                else:
                    bad[:, :, 1] = float("nan")
                    bad[:, ::2, 2] = float("inf")
                for (backend, threads, k), (positives, negatives) in itertools.product(
                        plan, options):
                    torch.set_num_threads(threads)
                    e = bad.clone().requires_grad_(True)
                    lc, lb = ck.clip_boundary_losses(
                        e, labels, k=k, positives=positives, negatives=negatives,
                        backend=backend, reduction="none")
                    (lc.sum() + lb.sum()).backward()  # NaN samples get gradient too
                    ck.hard_negative_pairs(bad, labels, k=k, positives=positives,
                                           negatives=negatives, backend=backend)
                    runs += 1
    print(f"DONE {runs}")
    """
)


def test_non_finite_inputs_never_hang_or_crash():
    env = dict(os.environ)
    tests_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "helpers")
    env["PYTHONPATH"] = tests_dir + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", _NO_HANG], capture_output=True, text=True,
                          timeout=TIMEOUT, env=env)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-3000:]}"
    assert "DONE" in proc.stdout
