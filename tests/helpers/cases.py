"""Input generators and comparison helpers shared by the backend tests."""

from __future__ import annotations

import itertools

import torch

import cliptbp_kernels as ck
from cliptbp_kernels.backends import reference

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


def exact_tie_batch(B, T, seed):
    """Clips with four entries +-1 out of 8: every norm is 2 and every similarity is a
    multiple of 1/4, exact in every dtype, so ties are exact and plentiful."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.rand(B, T, 8, generator=g).argsort(-1)[..., :4]
    signs = torch.randint(0, 2, (B, T, 4), generator=g) * 2 - 1
    emb = torch.zeros(B, T, 8).scatter_(-1, idx, signs.float())
    _, labels = make_batch(B, T, 1, list(PATTERNS), seed=seed)
    return emb, labels


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
    """The float64 evaluation of docs/losses.md (the reference run in float64)."""
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


def check_against_spec(backend, emb, labels, grad_rtol=1e-4, **opts):
    """Per-sample values and gradient of `backend` against the float64 evaluation of docs/losses.md,
    and their dtypes; returns (L_clip, L_boun, grad)."""
    lc, lb, g = per_sample_value_and_grad(backend, emb, labels, **opts)
    rc, rb, rg = spec_eval(emb, labels, **opts)
    assert lc.dtype == (torch.float64 if emb.dtype == torch.float64 else torch.float32)
    assert g.dtype == emb.dtype and g.shape == emb.shape
    assert_values_close(lc, rc, f"{backend} L_clip {opts}")
    assert_values_close(lb, rb, f"{backend} L_boun {opts}")
    assert_grads_close(g, rg, f"{backend} grad {opts}", rtol=grad_rtol)
    return lc, lb, g


def ref_pairs(emb, labels, k=20, positives="any", negatives="cross"):
    """The reference's hard negatives in float64, with the API's defaults."""
    return reference.hard_negative_pairs(emb.double(), labels, k=k, positives=positives,
                                         negatives=negatives)


# The Triton backend's index lists (tests/backends/test_triton_launch.py,
# tests/backends/test_gpu.py)


def expected_lists(labels: torch.Tensor, inv: torch.Tensor):
    """Per sample, from docs/losses.md: GT clips in (label, clip) order, valid clips in order, the
    windows (js, je, centre) in label order, and whether a valid clip is non-finite."""
    out = []
    for lab, iv in zip(labels.tolist(), inv.tolist()):
        gt = sorted((w, i) for i, w in enumerate(lab) if w >= 1)
        valid = [i for i, w in enumerate(lab) if w >= 0]
        wins = []
        for w in sorted({w for w, _ in gt}):
            clips = [i for x, i in gt if x == w]
            wins.append((clips[0], clips[-1], clips[(len(clips) - 1) // 2]))
        bad = any(iv[i] != iv[i] for i in valid)
        out.append(([i for _, i in gt], valid, wins, int(bad)))
    return out


def check_prep(labels: torch.Tensor, inv: torch.Tensor):
    """The Triton backend's index lists (`_prep_kernel`, on the tensors' device: interpreted
    on the CPU, compiled on a GPU) against `expected_lists`, with and without the list of valid
    clips (the backward's variant). On the CPU with the block sizes the launchers would use
    there (`interpreter_sizes`)."""
    from cliptbp_kernels.backends.triton import interpreter_sizes, launch

    expected = expected_lists(labels.cpu(), inv.cpu())
    interp = labels.device.type == "cpu" and interpreter_sizes()
    for valid_rows in (True, False):
        prep = launch._Prep(labels, inv, interp, valid_rows=valid_rows)
        assert (prep.rows_valid is not None) == valid_rows
        for b, (gt, valid, wins, bad) in enumerate(expected):
            ng, nv, nw = int(prep.ng[b]), int(prep.nvalid[b]), int(prep.nwin[b])
            assert (ng, nv, nw, int(prep.bad[b])) == (len(gt), len(valid), len(wins), bad), b
            assert prep.rows_gt[b, :ng].tolist() == gt, b
            if valid_rows:
                assert prep.rows_valid[b, :nv].tolist() == valid, b
            assert [tuple(w) for w in prep.win[b, :nw].tolist()] == wins, b


def random_labels(B, T, seed, sorted_ids):
    """Windows of random lengths (some overlapping: later ones overwrite), padding runs, and
    window ids either increasing in time (the usual numbering) or random."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(B, T, dtype=torch.int64)
    for b in range(B):
        n = int(torch.randint(0, max(2, T // 20), (1,), generator=g))
        starts = torch.randint(0, T, (n,), generator=g).sort().values
        ids = (torch.arange(1, n + 1) if sorted_ids
               else torch.randint(1, 2**31 - 1, (n,), generator=g))
        for w in range(n):
            L = int(torch.randint(1, max(2, T // 10), (1,), generator=g))
            labels[b, starts[w]:starts[w] + L] = ids[w]
        if b % 2:
            s = int(torch.randint(0, T, (1,), generator=g))
            labels[b, s:s + max(1, T // 7)] = -1
    return labels


def block_edge_labels(block: int = 4096) -> torch.Tensor:
    """[3, T] labels (T = 2 block + 808) whose lists cross the prep kernel's list-block edges
    (4096 clips in the interpreter, 1024 on the GPU): windows across clips `block` and
    `2 block`, window ids falling in time, with a one-clip window inside another window's run
    (sample 0); T / 2 GT clips with ids cycling 1..9 and padding at a block edge (sample 1);
    every clip GT, ids rising in time (sample 2: no ranking needed; flipped, it ranks T clips).
    Samples 0 and 1 take the ranking path, sample 1 over more GT clips than a list block
    holds."""
    T = 2 * block + 808
    labels = torch.zeros(3, T, dtype=torch.int64)
    labels[0, block - 96:block + 104] = 7
    labels[0, 2 * block - 92:2 * block + 300] = 2
    labels[0, 10:600] = 5
    labels[0, 300] = 9
    ar = torch.arange(T)
    labels[1] = torch.where(ar % 2 == 0, 1 + (ar // 100) % 9, 0)
    labels[1, block - 1:block + 1] = -1
    labels[2, :] = 1
    labels[2, T * 5 // 9:] = 3
    return labels


def pairwise_cover(*axes):
    """A subset of the product of ``axes`` in which every pair of values of any two axes occurs
    at least once (greedy, deterministic, in product order). Each value of every axis still
    runs, and so does every combination of two; only the higher-order combinations are left
    out. The interpreted Triton tests use it where the full product would cost minutes."""
    full = list(itertools.product(*axes))

    def pairs(row):
        return {(a, row[a], b, row[b]) for a, b in itertools.combinations(range(len(row)), 2)}

    todo = set().union(*(pairs(r) for r in full)) if full else set()
    chosen = []
    while todo:
        best = max(full, key=lambda r: len(pairs(r) & todo))
        chosen.append(best)
        todo -= pairs(best)
    return chosen or full


def each_value_once(*axes):
    """Rows in which every value of every axis occurs at least once: row i takes value
    i mod len(axis) of each axis, as many rows as the longest axis has values. For axes that
    act on separate parts of the computation, where no combination needs covering."""
    n = max(len(a) for a in axes)
    return [tuple(a[i % len(a)] for a in axes) for i in range(n)]
