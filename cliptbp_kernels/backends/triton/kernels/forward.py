"""Triton kernels of the forward pass: the clip-pair tiles (`_clip_fwd_kernel`) and the
per-sample finalize (`_finalize_kernel`)."""

import triton
import triton.language as tl

from .common import (
    INT64_MAX,
    INT64_MIN,
    LOW32,
    _f64,
    _init_topk,
    _log1p,
    _make_key,
    _merge_topk,
    _pair_sims,
    _rmax,
    _rmin,
    _rsum,
    _sim_tile,
)
from .windows import _boundary_setup, _window_entry, _window_sums


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
            S = _sim_tile(emb_ptr, b, rows, row_ok, cols, col_in, inv_ptr, T, D, sb, st, sd, BM,
                          BN, BK, CT, IS_F64)
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
            nw, nv, mmax, mbase, mscale = _boundary_setup(
                nwin_ptr, nvalid_ptr, b, mmax_hi, mmax_lo, mbase_hi, mbase_lo, mscale_hi,
                mscale_lo)
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
