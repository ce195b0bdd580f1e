"""Launchers of the Triton kernels (`.kernels`) for the fused Triton backend.

`forward` and `backward` follow the launcher contract of `cliptbp_kernels.backends._ops`
(labels as contiguous int64, an input with elements, limits already checked). Every buffer is
allocated here; the kernels run on the input's device (CUDA, or the CPU under the
interpreter).
"""

from __future__ import annotations

import functools
import math
import struct
from typing import Optional

import torch
from torch import Tensor

from ..._options import FusedOptions, FusedOutputs, SavedForBackward, compute_dtype
from .blocks import _Blocks, _blocks, _pow2

try:
    import triton.language as tl

    from . import kernels as K
    IMPORT_ERROR: Optional[str] = None
except Exception as exc:  # pragma: no cover - exercised only without triton
    tl = K = None
    IMPORT_ERROR = f"{type(exc).__name__}: {exc}"


def available() -> bool:
    return K is not None


# When set (by `record_launches`), launches are recorded instead of run: the GPU compile
# check (tests/backends/test_triton_compile.py) compiles exactly what the launchers would launch.
_RECORDER: Optional[list] = None


def _launch(kernel, grid, *args, **meta):
    if _RECORDER is not None:
        _RECORDER.append((kernel, args, meta))
        return
    kernel[grid](*args, **meta)


class record_launches:
    """Context manager: kernel launches inside are appended to the list it returns, not run."""

    def __enter__(self):
        global _RECORDER
        _RECORDER = []
        return _RECORDER

    def __exit__(self, *exc):
        global _RECORDER
        _RECORDER = None


def _f32(x: float) -> float:
    """x rounded to float32 (to nearest, ties to even; +-inf past the float32 range)."""
    try:
        return struct.unpack("f", struct.pack("f", x))[0]
    except OverflowError:
        return math.copysign(math.inf, x)


@functools.lru_cache(maxsize=256)
def _split(x: float):
    """x as two float32 values hi + lo (Triton passes Python floats as float32)."""
    hi = _f32(x)
    return hi, _f32(x - hi)


class _Prep:
    """Per-sample index lists and the non-finite flag, built by `_prep_kernel` in one launch
    (tensors on the input's device).

    rows_gt [B, T]: the GT clips ordered by (label, clip), count ng [B]; rows_valid [B, T]
    (None unless `valid_rows`: the backward needs only the count): the valid clips in order,
    count nvalid [B]; win [B, T, 3]: (js, je, centre) of each window (ordered by label; the
    window's label is that of clip js), count nwin [B]; bad [B]: 1 where a valid clip holds
    NaN or Inf. Entries past the counts are unspecified (the kernels mask them).

    No other working memory: the kernel ranks falling window ids inside `win` before it writes
    the windows, so the backward needs only rows_gt and win, 32 bytes per clip."""

    def __init__(self, labels: Tensor, inv: Tensor, interp: bool, valid_rows: bool = True):
        B, T = labels.shape
        i64 = dict(dtype=torch.int64, device=labels.device)
        self.rows_gt = torch.empty((B, T), **i64)
        self.rows_valid = torch.empty((B, T), **i64) if valid_rows else None
        self.win = torch.empty((B, T, 3), **i64)
        self.ng, self.nvalid, self.nwin, self.bad = torch.empty((4, B), **i64).unbind(0)
        _launch(K._prep_kernel, (B,), labels, inv, self.rows_gt,
                self.rows_valid if valid_rows else self.rows_gt, self.win, self.ng, self.nvalid,
                self.nwin, self.bad, T, BT=min(4096 if interp else 1024, max(16, _pow2(T))),
                BR=min(512 if interp else 64, max(16, _pow2(T))), VALID_ROWS=valid_rows,
                num_warps=4)


def _view(emb: Tensor):
    B, T, D = emb.shape
    sb, st, sd = emb.stride()
    return T, D, sb, st, sd


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _norms(emb: Tensor, labels: Tensor, blk: _Blocks) -> Tensor:
    B, T, D = emb.shape
    inv = torch.empty((B, T), dtype=torch.float64, device=emb.device)
    BMn = min(256, _pow2(T)) if blk.interp else 32
    _launch(K._norm_kernel, (_cdiv(T, BMn), B), emb, labels, inv, *_view(emb), BM=BMn,
            BK=min(_pow2(D), 128), num_warps=blk.warps)
    return inv


def _ct(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def forward(emb: Tensor, labels: Tensor, opts: FusedOptions, kcap: int) -> FusedOutputs:
    k, tau, positives, negatives, radius, mmax, mbase, mscale, want_clip, want_boun = opts
    B, T = labels.shape
    dev = emb.device
    f64 = dict(dtype=torch.float64, device=dev)
    # the losses in the output dtype and the flags as bool: the custom op returns them as they
    # are (the kernel rounds the float64 loss once, on store)
    out_dtype = compute_dtype(emb.dtype)
    loss_c = torch.empty(B, dtype=out_dtype, device=dev)
    loss_b = torch.empty(B, dtype=out_dtype, device=dev)
    has_c = torch.empty(B, dtype=torch.bool, device=dev)
    has_b = torch.empty(B, dtype=torch.bool, device=dev)
    lse, lval = torch.empty(B, **f64), torch.empty(B, **f64)
    D = emb.shape[2]
    is64 = emb.dtype == torch.float64
    CT = _ct(emb.dtype)
    has_k = bool(want_clip and kcap > 0)
    KP = max(2, _pow2(kcap)) if has_k else 2  # tl.topk needs k >= 2
    blk = _blocks(T, D, is64, KP, radius)
    inv = _norms(emb, labels, blk)
    prep = _Prep(labels, inv, blk.interp)
    bad = prep.bad
    all_neg = negatives == 1
    rows, nrows = (prep.rows_valid, prep.nvalid) if all_neg else (prep.rows_gt, prep.ng)
    n_tiles = _cdiv(T, blk.BN)
    nsplit = max(1, min(64, _cdiv(T, blk.cols_per_split)))
    tps = _cdiv(n_tiles, nsplit)
    nsplit = _cdiv(n_tiles, tps)
    nrb = _cdiv(T, blk.BM)
    if want_clip and B * nrb * nsplit * KP > (1 << 22) and _RECORDER is None:
        # size the partial buffers by the rows actually present (one sync)
        nrb = max(1, _cdiv(int(nrows.max()), blk.BM))
    ith, itl = _split(1.0 / tau)
    BP = min(blk.BP, _pow2(nrb * nsplit))  # partial results merged per step
    BPK = min(blk.BPK, _pow2(nrb * nsplit))
    nparts = B * nrb * nsplit if want_clip else 1
    lse_m = torch.empty(nparts, **f64)
    lse_s = torch.empty(nparts, **f64)
    top = torch.empty(nparts * KP if has_k else 1, dtype=torch.int64, device=dev)
    if want_clip:
        _launch(K._clip_fwd_kernel, (nrb, nsplit, B),
            emb, labels, inv, rows, nrows, bad, lse_m, lse_s, top, *_view(emb), ith, itl,
            nrb, nsplit, tps, k, SAME=positives == 1, ALL=all_neg, KP=KP, HAS_K=has_k,
            BM=blk.BM, BN=blk.BN, BK=blk.BK, CT=CT, IS_F64=is64, num_warps=blk.warps)
    m = [_split(float(x)) for x in (mmax, mbase, mscale)]
    keys = torch.empty((B, KP) if has_k else 1, dtype=torch.int64, device=dev)  # scratch
    pairs = torch.empty((B, kcap), dtype=torch.int64, device=dev)
    _launch(K._finalize_kernel, (B,),
        emb, labels, inv, nrows, prep.nvalid, bad, prep.win, prep.nwin, lse_m, lse_s, top,
        loss_c, has_c, loss_b, has_b, lse, lval, keys, pairs if kcap > 0 else keys,
        *_view(emb), ith, itl, nrb, nsplit, k, kcap, radius, *m[0], *m[1], *m[2],
        WANT_CLIP=bool(want_clip), WANT_BOUN=bool(want_boun), KP=KP, HAS_K=has_k, BM=blk.BM,
        BP=BP, BPK=BPK, BK=blk.BK, BW=blk.BW, BO=blk.BO, BKW=blk.BKW,
        BKP=blk.pair_cols(KP, blk.BK), BJ=KP if blk.interp else max(1, min(KP, 8192 // KP)),
        CT=CT, num_warps=blk.warps)
    return FusedOutputs(loss_c, has_c, loss_b, has_b, lse, lval, pairs, inv)


def backward(emb: Tensor, labels: Tensor, opts: FusedOptions, grad_clip: Tensor,
             grad_boun: Tensor, saved: SavedForBackward, grad: Tensor) -> None:
    k, tau, positives, negatives, radius, mmax, mbase, mscale, want_clip, want_boun = opts
    grad.zero_()  # the kernels accumulate into it
    B, T, D = emb.shape
    is64 = emb.dtype == torch.float64
    CT = _ct(emb.dtype)
    has_c, has_b, lse, lval, pairs, inv = saved
    kcap = pairs.shape[1]
    KP = max(2, _pow2(kcap))
    blk = _blocks(T, D, is64, KP, radius)
    prep = _Prep(labels, inv, blk.interp, valid_rows=False)
    bad = prep.bad
    ith, itl = _split(1.0 / tau)
    # the upstream gradients as autograd hands them over ([B], float32 or float64, any
    # stride: an expanded scalar has stride 0): the kernels read them in place
    gcs, gbs = grad_clip.stride(0), grad_boun.stride(0)
    if want_clip:
        BDO = blk.BDO
        _launch(K._pos_bwd_kernel, (_cdiv(T, blk.BM), _cdiv(D, BDO), B),
            emb, labels, inv, prep.rows_gt, prep.ng, bad, has_c, grad_clip, gcs, lse, lval,
            grad, *_view(emb), ith, itl, SAME=positives == 1, BM=blk.BM, BN=min(blk.BN, 64),
            BK=blk.BK, BDO=BDO, CT=CT, IS_F64=is64, num_warps=blk.bwarps)
    m = [_split(float(x)) for x in (mmax, mbase, mscale)]
    coef = torch.empty((B, max(kcap, 1)), dtype=torch.float64, device=emb.device)
    has_neg = bool(want_clip and kcap > 0)
    _launch(K._sparse_bwd_kernel, (B,),
        emb, labels, inv, grad, pairs, coef, bad, has_c, grad_clip, gcs, lse, lval, has_b,
        grad_boun, gbs, prep.win, prep.nwin, prep.nvalid, *_view(emb), kcap, ith, itl,
        radius, *m[0], *m[1], *m[2], WANT_CLIP=has_neg, WANT_BOUN=bool(want_boun),
        KP=KP, BK=blk.BKV, BO=blk.BO, BW=blk.BW, BKW=blk.BKW,
        BKP=blk.pair_cols(KP, blk.BKV), CT=CT, num_warps=blk.warps)
    BMc = min(256, _pow2(T)) if blk.interp else 32
    _launch(K._chain_kernel, (_cdiv(T, BMc), B),
        emb, labels, inv, bad, grad, pairs, coef, *_view(emb), kcap, HAS_NEG=has_neg, BM=BMc,
        BN=64 if blk.interp else 16, BK=blk.BKV if blk.interp else blk.BK, CT=CT,
        IS_F64=is64, num_warps=blk.warps)

