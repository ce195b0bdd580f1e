"""Scale limits of the CPU backend: pair indices far past 2^32, window ids near 2^31, memory
that grows linearly in T, and the documented limit on T (checked before any kernel runs).

tests/backends/test_custom_ops.py already checks T = 65,536 with negatives="cross" and GT clips
near the end; these tests complement it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import cliptbp_kernels as ck
from cliptbp_kernels._checks import check_emb_labels
from cliptbp_kernels._options import MAX_T
from oracle import oracle_boundary, oracle_clip

HAS_CPU = "cpu" in ck.available_backends("cpu")
needs_cpu = pytest.mark.skipif(not HAS_CPU, reason="the CPU extension is not built")
# scripts/sanitize.sh sets this: the module is then instrumented, and memory figures are not
# those of the real build.
SANITIZED = bool(os.environ.get("CLIPTBP_SANITIZED_CPU_MODULE"))

ID_MAX = 2**31 - 1  # the largest window id docs/losses.md allows


def sparse_long_video(T, D, label_dtype, seed):
    """One sample of T clips where only four short runs of clips are valid (everything else is
    padding holding NaN): near the start, around T/2 (so pair indices cross 2^31 at T = 2^16),
    around 3T/4, and at the very end (pair indices near T^2). Each run has a window inside it
    with background on both sides, so the boundary sets lie within the run. Window ids include
    2^31 - 1 and 2^31 - 2; one window id is shared by two runs (a non-contiguous window)."""
    g = torch.Generator().manual_seed(seed)
    emb = torch.full((1, T, D), float("nan"), dtype=torch.float64)
    labels = torch.full((1, T), -1, dtype=torch.int64)
    h, q = T // 2, 3 * T // 4
    runs = [  # (first clip, length, window start, window length, window id)
        (0, 10, 3, 3, 5),
        (h - 6, 12, h - 2, 4, ID_MAX - 1),
        (q - 4, 9, q - 1, 2, 5),
        (T - 16, 16, T - 10, 5, ID_MAX),
    ]
    idx = []
    for start, n, ws, wn, wid in runs:
        labels[0, start:start + n] = 0
        labels[0, ws:ws + wn] = wid
        idx.extend(range(start, start + n))
    idx = torch.tensor(idx)
    emb[0, idx] = torch.randn(len(idx), D, generator=g, dtype=torch.float64)
    return emb, labels.to(label_dtype), idx


def n_candidates(labels, positives):
    """Number of negative candidates of sample 0 with negatives="all": non-positive pairs."""
    lab = labels[0][labels[0] >= 0].to(torch.int64)
    n = len(lab)
    gt = lab >= 1
    if positives == "any":
        pos = int(gt.sum()) * (int(gt.sum()) - 1) // 2
    else:
        ids = torch.unique(lab[gt], return_counts=True)[1]
        pos = int((ids * (ids - 1) // 2).sum())
    return n * (n - 1) // 2 - pos


def _loss_and_grad(backend, emb, labels, **opts):
    e = emb.detach().clone().requires_grad_(True)
    lc, lb = ck.clip_boundary_losses(e, labels, backend=backend, reduction="none", **opts)
    (lc.sum() + 0.5 * lb.sum()).backward()
    return lc.detach(), lb.detach(), e.grad


def check_long_sparse(emb, labels, idx, k, **opts):
    """Values against the loop oracle on the whole video; the gradient against the reference
    on the video without its padding (scattered back), with margin_scale=0: the runs keep
    their windows and boundary sets there, but not their spans (je - js)."""
    T = labels.shape[1]
    opts.setdefault("tau", 0.07)
    lc, lb, _ = _loss_and_grad("cpu", emb, labels, k=k, **opts)
    losses, chosen = oracle_clip(emb, labels, k=k, **opts)
    torch.testing.assert_close(lc[0].item(), losses[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(lb[0].item(), oracle_boundary(emb, labels)[0], rtol=1e-10,
                               atol=1e-12)
    flat = dict(margin_scale=0.0, **opts)
    _, _, grad = _loss_and_grad("cpu", emb, labels, k=k, **flat)
    _, _, rgrad = _loss_and_grad("reference", emb[:, idx], labels[:, idx].to(torch.int64), k=k,
                                 **flat)
    torch.testing.assert_close(grad[0, idx], rgrad[0], rtol=1e-8, atol=1e-10)
    pad = torch.ones(T, dtype=torch.bool)
    pad[idx] = False
    assert (grad[0, pad] == 0).all()  # padding (NaN here) gets exactly 0
    return chosen[0]


@needs_cpu
@pytest.mark.parametrize("T", [2**16, 2**20])
@pytest.mark.parametrize("positives", ["any", "same"])
@pytest.mark.parametrize("label_dtype", [torch.int64, torch.int32])
def test_negatives_all_on_long_sparse_video(T, positives, label_dtype):
    """negatives="all" pairs every valid clip with every other: the chosen pair indices
    i * T + j come close to T^2 (just below 2^32 at T = 2^16, about 2^40 at T = 2^20)."""
    emb, labels, idx = sparse_long_video(T, 8, label_dtype, seed=T % 97)
    for k in (9, 10**6):  # a few, and more than there are candidates
        chosen = check_long_sparse(emb, labels, idx, k, positives=positives, negatives="all",
                                   tau=0.1)
        expect = torch.tensor(chosen, dtype=torch.int64)
        pairs = ck.hard_negative_pairs(emb, labels, k=k, backend="cpu", positives=positives,
                                       negatives="all")
        n = len(expect)
        assert pairs.shape == (1, k, 2) and n == min(k, n_candidates(labels, positives))
        assert torch.equal(pairs[0, :n], expect)
        assert (pairs[0, n:] == -1).all()
        if k > n:  # every candidate chosen
            flat = expect[:, 0] * T + expect[:, 1]
            assert flat.max() > (T - 16) * T
            if T == 2**16:  # i * T + j < T^2 = 2^32: past 2^31, up to just below 2^32
                assert ((flat > 2**31) & (flat < 2**32)).any() and flat.max() > 2**32 - 2**21
            else:
                assert (flat > 2**32).sum() > n // 2


@needs_cpu
@pytest.mark.parametrize("positives", ["any", "same"])
def test_window_ids_near_int32_max_with_cross_negatives(positives):
    # ids 2^31 - 1 and 2^31 - 2 in one video; positives="same" keeps them apart
    emb, labels, idx = sparse_long_video(2**16, 8, torch.int64, seed=3)
    check_long_sparse(emb, labels, idx, 25, positives=positives, negatives="cross")


# --------------------------------------------------------------------------------------
# Memory: peak resident growth of forward + backward, in a fresh process
# --------------------------------------------------------------------------------------

_MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    import torch
    import cliptbp_kernels as ck

    def status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        raise KeyError(key)

    D = int(sys.argv[1])
    cases = [(int(T), negatives) for T, negatives in (a.split(":") for a in sys.argv[2:])]
    # warm up: thread pool, lazy initialisation of torch and of the kernels
    for negatives in sorted({n for _, n in cases}):
        e = torch.randn(2, 64, D, requires_grad=True)
        lab = torch.zeros(2, 64, dtype=torch.long)
        lab[:, 5:9] = 1
        sum(ck.clip_boundary_losses(e, lab, backend="cpu", negatives=negatives)).backward()

    for T, negatives in cases:
        g = torch.Generator().manual_seed(0)
        emb = torch.randn(1, T, D, generator=g).requires_grad_(True)
        labels = torch.zeros(1, T, dtype=torch.long)
        labels[0, T // 3:T // 3 + 3] = 1  # five GT clips in two windows
        labels[0, T // 2:T // 2 + 2] = 2
        with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the RSS
            f.write("5")
        rss0 = status("VmRSS")
        t0 = time.perf_counter()
        lc, lb = ck.clip_boundary_losses(emb, labels, backend="cpu", negatives=negatives)
        (lc + lb).backward()
        seconds = time.perf_counter() - t0
        growth = status("VmHWM") - rss0
        assert torch.isfinite(emb.grad).all()
        print(json.dumps({"T": T, "negatives": negatives, "growth": growth,
                          "seconds": seconds}))
        del emb, labels, lc, lb
    """
)

D_MEMORY = 64
LENGTHS = {"cross": (8192, 16384, 32768, 65536), "all": (2048, 4096, 8192, 16384)}


@pytest.fixture(scope="module")
def memory_figures():
    """{(negatives, T): peak resident growth in bytes of forward+backward, inputs excluded}.

    One fresh process measures every (T, negatives), one after the other in increasing T: the
    peak is reset to the resident size before each, and with the fixed mmap threshold below
    what one measurement freed has gone back to the system before the next starts."""
    env = dict(os.environ)
    # Fixed mmap threshold: every buffer of 16 KiB or more gets fresh pages from the kernel, so
    # the peak counts what the call allocates rather than what malloc happened to reuse.
    env["MALLOC_MMAP_THRESHOLD_"] = "16384"
    cases = sorted((T, negatives) for negatives, lengths in LENGTHS.items() for T in lengths)
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, str(D_MEMORY),
         *(f"{T}:{negatives}" for T, negatives in cases)],
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = {}
    for line in proc.stdout.strip().splitlines():
        row = json.loads(line)
        figures[row["negatives"], row["T"]] = row
    assert sorted(figures) == sorted((n, T) for T, n in cases), figures
    return figures


@needs_cpu
@pytest.mark.skipif(SANITIZED, reason="resident memory of a sanitized build is not the real one")
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
@pytest.mark.parametrize("negatives", ["cross", "all"])
def test_memory_grows_linearly_in_T(negatives, memory_figures, record_property):
    lengths = LENGTHS[negatives]
    rows = [memory_figures[negatives, T] for T in lengths]
    growth = [r["growth"] for r in rows]
    record_property("peak_growth_bytes", dict(zip(lengths, growth)))
    print(f"\nnegatives={negatives!r}, B=1, D={D_MEMORY}, 5 GT clips: peak resident growth of "
          "forward+backward (inputs excluded)")
    for r in rows:
        print(f"  T={r['T']:6d}: {r['growth'] / 2**20:7.2f} MiB "
              f"({r['growth'] / r['T']:6.0f} B/clip), {r['seconds']:.2f} s")
    # Resolution of the figure: Linux adds a thread's page faults to the process's RSS in
    # batches (up to 64 pages per thread), so pages the kernel's worker threads touched may
    # be missing from it; at the smaller T that is a good part of the total.
    slack = 64 * 4096 * (torch.get_num_threads() + 1)
    for (t1, g1), (t2, g2) in zip(zip(lengths, growth), zip(lengths[1:], growth[1:])):
        ratio = g2 / max(g1 + slack, 1)
        # linear: about 2 per doubling of T (a T^2 buffer would give 4)
        assert ratio < 2.6, f"memory grew {ratio:.2f}x from T={t1} to T={t2}: {growth}"
    T = lengths[-1]
    # far below one float32 T x T similarity matrix (the reference builds several)
    assert growth[-1] < 0.05 * 4 * T * T, growth
    assert growth[-1] / T < 2048, f"{growth[-1] / T:.0f} bytes per clip"


# --------------------------------------------------------------------------------------
# The limit on T
# --------------------------------------------------------------------------------------

def huge_views(T, dtype=torch.float32):
    """emb [1, T, 1] and labels [1, T] as stride-0 views of one element: no memory."""
    emb = torch.zeros(1, 1, 1, dtype=dtype).expand(1, T, 1)
    labels = torch.zeros(1, 1, dtype=torch.int64).expand(1, T)
    return emb, labels


def test_t_limit_value():
    assert MAX_T == 2**31 - 1


@pytest.mark.parametrize("backend", ["auto", "reference", "cpu"])
def test_t_beyond_limit_raises_before_any_kernel(backend):
    emb, labels = huge_views(MAX_T + 1)
    calls = [
        lambda: ck.clip_pair_loss(emb, labels, backend=backend),
        lambda: ck.boundary_margin_loss(emb, labels, backend=backend),
        lambda: ck.clip_boundary_losses(emb, labels, backend=backend),
        lambda: ck.hard_negative_pairs(emb, labels, backend=backend),
        lambda: ck.ClipTBPLoss(backend=backend)(emb, labels),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=r"emb .*T = 2147483648.*2\^31 - 1"):
            call()


def test_t_limit_is_checked_on_meta_tensors():
    # the check reads shapes only: meta tensors of any size, no data
    for T in (MAX_T, MAX_T + 1, 2**40):
        emb = torch.empty(2, T, 4, device="meta")
        labels = torch.empty(2, T, dtype=torch.int64, device="meta")
        if T <= MAX_T:
            check_emb_labels(emb, labels, check_labels=False)
        else:
            with pytest.raises(ValueError, match=rf"T = {T}\b.*{MAX_T}"):
                check_emb_labels(emb, labels, check_labels=False)


def test_t_limit_checked_before_labels_are_read():
    # labels shaped wrong and below -1: the T error comes first, and no 2^31-element scan runs
    emb, _ = huge_views(MAX_T + 1)
    bad = torch.full((1, 1), -5, dtype=torch.int64).expand(1, MAX_T + 1)
    with pytest.raises(ValueError, match="2\\^31 - 1"):
        check_emb_labels(emb, bad)
