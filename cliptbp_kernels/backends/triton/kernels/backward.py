"""Triton kernels of the backward pass: the positive block, the sparse terms (chosen negatives,
boundary windows) and the chain rule through the normalisation."""

import triton
import triton.language as tl

from .common import (
    NORM_EPS,
    _device,
    _expm1,
    _f64,
    _load_u,
    _mm_nn,
    _pair_sims,
    _rsum,
    _sim_tile,
)
from .windows import _boundary_setup, _members, _window_entry, _window_members, _window_sums


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
            S = _sim_tile(emb_ptr, b, rows, row_ok, cols, col_ok, inv_ptr, T, D, sb, st, sd, BM,
                          BN, BK, CT, IS_F64)
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
            nw, nv, mmax, mbase, mscale = _boundary_setup(
                nwin_ptr, nvalid_ptr, b, mmax_hi, mmax_lo, mbase_hi, mbase_lo, mscale_hi,
                mscale_lo)
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
