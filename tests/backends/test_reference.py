"""The PyTorch reference backend against the naive oracle of docs/losses.md, sections 1 and 2."""

import itertools
import math

import numpy as np
import pytest
import torch

from cliptbp_kernels.backends.reference import (  # noqa: E402
    boundary_margin_losses,
    clip_boundary_losses,
    clip_pair_losses,
    hard_negative_pairs,
)
from oracle import oracle_boundary, oracle_candidates, oracle_clip  # noqa: E402

OPTIONS = list(itertools.product(["any", "same"], ["cross", "all"]))
BOUNDARY_DEFAULTS = dict(radius=1, margin_max=0.3, margin_base=0.1, margin_scale=0.1)


# --------------------------------------------------------------------------------------
# input generators
# --------------------------------------------------------------------------------------


def _sparse_ids(rng, n):
    """n distinct window ids, large, unordered and non-consecutive."""
    ids = set()
    while len(ids) < n:
        ids.add(int(rng.integers(1, 2**31 - 1)) if rng.random() < 0.7 else int(rng.integers(1, 9)))
    ids = list(ids)
    rng.shuffle(ids)
    return ids


def make_labels(rng, T, kind):
    lab = np.zeros(T, dtype=np.int64)
    if T == 0:
        return lab
    if kind == "scatter":  # non-contiguous windows, padding anywhere (also below -1)
        ids = _sparse_ids(rng, 3)
        for i in range(T):
            r = rng.random()
            if r < 0.1:
                lab[i] = -1
            elif r < 0.13:
                lab[i] = -int(rng.integers(2, 9))
            elif r < 0.55:
                lab[i] = 0
            else:
                lab[i] = ids[int(rng.integers(0, 3))]
    elif kind == "segments":  # contiguous windows of random length (one-clip ones too)
        ids = _sparse_ids(rng, 4)
        pos = int(rng.integers(0, 3))
        for w in ids:
            if pos >= T:
                break
            length = int(rng.integers(1, 7))
            lab[pos : pos + length] = w
            pos += length + int(rng.integers(0, 4))
        if rng.random() < 0.5:  # padding in the middle
            lab[int(rng.integers(0, T))] = -1
        if rng.random() < 0.5:  # padding at the end
            lab[T - int(rng.integers(1, max(2, T // 4))) :] = -1
    elif kind == "nogt":
        lab[rng.random(T) < 0.2] = -1
    elif kind == "allgt":
        if rng.random() < 0.5:
            lab[:] = _sparse_ids(rng, 1)[0]
        else:
            a, b = _sparse_ids(rng, 2)
            cut = int(rng.integers(0, T + 1))
            lab[:cut] = a
            lab[cut:] = b
    elif kind == "oneclip":  # only one-clip windows
        ids = _sparse_ids(rng, 3)
        for w, i in zip(ids, rng.choice(T, size=min(3, T), replace=False)):
            lab[i] = w
    elif kind == "allpad":
        lab[:] = -1
    else:
        raise ValueError(kind)
    return lab


KINDS = ["scatter", "segments", "nogt", "allgt", "oneclip", "allpad"]


def make_case(seed, B=5, t_max=24, D=6, duplicates=True):
    rng = np.random.default_rng(seed)
    T = int(rng.integers(1, t_max + 1))
    kinds = [KINDS[int(rng.integers(0, len(KINDS)))] for _ in range(B)]
    labels = np.stack([make_labels(rng, T, kind) for kind in kinds])
    emb = rng.standard_normal((B, T, D))
    if duplicates and T > 2:  # duplicated clips give ties
        for b in range(B):
            if rng.random() < 0.4:
                src, dst = rng.choice(T, size=2, replace=False)
                emb[b, dst] = emb[b, src] * rng.uniform(0.5, 2.0)
    return torch.from_numpy(emb), torch.from_numpy(labels)


def exact_embeddings(rng, B, T, D=16):
    """Entries +-1: every norm is exactly 4 and every similarity exact (ties are exact)."""
    x = rng.choice([-1.0, 1.0], size=(B, T, D))
    x *= 2.0 ** rng.integers(-2, 3, size=(B, T, 1))  # scale by powers of two: still exact
    return torch.from_numpy(x)


# --------------------------------------------------------------------------------------
# comparison helpers
# --------------------------------------------------------------------------------------


def assert_losses_match(loss, has, expected, rtol=1e-10, atol=1e-12):
    assert loss.shape == has.shape == (len(expected),)
    for b, e in enumerate(expected):
        if e is None:
            assert not bool(has[b]), f"sample {b}: has a loss, expected none"
            assert loss[b].item() == 0.0
        elif math.isnan(e):
            assert bool(has[b]) and math.isnan(loss[b].item())
        else:
            assert bool(has[b]), f"sample {b}: no loss, expected {e}"
            got = loss[b].item()
            assert abs(got - e) <= rtol * abs(e) + atol, f"sample {b}: {got} != {e}"


def ranking_is_unambiguous(cands, k, gap=1e-9):
    top = [c[0] for c in cands[: k + 1]]
    return all(a - b > gap for a, b in zip(top, top[1:]))


def expected_pairs(chosen, k):
    return [list(p) for p in chosen] + [[-1, -1]] * (k - len(chosen))


# --------------------------------------------------------------------------------------
# values against the oracle
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("positives,negatives", OPTIONS)
def test_clip_loss_matches_oracle(positives, negatives):
    checked_pairs = 0
    for seed in range(40):
        emb, labels = make_case(1000 + seed)
        T = labels.shape[1]
        rng = np.random.default_rng(seed)
        k = [0, 1, 3, 20, 1000][seed % 5]
        tau = float(rng.choice([0.07, 0.3, 1.0, 5.0]))
        loss, has = clip_pair_losses(
            emb, labels, k=k, tau=tau, positives=positives, negatives=negatives
        )
        assert loss.dtype == torch.float64 and has.dtype == torch.bool
        expected, chosen = oracle_clip(emb, labels, k, tau, positives, negatives)
        assert_losses_match(loss, has, expected)

        pairs = hard_negative_pairs(emb, labels, k=k, positives=positives, negatives=negatives)
        assert pairs.shape == (labels.shape[0], k, 2) and pairs.dtype == torch.long
        cands = oracle_candidates(emb, labels, positives, negatives)
        for b in range(labels.shape[0]):
            if ranking_is_unambiguous(cands[b], k):
                assert pairs[b].tolist() == expected_pairs(chosen[b], k)
                checked_pairs += 1
            else:  # ties in float64: the count and validity are still fixed
                got = [p for p in pairs[b].tolist() if p != [-1, -1]]
                assert len(got) == len(chosen[b])
                assert all(0 <= i < j < T for i, j in got)
    assert checked_pairs > 100


@pytest.mark.parametrize("positives,negatives", OPTIONS)
def test_exact_ties_choose_smaller_indices(positives, negatives):
    rng = np.random.default_rng(7)
    for trial in range(25):
        B, T = 3, int(rng.integers(2, 22))
        emb = exact_embeddings(rng, B, T)
        if trial % 2:  # many duplicates: few distinct values
            src = rng.integers(0, min(3, T), size=(B, T))
            emb = torch.stack([emb[b, src[b]] for b in range(B)])
        labels = torch.from_numpy(
            np.stack([make_labels(rng, T, KINDS[int(rng.integers(0, 3))]) for _ in range(B)])
        )
        for k in [1, 2, 5, 13, 400]:
            pairs = hard_negative_pairs(emb, labels, k=k, positives=positives, negatives=negatives)
            expected, chosen = oracle_clip(emb, labels, k, 0.5, positives, negatives)
            for b in range(B):
                assert pairs[b].tolist() == expected_pairs(chosen[b], k)
            loss, has = clip_pair_losses(
                emb, labels, k=k, tau=0.5, positives=positives, negatives=negatives
            )
            assert_losses_match(loss, has, expected)


def test_hand_computed_clip_loss():
    # u0 = (1, 0), u1 = (0, 1), u2 = (1, 0) up to scale; labels: 0, 1 in GT, 2 background.
    emb = torch.tensor([[[2.0, 0.0], [0.0, 3.0], [0.5, 0.0]]], dtype=torch.float64)
    labels = torch.tensor([[1, 1, 0]])
    # P = {(0, 1)}: s = 0. N (cross) = {(0, 2): s = 1, (1, 2): s = 0}.
    tau = 0.5
    loss, has = clip_pair_losses(emb, labels, k=1, tau=tau, positives="any", negatives="cross")
    assert bool(has[0])
    assert loss[0].item() == pytest.approx(math.log(1 + math.exp(1 / tau)), rel=1e-12)
    loss, _ = clip_pair_losses(emb, labels, k=5, tau=tau, positives="any", negatives="cross")
    assert loss[0].item() == pytest.approx(math.log(1 + math.exp(1 / tau) + 1), rel=1e-12)
    loss, _ = clip_pair_losses(emb, labels, k=0, tau=tau, positives="any", negatives="cross")
    assert loss[0].item() == 0.0
    pairs = hard_negative_pairs(emb, labels, k=3, positives="any", negatives="cross")
    assert pairs[0].tolist() == [[0, 2], [1, 2], [-1, -1]]


def test_hand_computed_boundary_loss():
    # one window 1..3 (centre 2) in 5 clips; I_pos = {1, 3}, I_neg = {0, 4}.
    a = 0.3
    emb = torch.tensor(
        [[[1.0, 0.0], [math.cos(a), math.sin(a)], [1.0, 0.0], [0.0, 2.0], [1.0, 0.0]]],
        dtype=torch.float64,
    )
    labels = torch.tensor([[0, 9, 9, 9, 0]])
    s_pos = (math.cos(a) + 0.0) / 2
    s_neg = 1.0
    delta = min(0.3, 0.1 + 0.1 * 2 / 5)
    loss, has = boundary_margin_losses(emb, labels, **BOUNDARY_DEFAULTS)
    assert bool(has[0])
    assert loss[0].item() == pytest.approx(s_neg - s_pos + delta, rel=1e-12)
    # a margin cap below the formula
    loss, _ = boundary_margin_losses(
        emb, labels, radius=1, margin_max=0.05, margin_base=0.1, margin_scale=0.1
    )
    assert loss[0].item() == pytest.approx(s_neg - s_pos + 0.05, rel=1e-12)


@pytest.mark.parametrize("radius", [1, 2, 3, 100])
def test_boundary_loss_matches_oracle(radius):
    for seed in range(60):
        emb, labels = make_case(5000 + seed, t_max=30)
        rng = np.random.default_rng(seed)
        margins = dict(
            margin_max=float(rng.choice([0.3, 0.05, 2.0])),
            margin_base=float(rng.uniform(0.0, 0.5)),
            margin_scale=float(rng.uniform(0.0, 3.0)),
        )
        loss, has = boundary_margin_losses(emb, labels, radius=radius, **margins)
        assert loss.dtype == torch.float64
        assert_losses_match(loss, has, oracle_boundary(emb, labels, radius, **margins))


def test_boundary_handles_large_negative_margins_and_relu_floor():
    # with a very negative margin every window is at the relu floor: loss 0, but it counts
    emb, labels = make_case(77, B=6, t_max=20)
    loss, has = boundary_margin_losses(
        emb, labels, radius=1, margin_max=-5.0, margin_base=-5.0, margin_scale=0.0
    )
    expected = oracle_boundary(emb, labels, 1, -5.0, -5.0, 0.0)
    assert_losses_match(loss, has, expected)
    assert all(e in (None, 0.0) for e in expected)


def test_float32_within_spec_tolerance_of_float64_oracle():
    for seed in range(20):
        emb, labels = make_case(9000 + seed, t_max=32, D=16)
        loss, has = clip_pair_losses(
            emb.float(), labels, k=7, tau=0.07, positives="any", negatives="cross"
        )
        assert loss.dtype == torch.float32
        expected, _ = oracle_clip(emb, labels, 7, 0.07)
        assert_losses_match(loss, has, expected, rtol=1e-4, atol=1e-6)
        loss, has = boundary_margin_losses(emb.float(), labels, **BOUNDARY_DEFAULTS)
        assert_losses_match(loss, has, oracle_boundary(emb, labels), rtol=1e-4, atol=1e-6)


def test_combined_equals_separate_calls():
    for seed in range(10):
        emb, labels = make_case(300 + seed)
        opts = dict(k=4, tau=0.2, positives="same", negatives="all")
        bopts = dict(radius=2, margin_max=0.4, margin_base=0.05, margin_scale=0.5)
        cl, ch, bl, bh = clip_boundary_losses(emb, labels, **opts, **bopts)
        l1, h1 = clip_pair_losses(emb, labels, **opts)
        l2, h2 = boundary_margin_losses(emb, labels, **bopts)
        assert torch.equal(cl, l1) and torch.equal(ch, h1)
        assert torch.equal(bl, l2) and torch.equal(bh, h2)


def test_window_ids_are_only_names():
    """Renaming windows by any injective map to positive ids changes nothing."""
    for seed in range(10):
        emb, labels = make_case(400 + seed)
        ids = sorted({int(v) for v in labels.flatten().tolist() if v >= 1})
        rng = np.random.default_rng(seed)
        new_ids = _sparse_ids(rng, len(ids))
        renamed = labels.clone()
        for old, new in zip(ids, new_ids):
            renamed[labels == old] = new
        for positives, negatives in OPTIONS:
            opts = dict(k=5, tau=0.1, positives=positives, negatives=negatives)
            a = clip_pair_losses(emb, labels, **opts)
            b = clip_pair_losses(emb, renamed, **opts)
            assert torch.allclose(a[0], b[0], rtol=1e-12, atol=0) and torch.equal(a[1], b[1])
        a = boundary_margin_losses(emb, labels, **BOUNDARY_DEFAULTS)
        b = boundary_margin_losses(emb, renamed, **BOUNDARY_DEFAULTS)
        assert torch.allclose(a[0], b[0], rtol=1e-12, atol=0) and torch.equal(a[1], b[1])


def test_labels_dtype_and_strides_do_not_matter():
    emb, labels = make_case(55, B=4, t_max=20, D=8)
    base = clip_boundary_losses(
        emb, labels, k=6, tau=0.1, positives="any", negatives="cross", **BOUNDARY_DEFAULTS
    )
    emb_t = emb.transpose(1, 2).contiguous().transpose(1, 2)  # non-contiguous
    lab_t = labels.t().contiguous().t()
    other = clip_boundary_losses(
        emb_t, lab_t, k=6, tau=0.1, positives="any", negatives="cross", **BOUNDARY_DEFAULTS
    )
    for x, y in zip(base, other):
        if x.is_floating_point():
            assert torch.allclose(x, y, rtol=1e-12, atol=1e-15)
        else:
            assert torch.equal(x, y)


# --------------------------------------------------------------------------------------
# gradients
# --------------------------------------------------------------------------------------


def _gradcheck_labels():
    return torch.tensor(
        [
            [0, 5, 5, 5, 0, 0, 2, 2, 0, -1, 0],
            [-1, 0, 3, 3, 3, 3, 0, 1000, 0, 0, 3],
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            [7, 7, 7, 7, -1, 7, 7, 0, 0, 4, 4],
        ]
    )


@pytest.mark.parametrize("positives,negatives", OPTIONS)
def test_gradcheck_clip(positives, negatives):
    labels = _gradcheck_labels()
    emb = torch.randn(4, 11, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    emb.requires_grad_(True)
    for k in [0, 3, 100]:

        def fn(e, k=k):
            return clip_pair_losses(
                e, labels, k=k, tau=0.3, positives=positives, negatives=negatives
            )[0]

        # the full Jacobian once per option set, random projections otherwise
        fast = k != 3
        assert torch.autograd.gradcheck(
            fn, (emb,), eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=fast
        )


@pytest.mark.parametrize("radius", [1, 2])
def test_gradcheck_boundary(radius):
    labels = _gradcheck_labels()
    emb = torch.randn(4, 11, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    emb.requires_grad_(True)

    def fn(e):
        return boundary_margin_losses(
            e, labels, radius=radius, margin_max=1.5, margin_base=0.7, margin_scale=0.3
        )[0]

    assert torch.autograd.gradcheck(fn, (emb,), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_gradcheck_combined():
    labels = _gradcheck_labels()
    emb = torch.randn(4, 11, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    emb.requires_grad_(True)

    def fn(e):
        out = clip_boundary_losses(
            e, labels, k=4, tau=0.2, positives="any", negatives="cross",
            radius=1, margin_max=2.0, margin_base=1.0, margin_scale=0.1,
        )
        return out[0], out[2]

    assert torch.autograd.gradcheck(fn, (emb,), eps=1e-6, atol=1e-6, rtol=1e-5)


def _all_losses(emb, labels):
    return clip_boundary_losses(
        emb, labels, k=5, tau=0.1, positives="any", negatives="cross",
        radius=1, margin_max=2.0, margin_base=1.0, margin_scale=0.1,
    )


def test_padded_nan_has_no_influence_and_zero_gradient():
    gen = torch.Generator().manual_seed(0)
    labels = torch.tensor(
        [[0, 3, 3, -1, 3, 0, 1, 1, 0, -1], [0, 0, 2, 2, 2, -4, 0, 0, 0, 0], [-1] * 10]
    )
    emb = torch.randn(3, 10, 4, dtype=torch.float64, generator=gen)
    poisoned = emb.clone()
    pad = labels < 0
    poisoned[pad] = float("nan")
    poisoned[2, 3] = float("inf")
    clean = emb.clone().requires_grad_(True)
    dirty = poisoned.clone().requires_grad_(True)
    out_clean = _all_losses(clean, labels)
    out_dirty = _all_losses(dirty, labels)
    for x, y in zip(out_clean, out_dirty):
        assert torch.equal(x, y)
    assert torch.isfinite(out_dirty[0]).all() and torch.isfinite(out_dirty[2]).all()
    (out_clean[0].sum() + out_clean[2].sum()).backward()
    (out_dirty[0].sum() + out_dirty[2].sum()).backward()
    assert torch.equal(clean.grad, dirty.grad)
    assert (dirty.grad[pad] == 0).all()
    assert dirty.grad[~pad].abs().sum() > 0
    pairs = hard_negative_pairs(poisoned, labels, k=50, positives="any", negatives="all")
    clean_pairs = hard_negative_pairs(emb, labels, k=50, positives="any", negatives="all")
    assert torch.equal(pairs, clean_pairs)
    for b in range(3):
        for i, j in pairs[b].tolist():
            if i >= 0:
                assert not pad[b, i] and not pad[b, j]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_valid_clip_poisons_only_its_sample(value):
    gen = torch.Generator().manual_seed(1)
    labels = torch.tensor([[0, 3, 3, 3, 0, 0], [0, 1, 1, 0, 2, 2], [0, 0, 5, 5, 0, 0]])
    emb = torch.randn(3, 6, 4, dtype=torch.float64, generator=gen)
    bad = emb.clone()
    bad[1, 0, 2] = value  # a background clip of sample 1
    x = bad.clone().requires_grad_(True)
    out = _all_losses(x, labels)
    ref = _all_losses(emb, labels)
    for loss, has, ref_loss in [(out[0], out[1], ref[0]), (out[2], out[3], ref[2])]:
        assert math.isnan(loss[1].item()) and bool(has[1])
        assert torch.equal(loss[[0, 2]], ref_loss[[0, 2]])
    # gradients of the other samples are untouched
    y = emb.clone().requires_grad_(True)
    ref = _all_losses(y, labels)
    (ref[0][[0, 2]].sum() + ref[2][[0, 2]].sum()).backward()
    (out[0][[0, 2]].sum() + out[2][[0, 2]].sum()).backward()
    assert torch.equal(x.grad[[0, 2]], y.grad[[0, 2]])
    assert torch.isfinite(x.grad).all()


def test_no_loss_samples_have_zero_gradient_and_stay_attached():
    labels = torch.tensor([[0, 0, 0, 0], [-1, -1, -1, -1], [0, 4, 0, 0]])
    emb = torch.randn(3, 4, 3, dtype=torch.float64, requires_grad=True)
    out = _all_losses(emb, labels)
    for loss in (out[0], out[2]):
        assert loss.requires_grad
        assert loss.tolist() == [0.0, 0.0, 0.0]
    assert out[1].tolist() == [False, False, False] and out[3].tolist() == [False, False, False]
    (out[0].sum() + out[2].sum()).backward()
    assert torch.equal(emb.grad, torch.zeros_like(emb))


def test_positives_without_negatives_count_with_zero_loss():
    # all valid clips in one window: P non-empty, N empty -> loss 0 and has True
    labels = torch.tensor([[3, 3, 3, -1], [3, 3, 3, 3]])
    emb = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    loss, has = clip_pair_losses(emb, labels, k=20, tau=0.07, positives="any", negatives="all")
    assert loss.tolist() == [0.0, 0.0] and has.tolist() == [True, True]
    loss.sum().backward()
    assert torch.equal(emb.grad, torch.zeros_like(emb))


@pytest.mark.parametrize("B,T", [(0, 0), (0, 5), (3, 0), (2, 1), (2, 2)])
def test_degenerate_shapes(B, T):
    emb = torch.randn(B, T, 4, dtype=torch.float32, requires_grad=True)
    labels = torch.ones(B, T, dtype=torch.long)
    if T == 2:
        labels[1, 1] = 0
    out = clip_boundary_losses(
        emb, labels, k=3, tau=0.07, positives="any", negatives="cross", **BOUNDARY_DEFAULTS
    )
    for x in out:
        assert x.shape == (B,)
    expected_clip, _ = oracle_clip(emb, labels, 3, 0.07)
    assert_losses_match(out[0], out[1], expected_clip, rtol=1e-5, atol=1e-6)
    assert_losses_match(out[2], out[3], oracle_boundary(emb, labels), rtol=1e-5, atol=1e-6)
    assert out[0].requires_grad and out[2].requires_grad
    (out[0].sum() + out[2].sum()).backward()
    assert emb.grad.shape == emb.shape and torch.isfinite(emb.grad).all()
    pairs = hard_negative_pairs(emb, labels, k=3, positives="any", negatives="cross")
    assert pairs.shape == (B, 3, 2)
    if T == 2 and B == 2:
        assert pairs[1].tolist() == [[0, 1], [-1, -1], [-1, -1]]
        assert pairs[0].tolist() == [[-1, -1]] * 3


def test_k_zero_and_huge():
    emb, labels = make_case(31, B=4, t_max=12)
    zero = hard_negative_pairs(emb, labels, k=0, positives="any", negatives="all")
    assert zero.shape == (4, 0, 2)
    loss0, has0 = clip_pair_losses(emb, labels, k=0, tau=0.1, positives="any", negatives="all")
    assert (loss0 == 0).all()
    big = 10**4
    pairs = hard_negative_pairs(emb, labels, k=big, positives="any", negatives="all")
    assert pairs.shape == (4, big, 2)
    T = labels.shape[1]
    for b in range(4):
        n_valid = int((labels[b] >= 0).sum())
        n_gt = int((labels[b] >= 1).sum())
        n_cand = n_valid * (n_valid - 1) // 2 - n_gt * (n_gt - 1) // 2
        assert int((pairs[b, :, 0] >= 0).sum()) == n_cand
        assert (pairs[b, n_cand:] == -1).all()
    l_big, _ = clip_pair_losses(emb, labels, k=big, tau=0.1, positives="any", negatives="all")
    l_all, _ = clip_pair_losses(emb, labels, k=T * T, tau=0.1, positives="any", negatives="all")
    assert torch.equal(l_big, l_all)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16bit_inputs(dtype):
    emb, labels = make_case(61, B=4, t_max=20, D=8)
    x = emb.to(dtype).requires_grad_(True)
    out = _all_losses(x, labels)
    for loss in (out[0], out[2]):
        assert loss.dtype == torch.float32
    # computed in float32 from the start: the same as feeding the upcast values
    up = _all_losses(emb.to(dtype).float(), labels)
    for a, b in zip(out, up):
        assert torch.equal(a, b)
    (out[0].sum() + out[2].sum()).backward()
    assert x.grad.dtype == dtype
    expected, _ = oracle_clip(emb.to(dtype).double(), labels, 5, 0.1)
    assert_losses_match(out[0], out[1], expected, rtol=1e-4, atol=1e-5)


def test_float32_gradients_close_to_float64():
    emb, labels = make_case(62, B=4, t_max=20, D=8, duplicates=False)
    x64 = emb.clone().requires_grad_(True)
    x32 = emb.float().requires_grad_(True)
    for x in (x64, x32):
        out = _all_losses(x, labels)
        (out[0].sum() + out[2].sum()).backward()
    for b in range(4):
        ref = x64.grad[b]
        assert (x32.grad[b].double() - ref).norm() <= 1e-4 * ref.norm() + 1e-6


def test_deterministic():
    emb, labels = make_case(63, B=4, t_max=24, D=8)
    grads = []
    outs = []
    for _ in range(2):
        x = emb.float().requires_grad_(True)
        out = _all_losses(x, labels)
        (out[0].sum() + out[2].sum()).backward()
        outs.append(out)
        grads.append(x.grad)
    assert all(torch.equal(a, b) for a, b in zip(*outs))
    assert torch.equal(grads[0], grads[1])


def test_zero_vectors_normalise_with_eps():
    # a valid all-zero clip has u = 0: every similarity with it is exactly 0
    labels = torch.tensor([[0, 1, 1, 0]])
    emb = torch.randn(1, 4, 3, dtype=torch.float64)
    emb[0, 3] = 0.0
    expected, _ = oracle_clip(emb, labels, 5, 0.1, "any", "cross")
    loss, has = clip_pair_losses(emb, labels, k=5, tau=0.1, positives="any", negatives="cross")
    assert_losses_match(loss, has, expected)
    x = emb.clone().requires_grad_(True)
    loss, _ = clip_pair_losses(x, labels, k=5, tau=0.1, positives="any", negatives="cross")
    loss.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_boundary_gradient_is_zero_exactly_at_the_hinge(dtype):
    # exact values: s_pos = 1, s_neg = 0.5; with delta = 0.5 the hinge sits exactly at 0
    ones = [1.0, 1.0, 1.0, 1.0]
    off = [1.0, 1.0, -1.0, 1.0]
    emb = torch.tensor([[off, ones, ones, ones, off]], dtype=dtype)
    labels = torch.tensor([[0, 4, 4, 4, 0]])
    for margin, expected in [(0.5, 0.0), (0.75, 0.25)]:
        x = emb.clone().requires_grad_(True)
        loss, has = boundary_margin_losses(
            x, labels, radius=1, margin_max=1.0, margin_base=margin, margin_scale=0.0
        )
        assert bool(has[0]) and loss[0].item() == expected
        loss.sum().backward()
        if expected == 0.0:
            assert torch.equal(x.grad, torch.zeros_like(x))
        else:
            assert x.grad.abs().sum() > 0
