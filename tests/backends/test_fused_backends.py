"""Every fused backend against a float64 evaluation of docs/losses.md: values, gradients, pairs."""

from __future__ import annotations

import itertools

import pytest
import torch

import cliptbp_kernels as ck
from cases import (
    PATTERNS,
    check_against_spec,
    each_value_once,
    exact_tie_batch,
    make_batch,
    pairwise_cover,
    per_sample_value_and_grad,
    ref_pairs,
    sample_grad_error,
    spec_eval,
)

FUSED = [b for b in ck.available_backends("cpu") if b != "reference"]
OPTION_GRID = [
    dict(positives=p, negatives=n) for p, n in itertools.product(("any", "same"), ("cross", "all"))
]
ALL_PATTERNS = list(PATTERNS)

pytestmark = pytest.mark.skipif(not FUSED, reason="no fused backend built")


# The interpreted Triton kernels are about a hundred times slower than the CPU ones, so their
# tests take the smallest sizes that cross the same tiles: interpreter tiles are min(64, T)
# rows by min(256, T) columns, both rounded up to a power of two (backends/triton/blocks.py).
# T = 75 and T = 77 both give two 64-row tiles and one 128-column tile there, as does T = 65,
# which Triton runs instead of both. At every T, Triton runs the dtypes and options as a
# pairwise cover (every dtype with every option value, every positives with every negatives
# value).
def _dtype_option_params(head, dtypes, cover):
    """pytest params ``(*head, opts, dtype)``: every dtype with every OPTION_GRID entry, or a
    pairwise cover of them when ``cover``."""
    axes = (dtypes, ("any", "same"), ("cross", "all"))
    rows = pairwise_cover(*axes) if cover else itertools.product(*axes)
    return [pytest.param(*head, dict(positives=p, negatives=n), d,
                         id="-".join(map(str, (*head, p, n, str(d)[6:]))))
            for d, p, n in rows]


def _spec_grid():
    return [param for backend in FUSED
            for T in ((1, 2, 5, 65) if backend == "triton" else (1, 2, 5, 75, 77))
            for param in _dtype_option_params((backend, T), (torch.float32, torch.float64),
                                              cover=backend == "triton")]


@pytest.mark.parametrize(("backend", "T", "opts", "dtype"), _spec_grid())
def test_matches_spec(backend, T, opts, dtype):
    emb, labels = make_batch(len(ALL_PATTERNS), T, 19, ALL_PATTERNS, seed=T, dtype=dtype)
    check_against_spec(backend, emb, labels, k=7, tau=0.1, radius=1, **opts)


def _k_radius_grid():
    # k acts on L_clip only and radius on L_boun only: interpreted Triton runs each value once
    # (k 0, 1, 20, 5000 with radius 1, 3, 1, 3), the other backends the whole product
    ks, radii = (0, 1, 20, 5000), (1, 3)
    return [pytest.param(backend, k, r, id=f"{backend}-k{k}-r{r}") for backend in FUSED
            for k, r in (each_value_once(ks, radii) if backend == "triton"
                         else itertools.product(ks, radii))]


@pytest.mark.parametrize(("backend", "k", "radius"), _k_radius_grid())
def test_k_and_radius(backend, k, radius):
    # k = 5000 exceeds the number of candidates; radius 3 widens every boundary set
    emb, labels = make_batch(6, 40, 16, ALL_PATTERNS, seed=k + radius)
    check_against_spec(backend, emb, labels, k=k, radius=radius, margin_max=0.5,
                       margin_base=0.05, margin_scale=0.7)


@pytest.mark.parametrize("backend", FUSED)
def test_long_video(backend):
    emb, labels = make_batch(2, 700, 64, ["windows", "padding_middle"], seed=3)
    check_against_spec(backend, emb, labels)
    check_against_spec(backend, emb, labels, negatives="all", k=50)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("tau", [0.003, 0.07, 5.0])
def test_temperatures(backend, tau):
    # tau = 0.003 makes s / tau span +-333: the log-sum-exps must stay stable
    emb, labels = make_batch(4, 30, 8, ["windows", "all_gt", "one_clip_windows"], seed=11)
    check_against_spec(backend, emb, labels, tau=tau)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("opts", OPTION_GRID, ids=lambda o: f"{o['positives']}-{o['negatives']}")
def test_ties_from_duplicated_clips(backend, opts):
    emb, labels = make_batch(5, 24, 12, ALL_PATTERNS, seed=5, duplicates=True)
    check_against_spec(backend, emb, labels, k=9, **opts)


def _tie_grid():
    # Triton: a pairwise cover of dtypes and options (see _spec_grid)
    return [param for backend in FUSED
            for param in _dtype_option_params(
                (backend,), (torch.float32, torch.float64, torch.bfloat16),
                cover=backend == "triton")]


@pytest.mark.parametrize(("backend", "opts", "dtype"), _tie_grid())
def test_exact_ties_follow_the_tie_rule(backend, opts, dtype):
    # Triton: T = 20 crosses the same interpreter tiles as 30 (one 32 x 32 tile) with less
    # than half the candidate pairs; k = 500 exceeds them in both
    emb, labels = exact_tie_batch(7, 20 if backend == "triton" else 30, seed=17)
    emb = emb.to(dtype)
    for k in (1, 9, 40, 500):
        got = ck.hard_negative_pairs(emb, labels, k=k, backend=backend, **opts)
        assert torch.equal(got, ref_pairs(emb, labels, k=k, **opts)), k
    if dtype != torch.bfloat16:  # a bfloat16 gradient is itself rounded to 3 digits
        check_against_spec(backend, emb, labels, k=9, **opts)


def _pair_sims(emb, pairs):
    u = torch.nn.functional.normalize(emb.double(), dim=-1, eps=1e-8)
    i, j = pairs[..., 0].clamp_min(0), pairs[..., 1].clamp_min(0)
    b = torch.arange(emb.shape[0])[:, None].expand_as(i)
    return torch.where(pairs[..., 0] >= 0, (u[b, i] * u[b, j]).sum(-1), float("nan"))


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("opts", OPTION_GRID, ids=lambda o: f"{o['positives']}-{o['negatives']}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hard_negative_pairs(backend, opts, dtype):
    k = 15
    emb, labels = make_batch(len(ALL_PATTERNS), 50, 24, ALL_PATTERNS, seed=21, dtype=dtype)
    got = ck.hard_negative_pairs(emb, labels, k=k, backend=backend, **opts)
    assert got.shape == (emb.shape[0], k, 2) and got.dtype == torch.int64
    ref = ref_pairs(emb, labels, k=k + 1, **opts)
    s_ref = _pair_sims(emb, ref)
    for b in range(emb.shape[0]):
        n = int((ref[b, :k, 0] >= 0).sum())
        assert int((got[b, :, 0] >= 0).sum()) == n
        assert (got[b, n:] == -1).all()
        chosen = got[b, :n]
        assert (chosen[:, 0] < chosen[:, 1]).all()
        gap_ok = n < k or ref[b, k, 0] < 0 or s_ref[b, k - 1] - s_ref[b, k] > 1e-6
        if gap_ok:  # the set is determined: same pairs, ranks ordered by value
            assert {tuple(p) for p in chosen.tolist()} == {tuple(p) for p in ref[b, :n].tolist()}
        s_got = _pair_sims(emb[b:b + 1], got[b:b + 1, :n])[0]
        assert torch.allclose(s_got, s_ref[b, :n], atol=1e-6)
        assert (s_got[:-1] >= s_got[1:] - 1e-6).all()


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_twice_reference_error(backend, dtype):
    # docs/losses.md: error vs float64 at most twice the PyTorch reference's own error in that
    # dtype, plus 1e-3
    emb, labels = make_batch(6, 60, 32, ALL_PATTERNS, seed=9, dtype=dtype)
    rc, rb, rg = spec_eval(emb, labels)
    lc, lb, g = per_sample_value_and_grad(backend, emb, labels)
    qc, qb, qg = per_sample_value_and_grad("reference", emb, labels)
    assert lc.dtype == torch.float32 and g.dtype == dtype
    for got, low, exact, name in ((lc, qc, rc, "L_clip"), (lb, qb, rb, "L_boun")):
        err = (got.double() - exact).abs()
        bound = 2 * (low.double() - exact).abs() + 1e-3
        assert (err <= bound).all(), f"{name}: {err.max()} > {bound.min()}"
    err, nrm = sample_grad_error(g, rg)
    ref_err, _ = sample_grad_error(qg, rg)
    assert (err <= 2 * ref_err + 1e-3 * (1 + nrm)).all()


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reductions(backend, reduction):
    emb, labels = make_batch(5, 20, 8, ["windows", "no_gt", "all_gt"], seed=2)
    for fn in (ck.clip_pair_loss, ck.boundary_margin_loss):
        e1 = emb.clone().requires_grad_()
        e2 = emb.double().clone().requires_grad_()
        got = fn(e1, labels, reduction=reduction, backend=backend)
        ref = fn(e2, labels, reduction=reduction, backend="reference")
        assert got.shape == ref.shape
        torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-6)
        got.sum().backward()
        ref.sum().backward()
        torch.testing.assert_close(e1.grad.double(), e2.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", FUSED)
def test_mean_leaves_out_samples_without_loss(backend):
    emb, labels = make_batch(3, 20, 8, ["windows", "no_gt", "windows"], seed=4)
    per = ck.clip_pair_loss(emb, labels, reduction="none", backend=backend)
    assert per[1] == 0
    mean = ck.clip_pair_loss(emb, labels, backend=backend)
    torch.testing.assert_close(mean, (per[0] + per[2]) / 2)
    nothing = ck.clip_pair_loss(emb[1:2], labels[1:2], backend=backend)
    assert nothing.item() == 0.0


@pytest.mark.parametrize("backend", FUSED)
def test_clip_boundary_losses_equal_separate_calls(backend):
    emb, labels = make_batch(4, 33, 16, ALL_PATTERNS, seed=8)
    lc, lb = ck.clip_boundary_losses(emb, labels, backend=backend, reduction="none")
    assert torch.equal(lc, ck.clip_pair_loss(emb, labels, backend=backend, reduction="none"))
    assert torch.equal(lb, ck.boundary_margin_loss(emb, labels, backend=backend,
                                                   reduction="none"))


@pytest.mark.parametrize("backend", FUSED)
def test_padding_never_influences(backend):
    emb, labels = make_batch(3, 40, 16, ["padding_middle", "strided_padding"], seed=6)
    base_c, base_b, base_g = per_sample_value_and_grad(backend, emb, labels)
    poisoned = emb.clone()
    pad = labels < 0
    poisoned[pad] = float("nan")
    poisoned[pad.nonzero()[::2].unbind(1)] = float("inf")
    c, b, g = per_sample_value_and_grad(backend, poisoned, labels)
    assert torch.equal(c, base_c) and torch.equal(b, base_b)
    assert (g[pad] == 0).all()
    assert torch.equal(g[~pad], base_g[~pad])
    # labels below -1 count as padding where the eager check is skipped
    lab2 = torch.where(pad, torch.full_like(labels, -7), labels)
    c2, b2 = ck.clip_boundary_losses(poisoned, lab2, backend=backend, reduction="none",
                                     check_labels=False)
    assert torch.equal(c2, base_c) and torch.equal(b2, base_b)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_valid_clip_poisons_only_its_sample(backend, bad):
    emb, labels = make_batch(3, 30, 8, ["windows", "windows", "all_gt"], seed=12)
    base_c, base_b, base_g = per_sample_value_and_grad(backend, emb, labels)
    emb2 = emb.clone()
    emb2[1, 3, 2] = bad  # a valid clip (background or GT) of sample 1
    assert labels[1, 3] >= 0
    c, b, g = per_sample_value_and_grad(backend, emb2, labels)
    assert torch.isnan(c[1]) and torch.isnan(b[1])
    keep = torch.tensor([0, 2])
    assert torch.equal(c[keep], base_c[keep]) and torch.equal(b[keep], base_b[keep])
    assert torch.equal(g[keep], base_g[keep])
    assert torch.isnan(ck.clip_pair_loss(emb2, labels, backend=backend))


@pytest.mark.parametrize("backend", FUSED)
def test_empty_batches(backend):
    for B, T in ((0, 5), (3, 0), (0, 0)):
        emb = torch.randn(B, T, 4, requires_grad=True)
        labels = torch.zeros(B, T, dtype=torch.long)
        lc, lb = ck.clip_boundary_losses(emb, labels, backend=backend, reduction="none")
        assert lc.shape == (B,) and lb.shape == (B,)
        m = ck.clip_pair_loss(emb, labels, backend=backend)
        assert m.item() == 0.0
        (m + lc.sum() + lb.sum()).backward()
        assert emb.grad.shape == emb.shape and (emb.grad == 0).all()
        assert ck.hard_negative_pairs(emb, labels, k=3, backend=backend).shape == (B, 3, 2)


@pytest.mark.parametrize("backend", FUSED)
def test_non_contiguous_inputs_and_label_dtypes(backend):
    emb, labels = make_batch(4, 26, 10, ALL_PATTERNS, seed=13)
    ref = check_against_spec(backend, emb, labels)
    wide = torch.randn(26, 4, 30)  # [T, B, 3D] -> strided [B, T, D] view
    wide[:, :, ::3] = emb.transpose(0, 1)
    view = wide[:, :, ::3].transpose(0, 1)
    assert not view.is_contiguous()
    got = per_sample_value_and_grad(backend, view, labels)
    for a, b in zip(got, ref):
        assert torch.equal(a, b)
    for dt in (torch.int8, torch.int16, torch.int32):
        got = per_sample_value_and_grad(backend, emb, labels.to(dt))
        for a, b in zip(got, ref):
            assert torch.equal(a, b)


@pytest.mark.parametrize("backend", FUSED)
def test_gradcheck_float64(backend):
    emb, labels = make_batch(3, 14, 5, ["windows", "all_gt", "sparse_ids"], seed=14,
                             dtype=torch.float64)
    emb.requires_grad_(True)

    def fn(e):
        lc, lb = ck.clip_boundary_losses(e, labels, backend=backend, reduction="none", k=6,
                                         tau=0.5)
        return lc, lb

    # the interpreted Triton kernels take ~0.4 s a call: fast mode checks random projections
    # of the Jacobian (a few calls) instead of all 210 columns
    assert torch.autograd.gradcheck(fn, (emb,), eps=1e-6, atol=1e-5, rtol=1e-4,
                                    fast_mode=backend == "triton")


@pytest.mark.parametrize("backend", FUSED + ["reference"])
def test_double_backward_raises(backend):
    emb, labels = make_batch(2, 12, 4, ["windows"], seed=1, dtype=torch.float64)
    emb.requires_grad_(True)
    for fn in (ck.clip_pair_loss, ck.boundary_margin_loss):
        loss = fn(emb, labels, backend=backend)
        (g,) = torch.autograd.grad(loss, emb, create_graph=True)  # first order still works
        with pytest.raises(RuntimeError, match="double backward|differentiate twice"):
            g.sum().backward()


@pytest.mark.parametrize("backend", FUSED)
def test_outputs_attached_when_constant(backend):
    # every output joins the graph when emb requires grad, also a constant 0
    emb = torch.randn(2, 6, 4, requires_grad=True)
    labels = torch.zeros(2, 6, dtype=torch.long)
    lc, lb = ck.clip_boundary_losses(emb, labels, backend=backend)
    assert lc.requires_grad and lb.requires_grad
    (lc + lb).backward()
    assert (emb.grad == 0).all()


@pytest.mark.parametrize("backend", FUSED)
def test_deterministic_across_runs_and_threads(backend):
    # Triton: T = 70 crosses the same interpreter tiles as 120 (two 64-row tiles, one
    # 128-column tile); its interpreted kernels run on one thread whatever the setting, so a
    # second run with another thread count is both the repeat and what threads can change
    # (host ops); two option sets hold every value of positives and of negatives
    triton = backend == "triton"
    emb, labels = make_batch(6, 70 if triton else 120, 48, ALL_PATTERNS, seed=15)
    grid = [OPTION_GRID[0], OPTION_GRID[3]] if triton else OPTION_GRID  # any-cross, same-all
    results = []
    for threads in (1, 3) if triton else (1, 2, 1, 3):
        torch.set_num_threads(threads)
        for opts in grid:
            results.append((threads, opts, per_sample_value_and_grad(backend, emb, labels,
                                                                    **opts)))
    by_opts = {}
    for threads, opts, res in results:
        key = (opts["positives"], opts["negatives"])
        if key in by_opts:
            for a, b in zip(res, by_opts[key]):
                assert torch.equal(a, b), f"not bitwise equal with {threads} threads, {opts}"
        else:
            by_opts[key] = res


def test_pairwise_cover_keeps_every_pair():
    axes = ((torch.float32, torch.float64, torch.bfloat16), ("any", "same"), ("cross", "all"))
    rows = pairwise_cover(*axes)
    assert len(rows) < len(list(itertools.product(*axes)))
    for a, b in itertools.combinations(range(len(axes)), 2):
        assert {(r[a], r[b]) for r in rows} == set(itertools.product(axes[a], axes[b]))


def test_each_value_once_holds_every_value():
    axes = ((0, 1, 20, 5000), (1, 3), ("a",))
    rows = each_value_once(*axes)
    assert len(rows) == 4
    for i, axis in enumerate(axes):
        assert {r[i] for r in rows} == set(axis)
