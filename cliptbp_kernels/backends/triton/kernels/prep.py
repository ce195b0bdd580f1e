"""Triton kernels of the preparation pass: the inverse norms and the per-sample index lists."""

import triton
import triton.language as tl

from .common import NORM_EPS, _rmax, _rsum, _to_f64


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
    # js, je and the centre (the run's middle element, docs/losses.md, section 2) of each window, in
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
