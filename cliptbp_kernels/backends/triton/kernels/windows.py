"""Triton device functions of the boundary windows: I_pos / I_neg membership and the window
sums (used by the forward's finalize and the sparse backward)."""

import triton.language as tl

from .common import _device, _f64, _load_u, _rsum, _to_f64


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


@_device
def _boundary_setup(nwin_ptr, nvalid_ptr, b, mmax_hi, mmax_lo, mbase_hi, mbase_lo, mscale_hi,
                    mscale_lo):
    """(window count, valid-clip count as float64, margin_max, margin_base, margin_scale) of
    sample b: what the forward's L_boun and its backward read before the window loop."""
    nw = tl.load(nwin_ptr + b)
    nv = tl.load(nvalid_ptr + b).to(tl.float64)
    return (nw, nv, _f64(mmax_hi, mmax_lo), _f64(mbase_hi, mbase_lo),
            _f64(mscale_hi, mscale_lo))
