"""Triton kernels of L_clip and L_boun (SPEC.md sections 1 and 2), forward and backward.

Launched by `cliptbp_kernels._triton_backend`; this module needs `triton` and is imported
only when it is installed. Every kernel reads the embeddings where they lie (any dtype, any
strides) and normalises on the fly, ``u_i = v_i * inv_norm_i``, with the inverse norms of
`_norm_kernel`; nothing of size ``T x T`` and no normalised copy of the embeddings is ever
written to memory.

Forward:

* `_norm_kernel`: 1 / max(||v_i||, 1e-8) per clip (float64, scaled by the largest magnitude
  so that no square overflows), 0 for padding, NaN for a clip holding NaN or Inf.
* `_prep_kernel`, one program per sample: the index lists (GT clips in (label, clip) order,
  valid clips, the window table) and the per-sample non-finite flag. The backward launches it
  again rather than keeping its lists.
* `_clip_fwd_kernel`, one program per (row block, column split, sample): the rows are the GT
  clips (``negatives="cross"``) or the valid clips (``"all"``). For each column tile it
  computes the similarity tile with ``tl.dot`` (``input_precision="ieee"``: true float32
  products), classifies every pair by label, keeps an online log-sum-exp of the positives per
  row and a running top-k of the negative candidates as int64 keys (order-preserving bits of
  the float32 similarity above the complement of the 32-bit pair index, so one integer
  top-k gives SPEC.md's tie rule), and writes one partial log-sum-exp and one partial top-k.
* `_finalize_kernel`, one program per sample: merges the partial results in a fixed order,
  recomputes the chosen similarities, computes the boundary terms (per window, the means of
  ``s_ci`` over ``I_pos`` and ``I_neg``), and writes the losses, the flags, the two values the
  backward needs and the chosen pairs in rank order.

Backward (exactly sparse, no atomics, bitwise deterministic):

* `_pos_bwd_kernel`: the GT x GT block of positive pairs, one program per GT row block and
  output column chunk, each gradient row written by exactly one program.
* `_sparse_bwd_kernel`, one program per sample: the chosen negatives' coefficients, then the
  boundary terms (the window sums recomputed as in the forward), applied window after window
  in a fixed order.
* `_chain_kernel`: the chain rule through the normalisation.
"""

import os

import triton
import triton.language as tl

# Under the interpreter every call of a nested @triton.jit function re-patches the language
# module (milliseconds each); device functions are then plain Python, which the interpreted
# kernel calls with the language already patched. Compiled kernels inline them as usual.
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _device(fn):
    return fn if _INTERPRET else triton.jit(fn)

# plain Python values (for the launchers) and their constexpr twins (for the kernels)
I64_MIN = -9223372036854775808
I64_MAX = 9223372036854775807
I64_LOW32 = 4294967295  # 2^32 - 1
INT64_MIN = tl.constexpr(I64_MIN)
INT64_MAX = tl.constexpr(I64_MAX)
LOW32 = tl.constexpr(I64_LOW32)
NORM_EPS = tl.constexpr(1e-8)


@_device
def _rmax(x, axis: tl.constexpr):
    """tl.max without its wrapper (under the interpreter, each wrapper call costs ms)."""
    return tl.reduce(x, axis, tl.standard._elementwise_max)


@_device
def _rmin(x, axis: tl.constexpr):
    return tl.reduce(x, axis, tl.standard._elementwise_min)


@_device
def _rsum(x, axis: tl.constexpr):
    return tl.reduce(x, axis, tl.standard._sum_combine)


@_device
def _to_f64(v):
    """Exact widening to float64 (16-bit types through float32)."""
    if v.dtype == tl.float64:
        return v
    else:
        return v.to(tl.float32).to(tl.float64)


@_device
def _load_u(emb_ptr, b, rows, row_ok, inv_ptr, T, d0, D, sb, st, sd,
            BK: tl.constexpr, CT: tl.constexpr):
    """Normalised embeddings u[rows, d0:d0+BK] of sample b in the compute type (0 where masked)."""
    d = d0 + tl.arange(0, BK)
    m = row_ok[:, None] & (d[None, :] < D)
    v = tl.load(emb_ptr + b * sb + rows[:, None] * st + d[None, :] * sd, mask=m, other=0.0)
    inv = tl.load(inv_ptr + b * T + rows, mask=row_ok, other=0.0)
    return (_to_f64(v) * inv[:, None]).to(CT)


@_device
def _pair_sims(emb_ptr, b, pair, sel, inv_ptr, T, D, sb, st, sd, KP: tl.constexpr,
               BK: tl.constexpr, CT: tl.constexpr):
    """s_ij (float64 sums of compute-type products) of the pairs i * T + j where `sel`; the
    forward's loss and the backward's coefficients use this same computation."""
    i = tl.where(sel, pair // T, 0)
    j = tl.where(sel, pair % T, 0)
    acc = tl.full([KP], 0, tl.float64)
    for d0 in range(0, D, BK):
        ui = _load_u(emb_ptr, b, i, sel, inv_ptr, T, d0, D, sb, st, sd, BK, CT)
        uj = _load_u(emb_ptr, b, j, sel, inv_ptr, T, d0, D, sb, st, sd, BK, CT)
        acc += _rsum(ui.to(tl.float64) * uj.to(tl.float64), 1)
    return acc


@_device
def _mm_nt(a, b, IS_F64: tl.constexpr):
    """a [M, K] times b [N, K] transposed: [M, N]. float64 has no tensor-core dot here."""
    if IS_F64:
        return _rsum(a[:, None, :] * b[None, :, :], 2)
    else:
        return tl.dot(a, tl.trans(b), input_precision="ieee")


@_device
def _mm_nn(a, b, IS_F64: tl.constexpr):
    """a [M, K] times b [K, N]: [M, N]."""
    if IS_F64:
        return _rsum(a[:, :, None] * b[None, :, :], 1)
    else:
        return tl.dot(a, b, input_precision="ieee")


@_device
def _make_key(s, pair):
    """int64 ranking key: ordered bits of float32 s (-0.0 as +0.0) above 2^32 - 1 - pair."""
    s = tl.where(s == 0.0, 0.0, s)
    bits = s.to(tl.int32, bitcast=True)
    o = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return (o.to(tl.int64) << 32) | (LOW32 - pair)


@_device
def _merge_topk(top, key, KP: tl.constexpr):
    """The largest of the running top-k `top` [KP] and the candidate keys `key` (any shape).

    Keys are distinct (each holds its pair index); INT64_MIN marks "none", and slots holding
    INT64_MAX are never replaced (they pad k up to the power of two KP). While the best
    remaining candidate beats the smallest kept key, it replaces that key: after the first
    tiles only a few candidates get this far, so this costs far less than sorting a tile."""
    idx = tl.arange(0, KP)
    best = _rmax(key, None)
    low = _rmin(top, None)
    while best > low:
        pos = _rmin(tl.where(top == low, idx, KP), None)
        top = tl.where(idx == pos, best, top)
        key = tl.where(key == best, INT64_MIN, key)
        best = _rmax(key, None)
        low = _rmin(top, None)
    return top


@_device
def _init_topk(K, KP: tl.constexpr):
    """An empty running top-k of K keys in KP >= K slots."""
    idx = tl.arange(0, KP)
    return tl.where(idx < K, INT64_MIN, INT64_MAX).to(tl.int64)


@_device
def _log1p(y):
    """log(1 + y) for y >= 0 in float64, accurate for tiny y."""
    return tl.where(y < 1e-4, y * (1.0 - y * (0.5 - y / 3.0)), tl.log(1.0 + y))


@_device
def _expm1(x):
    """exp(x) - 1 in float64, accurate for small |x|."""
    return tl.where(tl.abs(x) < 1e-5, x * (1.0 + x * (0.5 + x / 6.0)), tl.exp(x) - 1.0)


@_device
def _f64(hi, lo):
    """A float64 option passed as two float32 scalars (Triton passes Python floats as fp32)."""
    return tl.cast(hi, tl.float64) + tl.cast(lo, tl.float64)


# --------------------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------------------


@triton.jit
def _norm_kernel(emb_ptr, lab_ptr, inv_ptr, T, D, sb, st, sd,
                 BM: tl.constexpr, BK: tl.constexpr):
    rb = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    r = (rb * BM + tl.arange(0, BM)).to(tl.int64)
    in_t = r < T
    lab = tl.load(lab_ptr + b * T + r, mask=in_t, other=-1)
    valid = lab >= 0
    amax = tl.full([BM], 0, tl.float64)
    bad = tl.full([BM], 0, tl.int32)
    for d0 in range(0, D, BK):
        d = d0 + tl.arange(0, BK)
        m = valid[:, None] & (d[None, :] < D)
        v = tl.load(emb_ptr + b * sb + r[:, None] * st + d[None, :] * sd, mask=m, other=0.0)
        v = _to_f64(v)
        a = tl.abs(v)
        nonfinite = (v != v) | (a == float("inf"))
        bad += _rsum(nonfinite.to(tl.int32), 1)
        amax = tl.maximum(amax, _rmax(tl.where(nonfinite, 0.0, a), 1))
    ok = (bad == 0) & (amax > 0.0)
    div = tl.where(ok, amax, 1.0)
    ss = tl.full([BM], 0, tl.float64)
    for d0 in range(0, D, BK):
        d = d0 + tl.arange(0, BK)
        m = valid[:, None] & (d[None, :] < D)
        v = tl.load(emb_ptr + b * sb + r[:, None] * st + d[None, :] * sd, mask=m, other=0.0)
        x = _to_f64(v) / div[:, None]
        ss += _rsum(tl.where(m, x * x, 0.0), 1)
    nrm = tl.where(ok, amax * tl.sqrt(ss), 0.0)
    inv = 1.0 / tl.maximum(nrm, NORM_EPS)
    inv = tl.where(bad > 0, float("nan"), inv)
    inv = tl.where(valid, inv, 0.0)
    tl.store(inv_ptr + b * T + r, inv, mask=in_t)


@triton.jit
def _prep_kernel(lab_ptr, inv_ptr, rows_gt_ptr, rows_valid_ptr, win_ptr,
                 ng_ptr, nvalid_ptr, nwin_ptr, bad_ptr, T,
                 BT: tl.constexpr, BR: tl.constexpr, VALID_ROWS: tl.constexpr):
    """Per sample (one program): the index lists the other kernels read, in place of a chain
    of small torch ops (one launch instead of some thirty on the host).

    rows_gt [B, T]: the GT clips ordered by (label, clip), count ng; rows_valid [B, T] (written
    only with VALID_ROWS): the valid clips in order, count nvalid; win [B, T, 3]: (js, je,
    centre) of each window, in label order (the window's label is that of clip js), count
    nwin; bad: 1 when a valid clip holds NaN or Inf (its inverse norm is NaN), else 0. Before
    the windows are written, win also serves as working memory (2 T values per sample). Labels
    that do not decrease along the GT clips (windows numbered in time order: the usual case)
    take O(T) steps; other samples add a ranking of O(ng^2) integer compares."""
    b = tl.program_id(0).to(tl.int64)
    base = b * T
    izero = _rsum(tl.full([1], 0, tl.int32), None)
    # 1. the GT and the valid clips in clip order (compaction by prefix counts)
    ng = izero
    nv = izero
    nbad = izero
    for t0 in range(0, T, BT):
        i = t0 + tl.arange(0, BT)
        in_t = i < T
        lab = tl.load(lab_ptr + base + i, mask=in_t, other=-1)
        gt = (lab >= 1).to(tl.int32)
        valid = (lab >= 0).to(tl.int32)
        inv = tl.load(inv_ptr + base + i, mask=valid != 0, other=0.0)
        nbad += _rsum(((valid != 0) & (inv != inv)).to(tl.int32), None)
        tl.store(rows_gt_ptr + base + ng + tl.cumsum(gt, 0) - 1, i.to(tl.int64), mask=gt != 0)
        if VALID_ROWS:
            tl.store(rows_valid_ptr + base + nv + tl.cumsum(valid, 0) - 1, i.to(tl.int64),
                     mask=valid != 0)
        ng += _rsum(gt, None)
        nv += _rsum(valid, None)
    tl.debug_barrier()
    # 2. (label, clip) order: already there unless a label falls along the GT clips
    desc = izero
    for p0 in range(0, ng, BT):
        p = p0 + tl.arange(0, BT)
        pm = (p >= 1) & (p < ng)
        r1 = tl.load(rows_gt_ptr + base + p, mask=pm, other=0)
        r0 = tl.load(rows_gt_ptr + base + p - 1, mask=pm, other=0)
        l1 = tl.load(lab_ptr + base + r1, mask=pm, other=0)
        l0 = tl.load(lab_ptr + base + r0, mask=pm, other=0)
        desc += _rsum((pm & (l1 < l0)).to(tl.int32), None)
    if desc > 0:
        # working memory in win: the GT clips in clip order, then their labels (read
        # contiguously by the ranking's inner loop)
        scratch_ptr = win_ptr + 3 * base
        for p0 in range(0, ng, BT):
            p = p0 + tl.arange(0, BT)
            pm = p < ng
            r = tl.load(rows_gt_ptr + base + p, mask=pm, other=0)
            tl.store(scratch_ptr + p, r, mask=pm)
            tl.store(scratch_ptr + T + p, tl.load(lab_ptr + base + r, mask=pm, other=0),
                     mask=pm)
        tl.debug_barrier()
        # rank of GT clip p (clip order) = how many GT clips come before it in (label, clip)
        for p0 in range(0, ng, BR):
            p = p0 + tl.arange(0, BR)
            pm = p < ng
            rp = tl.load(scratch_ptr + p, mask=pm, other=0)
            lp = tl.load(scratch_ptr + T + p, mask=pm, other=0)
            rank = tl.full([BR], 0, tl.int32)
            for q0 in range(0, ng, BR):
                q = q0 + tl.arange(0, BR)
                qm = q < ng
                lq = tl.load(scratch_ptr + T + q, mask=qm, other=0)
                before = (lq[None, :] < lp[:, None]) | (
                    (lq[None, :] == lp[:, None]) & (q[None, :] < p[:, None]))
                rank += _rsum((qm[None, :] & before).to(tl.int32), 1)
            tl.store(rows_gt_ptr + base + rank, rp, mask=pm)
        tl.debug_barrier()
    # 3. windows: runs of one label along rows_gt; first and last positions of each run
    nw = izero
    for p0 in range(0, ng, BT):
        p = p0 + tl.arange(0, BT)
        pm = p < ng
        r = tl.load(rows_gt_ptr + base + p, mask=pm, other=0)
        lab = tl.load(lab_ptr + base + r, mask=pm, other=0)
        hp = pm & (p >= 1)
        rprev = tl.load(rows_gt_ptr + base + p - 1, mask=hp, other=0)
        lprev = tl.load(lab_ptr + base + rprev, mask=hp, other=-1)
        hn = (p + 1) < ng
        rnext = tl.load(rows_gt_ptr + base + p + 1, mask=hn, other=0)
        lnext = tl.load(lab_ptr + base + rnext, mask=hn, other=-1)
        new = pm & (lab != lprev)
        last = pm & (lab != lnext)
        wid = nw + tl.cumsum(new.to(tl.int32), 0) - 1
        # the run's first and last positions in rows_gt, for the pass below
        tl.store(win_ptr + (base + wid) * 3 + 1, p.to(tl.int64), mask=new)
        tl.store(win_ptr + (base + wid) * 3 + 2, p.to(tl.int64), mask=last)
        nw += _rsum(new.to(tl.int32), None)
    tl.debug_barrier()
    # js, je and the centre (the run's middle element, SPEC.md section 2) of each window, in
    # place of the positions (all of a block read before any is overwritten)
    for w0 in range(0, nw, BT):
        w = w0 + tl.arange(0, BT)
        wm = w < nw
        wp = win_ptr + (base + w) * 3
        s = tl.load(wp + 1, mask=wm, other=0)
        e = tl.load(wp + 2, mask=wm, other=0)
        js = tl.load(rows_gt_ptr + base + s, mask=wm, other=0)
        je = tl.load(rows_gt_ptr + base + e, mask=wm, other=0)
        c = tl.load(rows_gt_ptr + base + s + (e - s) // 2, mask=wm, other=0)
        tl.debug_barrier()
        tl.store(wp, js, mask=wm)
        tl.store(wp + 1, je, mask=wm)
        tl.store(wp + 2, c, mask=wm)
    tl.store(ng_ptr + b, ng.to(tl.int64))
    tl.store(nvalid_ptr + b, nv.to(tl.int64))
    tl.store(nwin_ptr + b, nw.to(tl.int64))
    tl.store(bad_ptr + b, (nbad > 0).to(tl.int64))


@triton.jit
def _clip_fwd_kernel(emb_ptr, lab_ptr, inv_ptr, rows_ptr, nrows_ptr, bad_ptr,
                     lse_m_ptr, lse_s_ptr, top_ptr,
                     T, D, sb, st, sd, inv_tau_hi, inv_tau_lo, NRB, NSPLIT, TILES_PER_SPLIT, K,
                     SAME: tl.constexpr, ALL: tl.constexpr, KP: tl.constexpr,
                     HAS_K: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                     BK: tl.constexpr, CT: tl.constexpr, IS_F64: tl.constexpr):
    rb = tl.program_id(0)
    sp = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    n_rows = tl.load(nrows_ptr + b)
    bad = tl.load(bad_ptr + b)
    if (rb * BM < n_rows) & (bad == 0):
        inv_tau = _f64(inv_tau_hi, inv_tau_lo).to(CT)
        r = rb * BM + tl.arange(0, BM)
        row_ok = r < n_rows
        rows = tl.load(rows_ptr + b * T + r, mask=row_ok, other=0)
        lab_r = tl.load(lab_ptr + b * T + rows, mask=row_ok, other=-1)
        gi = lab_r >= 1
        m_row = tl.full([BM], float("-inf"), CT)
        s_row = tl.full([BM], 0, CT)
        top = _init_topk(K, KP)
        n_tiles = ((T) + (BN) - 1) // (BN)
        t0 = sp * TILES_PER_SPLIT
        t1 = tl.minimum(t0 + TILES_PER_SPLIT, n_tiles)
        if ALL:
            # rows are sorted valid clips and only j > i is needed
            row_min = _rmin(tl.where(row_ok, rows, T), None)
            t0 = tl.maximum(t0, ((row_min + 1) // BN).to(tl.int32))
        for t in range(t0, t1):
            cols = (t * BN + tl.arange(0, BN)).to(tl.int64)
            col_in = cols < T
            lab_c = tl.load(lab_ptr + b * T + cols, mask=col_in, other=-1)
            S = tl.full([BM, BN], 0, CT)
            for d0 in range(0, D, BK):
                ur = _load_u(emb_ptr, b, rows, row_ok, inv_ptr, T, d0, D, sb, st, sd, BK, CT)
                uc = _load_u(emb_ptr, b, cols, col_in, inv_ptr, T, d0, D, sb, st, sd, BK, CT)
                S += _mm_nt(ur, uc, IS_F64)
            gj = lab_c >= 1
            i2 = rows[:, None]
            j2 = cols[None, :]
            ok = row_ok[:, None] & (lab_c[None, :] >= 0) & (j2 != i2)
            # each unordered pair once: from the row of its smaller clip when both are rows
            if ALL:
                ok = ok & (j2 > i2)
            else:
                ok = ok & ((j2 > i2) | (lab_c[None, :] < 1))
            pos = ok & gi[:, None] & gj[None, :]
            if SAME:
                pos = pos & (lab_r[:, None] == lab_c[None, :])
            z = S * inv_tau
            zp = tl.where(pos, z, float("-inf"))
            new_m = tl.maximum(m_row, _rmax(zp, 1))
            safe_m = tl.where(new_m == float("-inf"), 0.0, new_m)
            e = tl.where(pos, tl.exp(zp - safe_m[:, None]), 0.0)
            s_row = s_row * tl.exp(m_row - safe_m) + _rsum(e, 1)
            m_row = new_m
            if HAS_K:
                neg = ok & (~pos)
                if not ALL:
                    neg = neg & (gi[:, None] | gj[None, :])
                pair = tl.minimum(i2, j2) * T + tl.maximum(i2, j2)
                key = tl.where(neg, _make_key(S.to(tl.float32), pair), INT64_MIN)
                top = _merge_topk(top, key, KP)
        M = _rmax(m_row, None)
        safe = tl.where(M == float("-inf"), 0.0, M)
        tot = _rsum(s_row * tl.exp(m_row - safe), None)
        part = (b * NRB + rb) * NSPLIT + sp
        tl.store(lse_m_ptr + part, M.to(tl.float64))
        tl.store(lse_s_ptr + part, tot.to(tl.float64))
        if HAS_K:
            tl.store(top_ptr + part * KP + tl.arange(0, KP), tl.where(top == INT64_MAX,
                                                                      INT64_MIN, top))


@_device
def _members(js, je, c, wl, radius, o, lab_ptr, b, T):
    """Clip positions and membership of I_pos / I_neg for windows (js, je, c, wl) and offsets o
    (broadcast together). Offsets 0..6r+2 cover, in order, [js, js + r], [c - r, c + r],
    [je - r, je] (I_pos candidates; a clip already covered by an earlier range is skipped) and
    [js - r, js), (je, je + r] (I_neg candidates)."""
    r = radius
    p = tl.where(o <= r, js + o,
                 tl.where(o <= 3 * r + 1, c - r + (o - r - 1),
                          tl.where(o <= 4 * r + 2, je - r + (o - 3 * r - 2),
                                   tl.where(o <= 5 * r + 2, js - r + (o - 4 * r - 3),
                                            je + 1 + (o - 5 * r - 3)))))
    in_t = (p >= 0) & (p < T) & (o < 6 * r + 3)
    lp = tl.load(lab_ptr + b * T + p, mask=in_t, other=-1)
    in_a = (p >= js) & (p <= js + r)
    in_b = (p >= c - r) & (p <= c + r)
    first = (o <= r) | ((o <= 3 * r + 1) & ~in_a) | ((o > 3 * r + 1) & ~in_a & ~in_b)
    dist = tl.minimum(tl.minimum(tl.abs(p - js), tl.abs(p - c)), tl.abs(p - je))
    pos = (in_t & (o <= 4 * r + 2) & first & (p >= js) & (p <= je) & (lp == wl) & (p != c)
           & (dist <= r))
    neg = in_t & (o > 4 * r + 2) & (lp == 0)
    return p, pos, neg


@_device
def _window_entry(lab_ptr, win_ptr, b, w, wm, T):
    """(js, je, centre, label) of the windows w of sample b where wm: their entries in the
    window table [B, T, 3] written by `_prep_kernel` (a window's label is that of clip js)."""
    wp = win_ptr + (b * T + w) * 3
    js = tl.load(wp, mask=wm, other=0)
    je = tl.load(wp + 1, mask=wm, other=0)
    c = tl.load(wp + 2, mask=wm, other=0)
    wl = tl.load(lab_ptr + b * T + js, mask=wm, other=0)
    return js, je, c, wl


@_device
def _window_members(lab_ptr, win_ptr, b, w, wm, T, radius, BO: tl.constexpr):
    """(clip positions [BW, BO], I_pos and I_neg membership, centres [BW]) of the windows w of
    sample b where wm (`_members` of their table entries)."""
    js, je, c, wl = _window_entry(lab_ptr, win_ptr, b, w, wm, T)
    o = tl.arange(0, BO)
    p, pos, neg = _members(js[:, None], je[:, None], c[:, None], wl[:, None], radius,
                           o[None, :], lab_ptr, b, T)
    return p, pos & wm[:, None], neg & wm[:, None], c


@_device
def _window_sums(emb_ptr, lab_ptr, inv_ptr, win_ptr, b, w, wm, T, D, sb, st, sd, radius,
                 BO: tl.constexpr, BK: tl.constexpr, CT: tl.constexpr):
    """(mean of s_ci over I_pos, mean over I_neg, |I_pos|, |I_neg|) of the windows w of sample
    b where wm, float64 vectors; the forward's loss and the backward use this same
    computation."""
    p, pos, neg, c = _window_members(lab_ptr, win_ptr, b, w, wm, T, radius, BO)
    mem = pos | neg
    acc = tl.zeros(p.shape, tl.float64)
    for d0 in range(0, D, BK):
        d = d0 + tl.arange(0, BK)
        dm = d[None, None, :] < D
        vp = tl.load(emb_ptr + b * sb + p[:, :, None] * st + d[None, None, :] * sd,
                     mask=mem[:, :, None] & dm, other=0.0)
        ip = tl.load(inv_ptr + b * T + p, mask=mem, other=0.0)
        up = (_to_f64(vp) * ip[:, :, None]).to(CT).to(tl.float64)
        uc = _load_u(emb_ptr, b, c, wm, inv_ptr, T, d0, D, sb, st, sd, BK, CT)
        acc += _rsum(up * uc.to(tl.float64)[:, None, :], 2)
    npos = _rsum(pos.to(tl.int32), 1)
    nneg = _rsum(neg.to(tl.int32), 1)
    sp = _rsum(tl.where(pos, acc, 0.0), 1)
    sn = _rsum(tl.where(neg, acc, 0.0), 1)
    return (sp / tl.maximum(npos, 1).to(tl.float64), sn / tl.maximum(nneg, 1).to(tl.float64),
            npos.to(tl.float64), nneg.to(tl.float64))


@triton.jit
def _finalize_kernel(emb_ptr, lab_ptr, inv_ptr, nrows_ptr, nvalid_ptr, bad_ptr,
                     win_ptr, nwin_ptr, lse_m_ptr, lse_s_ptr, top_ptr,
                     loss_c_ptr, has_c_ptr, loss_b_ptr, has_b_ptr, lse_out_ptr, l_out_ptr,
                     keys_ptr, pairs_ptr, T, D, sb, st, sd, inv_tau_hi, inv_tau_lo, NRB, NSPLIT,
                     K, KCAP, radius, mmax_hi, mmax_lo, mbase_hi, mbase_lo, mscale_hi,
                     mscale_lo, WANT_CLIP: tl.constexpr, WANT_BOUN: tl.constexpr,
                     KP: tl.constexpr, HAS_K: tl.constexpr, BM: tl.constexpr,
                     BP: tl.constexpr, BPK: tl.constexpr, BK: tl.constexpr, BW: tl.constexpr,
                     BO: tl.constexpr, BKW: tl.constexpr, BKP: tl.constexpr,
                     BJ: tl.constexpr, CT: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    bad = tl.load(bad_ptr + b)
    fzero = _rsum(tl.full([1], 0, tl.float64), None)  # float64 and int32 scalars, so that every
    izero = _rsum(tl.full([1], 0, tl.int32), None)    # branch below assigns the same types
    nan = fzero + float("nan")
    loss_c = fzero
    has_c = izero
    lse_p = fzero
    l = fzero
    chosen = tl.full([KP], INT64_MIN, tl.int64)  # the chosen keys, INT64_MIN for none
    if WANT_CLIP:
        if bad != 0:
            loss_c = nan
            has_c = izero + 1
        else:
            inv_tau = _f64(inv_tau_hi, inv_tau_lo)
            n_rows = tl.load(nrows_ptr + b)
            nparts = ((n_rows) + (BM) - 1) // (BM) * NSPLIT
            base = b * NRB * NSPLIT
            # log-sum-exp of the positives: the maximum, then the sum, in part order
            M = _rmax(tl.full([BP], float("-inf"), tl.float64), None)
            for p0 in range(0, nparts, BP):
                p = p0 + tl.arange(0, BP)
                m = tl.load(lse_m_ptr + base + p, mask=p < nparts, other=float("-inf"))
                M = tl.maximum(M, _rmax(m, None))
            safe = tl.where(M == float("-inf"), 0.0, M)
            tot = _rsum(tl.full([BP], 0, tl.float64), None)
            for p0 in range(0, nparts, BP):
                p = p0 + tl.arange(0, BP)
                pm = p < nparts
                m = tl.load(lse_m_ptr + base + p, mask=pm, other=float("-inf"))
                s = tl.load(lse_s_ptr + base + p, mask=pm, other=0.0)
                tot += _rsum(tl.where(pm & (s > 0.0), s * tl.exp(m - safe), 0.0), None)
            if tot > 0.0:
                lse_p = safe + tl.log(tot)
                has_c = izero + 1
            if HAS_K:
                top = _init_topk(K, KP)
                for p0 in range(0, nparts, BPK):
                    q = p0 * KP + tl.arange(0, BPK * KP)
                    keys = tl.load(top_ptr + base * KP + q, mask=q < nparts * KP,
                                   other=INT64_MIN)
                    top = _merge_topk(top, keys, KP)
                sel = (top > INT64_MIN) & (top < INT64_MAX)
                chosen = tl.where(sel, top, INT64_MIN)
                pair = tl.where(sel, LOW32 - (top & LOW32), -1)
                if has_c != 0:
                    # the loss from the chosen similarities, recomputed as the backward does
                    acc = _pair_sims(emb_ptr, b, pair, sel, inv_ptr, T, D, sb, st, sd, KP, BKP,
                                     CT)
                    zn = tl.where(sel, acc * inv_tau, float("-inf"))
                    mn = _rmax(zn, None)
                    if mn > float("-inf"):
                        lse_n = mn + tl.log(_rsum(tl.where(sel, tl.exp(zn - mn), 0.0), None))
                        x = lse_n - lse_p
                        # l = log(1 + exp(x)) = softplus(lse_N - lse_P): exact for tiny l and
                        # finite when a negative lies far above the positives
                        l = tl.where(x > 0.0, x + _log1p(tl.exp(-x)), _log1p(tl.exp(x)))
            if has_c != 0:
                loss_c = l
            else:
                lse_p = fzero
    tl.store(loss_c_ptr + b, loss_c)
    tl.store(has_c_ptr + b, has_c.to(tl.uint8))
    tl.store(lse_out_ptr + b, lse_p)
    tl.store(l_out_ptr + b, l)
    n = tl.arange(0, KP)
    if HAS_K:
        # the chosen pairs in rank order (largest key first; keys are distinct): the rank of
        # a key is the number of larger keys, counted against the keys stored in scratch
        tl.store(keys_ptr + b * KP + n, chosen)
        tl.debug_barrier()
        rank = tl.full([KP], 0, tl.int32)
        for j0 in range(0, KP, BJ):
            kj = tl.load(keys_ptr + b * KP + j0 + tl.arange(0, BJ))
            rank += _rsum((kj[None, :] > chosen[:, None]).to(tl.int32), 1)
        sel = chosen > INT64_MIN
        nsel = _rsum(sel.to(tl.int32), None)
        tl.store(pairs_ptr + b * KCAP + rank, LOW32 - (chosen & LOW32), mask=sel & (rank < KCAP))
        tl.store(pairs_ptr + b * KCAP + n, tl.full([KP], -1, tl.int64),
                 mask=(n >= nsel) & (n < KCAP))
    else:
        for n0 in range(0, KCAP, KP):
            tl.store(pairs_ptr + b * KCAP + n0 + n, tl.full([KP], -1, tl.int64),
                     mask=n0 + n < KCAP)

    loss_b = fzero
    has_b = izero
    if WANT_BOUN:
        if bad != 0:
            loss_b = nan
            has_b = izero + 1
        else:
            nw = tl.load(nwin_ptr + b)
            nv = tl.load(nvalid_ptr + b).to(tl.float64)
            mmax = _f64(mmax_hi, mmax_lo)
            mbase = _f64(mbase_hi, mbase_lo)
            mscale = _f64(mscale_hi, mscale_lo)
            tot = _rsum(tl.full([BW], 0, tl.float64), None)
            cnt = _rsum(tl.full([BW], 0, tl.int32), None)
            for w0 in range(0, nw, BW):
                w = w0 + tl.arange(0, BW)
                wm = w < nw
                s_pos, s_neg, npos, nneg = _window_sums(emb_ptr, lab_ptr, inv_ptr, win_ptr, b,
                                                        w, wm, T, D, sb, st, sd, radius, BO,
                                                        BKW, CT)
                act = wm & (npos > 0.0) & (nneg > 0.0)
                js, je, _, _ = _window_entry(lab_ptr, win_ptr, b, w, wm, T)
                delta = tl.minimum(mmax, mbase + mscale * (je - js).to(tl.float64) / nv)
                hinge = tl.maximum(s_neg - s_pos + delta, 0.0)
                tot += _rsum(tl.where(act, hinge, 0.0), None)
                cnt += _rsum(act.to(tl.int32), None)
            if cnt > 0:
                loss_b = tot / cnt.to(tl.float64)
                has_b = izero + 1
    tl.store(loss_b_ptr + b, loss_b)
    tl.store(has_b_ptr + b, has_b.to(tl.uint8))


# --------------------------------------------------------------------------------------
# backward
# --------------------------------------------------------------------------------------


@triton.jit
def _pos_bwd_kernel(emb_ptr, lab_ptr, inv_ptr, rows_ptr, nrows_ptr, bad_ptr, has_c_ptr,
                    gclip_ptr, gcs, lse_ptr, l_ptr, grad_ptr, T, D, sb, st, sd,
                    inv_tau_hi, inv_tau_lo, SAME: tl.constexpr, BM: tl.constexpr,
                    BN: tl.constexpr, BK: tl.constexpr, BDO: tl.constexpr, CT: tl.constexpr,
                    IS_F64: tl.constexpr):
    """grad[i] = sum_j c_ij u_j over the positives j of each GT row i, with
    c_ij = g * expm1(-l) / tau * exp(s_ij / tau - lse_P) (d l / d s_ij)."""
    rb = tl.program_id(0)
    dc = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    ng = tl.load(nrows_ptr + b)
    bad = tl.load(bad_ptr + b)
    hc = tl.load(has_c_ptr + b)
    g = tl.load(gclip_ptr + b * gcs).to(tl.float64)
    l = tl.load(l_ptr + b)
    if (rb * BM < ng) & (bad == 0) & (hc != 0) & (g != 0.0) & (l > 0.0) & (ng >= 2):
        inv_tau = _f64(inv_tau_hi, inv_tau_lo)
        lse = tl.load(lse_ptr + b)
        scale = (g * _expm1(-l) * inv_tau).to(CT)
        inv_tau_c = inv_tau.to(CT)
        lse_c = lse.to(CT)
        r = rb * BM + tl.arange(0, BM)
        row_ok = r < ng
        rows = tl.load(rows_ptr + b * T + r, mask=row_ok, other=0)
        lab_r = tl.load(lab_ptr + b * T + rows, mask=row_ok, other=-1)
        do0 = dc * BDO
        acc = tl.full([BM, BDO], 0, CT)
        for t in range(0, ((ng) + (BN) - 1) // (BN)):
            q = t * BN + tl.arange(0, BN)
            col_ok = q < ng
            cols = tl.load(rows_ptr + b * T + q, mask=col_ok, other=0)
            lab_c = tl.load(lab_ptr + b * T + cols, mask=col_ok, other=-1)
            S = tl.full([BM, BN], 0, CT)
            for d0 in range(0, D, BK):
                ur = _load_u(emb_ptr, b, rows, row_ok, inv_ptr, T, d0, D, sb, st, sd, BK, CT)
                uc = _load_u(emb_ptr, b, cols, col_ok, inv_ptr, T, d0, D, sb, st, sd, BK, CT)
                S += _mm_nt(ur, uc, IS_F64)
            pos = row_ok[:, None] & col_ok[None, :] & (rows[:, None] != cols[None, :])
            if SAME:
                pos = pos & (lab_r[:, None] == lab_c[None, :])
            C = tl.where(pos, scale * tl.exp(S * inv_tau_c - lse_c), 0.0)
            uo = _load_u(emb_ptr, b, cols, col_ok, inv_ptr, T, do0, D, sb, st, sd, BDO, CT)
            acc += _mm_nn(C.to(CT), uo, IS_F64)
        d = do0 + tl.arange(0, BDO)
        m = row_ok[:, None] & (d[None, :] < D)
        tl.store(grad_ptr + (b * T + rows[:, None]) * D + d[None, :], acc, mask=m)


@triton.jit
def _sparse_bwd_kernel(emb_ptr, lab_ptr, inv_ptr, grad_ptr, pairs_ptr, coef_ptr, bad_ptr,
                       has_c_ptr, gclip_ptr, gcs, lse_ptr, l_ptr, has_b_ptr, gboun_ptr, gbs,
                       win_ptr, nwin_ptr, nvalid_ptr,
                       T, D, sb, st, sd, KCAP, inv_tau_hi, inv_tau_lo, radius,
                       mmax_hi, mmax_lo, mbase_hi, mbase_lo, mscale_hi, mscale_lo,
                       WANT_CLIP: tl.constexpr, WANT_BOUN: tl.constexpr, KP: tl.constexpr,
                       BK: tl.constexpr, BO: tl.constexpr, BW: tl.constexpr,
                       BKW: tl.constexpr, BKP: tl.constexpr, CT: tl.constexpr):
    """Per sample: the coefficients d l / d s_n of the chosen negatives (applied by
    `_chain_kernel`), then the boundary terms, window after window in a fixed order."""
    b = tl.program_id(0).to(tl.int64)
    bad = tl.load(bad_ptr + b)
    if WANT_CLIP:
        n = tl.arange(0, KP)
        nm = n < KCAP
        pair = tl.load(pairs_ptr + b * KCAP + n, mask=nm, other=-1)
        sel = pair >= 0
        hc = tl.load(has_c_ptr + b)
        g = tl.load(gclip_ptr + b * gcs).to(tl.float64)
        inv_tau = _f64(inv_tau_hi, inv_tau_lo)
        lse = tl.load(lse_ptr + b)
        l = tl.load(l_ptr + b)
        acc = _pair_sims(emb_ptr, b, pair, sel, inv_ptr, T, D, sb, st, sd, KP, BKP, CT)
        # d l / d s_n = exp(s_n / tau - lse_P - l) / tau
        coef = g * inv_tau * tl.exp(acc * inv_tau - lse - l)
        ok = (bad == 0) & (hc != 0) & (g != 0.0)
        coef = tl.where(sel, coef, 0.0)
        coef = tl.where(ok, coef, 0.0)
        tl.store(coef_ptr + b * KCAP + n, coef, mask=nm)
    if WANT_BOUN:
        hb = tl.load(has_b_ptr + b)
        g = tl.load(gboun_ptr + b * gbs).to(tl.float64)
        if (bad == 0) & (hb != 0) & (g != 0.0):
            nw = tl.load(nwin_ptr + b)
            nv = tl.load(nvalid_ptr + b).to(tl.float64)
            mmax = _f64(mmax_hi, mmax_lo)
            mbase = _f64(mbase_hi, mbase_lo)
            mscale = _f64(mscale_hi, mscale_lo)
            # how many windows count (the mean's denominator): membership only, no sums
            cnt = _rsum(tl.full([BW], 0, tl.int32), None)
            for w0 in range(0, nw, BW):
                w = w0 + tl.arange(0, BW)
                wm = w < nw
                _, pos, neg, _ = _window_members(lab_ptr, win_ptr, b, w, wm, T, radius, BO)
                act = wm & (_rsum(pos.to(tl.int32), 1) > 0) & (_rsum(neg.to(tl.int32), 1) > 0)
                cnt += _rsum(act.to(tl.int32), None)
            gw = g / tl.maximum(cnt, 1).to(tl.float64)
            o = tl.arange(0, BO)
            lane = tl.arange(0, BW)
            cvec = tl.full([1], 0, tl.int64)
            one = tl.full([1], 1, tl.int1)
            for w0 in range(0, nw, BW):
                # the same window sums again (bitwise: same blocks, same code), then the
                # windows one after another
                wv = w0 + lane
                wvm = wv < nw
                sp_v, sn_v, np_v, nn_v = _window_sums(emb_ptr, lab_ptr, inv_ptr, win_ptr, b, wv,
                                                      wvm, T, D, sb, st, sd, radius, BO, BKW,
                                                      CT)
                for i in range(0, BW):
                    s_pos = _rsum(tl.where(lane == i, sp_v, 0.0), None)
                    s_neg = _rsum(tl.where(lane == i, sn_v, 0.0), None)
                    npos = _rsum(tl.where(lane == i, np_v, 0.0), None)
                    nneg = _rsum(tl.where(lane == i, nn_v, 0.0), None)
                    inw = (w0 + i) < nw
                    js, je, c, wl = _window_entry(lab_ptr, win_ptr, b, w0 + i, inw, T)
                    delta = tl.minimum(mmax, mbase + mscale * (je - js).to(tl.float64) / nv)
                    # the hinge's gradient is 0 at its kink and below
                    if inw & (npos > 0.0) & (nneg > 0.0) & (s_neg - s_pos + delta > 0.0):
                        p, pos, neg = _members(js, je, c, wl, radius, o, lab_ptr, b, T)
                        mem = pos | neg
                        cf = tl.where(pos, -gw / npos, tl.where(neg, gw / nneg, 0.0)).to(CT)
                        for d0 in range(0, D, BK):
                            d = d0 + tl.arange(0, BK)
                            dm = d[None, :] < D
                            uc = _load_u(emb_ptr, b, cvec + c, one, inv_ptr, T, d0, D, sb, st,
                                         sd, BK, CT)
                            up = _load_u(emb_ptr, b, p, mem, inv_ptr, T, d0, D, sb, st, sd, BK,
                                         CT)
                            pp = grad_ptr + (b * T + p[:, None]) * D + d[None, :]
                            mp = mem[:, None] & dm
                            gp = tl.load(pp, mask=mp, other=0.0)
                            tl.store(pp, gp + cf[:, None] * uc, mask=mp)
                            pc = grad_ptr + (b * T + c) * D + d[None, :]
                            gc = tl.load(pc, mask=dm, other=0.0)
                            tl.store(pc, gc + _rsum(cf[:, None] * up, 0)[None, :], mask=dm)
                        # the next window may share I_neg clips with this one
                        tl.debug_barrier()


@_device
def _grad_rows(emb_ptr, inv_ptr, grad_ptr, pairs_ptr, coef_ptr, b, r, ok, d0, T, D, sb, st, sd,
               KCAP, HAS_NEG: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
               CT: tl.constexpr, IS_F64: tl.constexpr):
    """Columns d0..d0+BK of the gradient w.r.t. u of rows r: what the other kernels wrote plus
    the chosen negatives, sum_n coef_n u_other(n) over the pairs n holding the row."""
    d = d0 + tl.arange(0, BK)
    m = ok[:, None] & (d[None, :] < D)
    g = tl.load(grad_ptr + (b * T + r[:, None]) * D + d[None, :], mask=m, other=0.0)
    if HAS_NEG:
        for n0 in range(0, KCAP, BN):
            n = n0 + tl.arange(0, BN)
            nm = n < KCAP
            pair = tl.load(pairs_ptr + b * KCAP + n, mask=nm, other=-1)
            cf = tl.load(coef_ptr + b * KCAP + n, mask=nm, other=0.0)
            sel = (pair >= 0) & (cf != 0.0)
            i = tl.where(sel, pair // T, -1)
            j = tl.where(sel, pair % T, -1)
            ci = tl.where(r[:, None] == i[None, :], cf[None, :], 0.0).to(CT)
            cj = tl.where(r[:, None] == j[None, :], cf[None, :], 0.0).to(CT)
            ui = _load_u(emb_ptr, b, tl.maximum(i, 0), sel, inv_ptr, T, d0, D, sb, st, sd, BK,
                         CT)
            uj = _load_u(emb_ptr, b, tl.maximum(j, 0), sel, inv_ptr, T, d0, D, sb, st, sd, BK,
                         CT)
            g += _mm_nn(ci, uj, IS_F64) + _mm_nn(cj, ui, IS_F64)
    return g.to(tl.float64)


@triton.jit
def _chain_kernel(emb_ptr, lab_ptr, inv_ptr, bad_ptr, grad_ptr, pairs_ptr, coef_ptr,
                  T, D, sb, st, sd, KCAP, HAS_NEG: tl.constexpr, BM: tl.constexpr,
                  BN: tl.constexpr, BK: tl.constexpr, CT: tl.constexpr, IS_F64: tl.constexpr):
    """grad = (g - u <u, g>) * inv_norm where the norm is above 1e-8, g * inv_norm below, with
    g the gradient w.r.t. u (chosen negatives included, see `_grad_rows`)."""
    rb = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    bad = tl.load(bad_ptr + b)
    if bad == 0:
        r = (rb * BM + tl.arange(0, BM)).to(tl.int64)
        in_t = r < T
        lab = tl.load(lab_ptr + b * T + r, mask=in_t, other=-1)
        ok = lab >= 0
        inv = tl.load(inv_ptr + b * T + r, mask=ok, other=0.0)
        proj = tl.full([BM], 0, tl.float64)
        for d0 in range(0, D, BK):
            g = _grad_rows(emb_ptr, inv_ptr, grad_ptr, pairs_ptr, coef_ptr, b, r, ok, d0, T, D,
                           sb, st, sd, KCAP, HAS_NEG, BN, BK, CT, IS_F64)
            u = _load_u(emb_ptr, b, r, ok, inv_ptr, T, d0, D, sb, st, sd, BK, CT)
            proj += _rsum(u.to(tl.float64) * g, 1)
        project = inv < 1.0 / NORM_EPS
        for d0 in range(0, D, BK):
            d = d0 + tl.arange(0, BK)
            m = ok[:, None] & (d[None, :] < D)
            g = _grad_rows(emb_ptr, inv_ptr, grad_ptr, pairs_ptr, coef_ptr, b, r, ok, d0, T, D,
                           sb, st, sd, KCAP, HAS_NEG, BN, BK, CT, IS_F64)
            u = _load_u(emb_ptr, b, r, ok, inv_ptr, T, d0, D, sb, st, sd, BK, CT)
            out = tl.where(project[:, None], g - u.to(tl.float64) * proj[:, None], g)
            tl.store(grad_ptr + (b * T + r[:, None]) * D + d[None, :], (out * inv[:, None]).to(CT),
                     mask=m)
