"""The fused Triton backend: launchers of the kernels in `cliptbp_kernels._triton_kernels`.

Runs on CUDA tensors, and on CPU tensors when the Triton interpreter is on
(``TRITON_INTERPRET=1`` set before the kernels are defined, as the tests do). The interpreter
and the GPU use separate block sizes: large blocks keep the interpreter fast, the GPU sizes
suit its registers.

Limits (checked before any kernel runs, `ValueError` past them): ``T <= 65,536`` (the pair
index of a ranking key has 32 bits) and ``min(k, T (T - 1) / 2) <= 1024`` (the running top-k
lives in registers). float64 inputs are computed in float64; their hard negatives are ranked
by the similarity rounded to float32 (a monotone map, so only values within one float32 ulp
of each other, about 6e-8, can be ranked as ties: SPEC.md demands the exact set only where
the gap exceeds 1e-6 or values are exact).
"""

from __future__ import annotations

import functools
import math
import os
import struct
from typing import Optional

import torch
from torch import Tensor

from ._custom_ops import check_limits as _check_limits
from ._custom_ops import (backward_buffers, compute_dtype, forward_outputs, kcap_for,
                          register_fused_backend)

try:
    import triton
    import triton.language as tl

    from . import _triton_kernels as K
    IMPORT_ERROR: Optional[str] = None
except Exception as exc:  # pragma: no cover - exercised only without triton
    triton = tl = K = None
    IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

MAX_T = 65536
MAX_K = 1024


def available() -> bool:
    return K is not None


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


SIZES_ENV = "CLIPTBP_TRITON_SIZES"


def interpreter_sizes() -> bool:
    """True when the launchers use the interpreter's large blocks: under the interpreter,
    unless CLIPTBP_TRITON_SIZES=gpu asks for the GPU block sizes there too (slower, but it
    runs the GPU tilings on the CPU: several row tiles and column splits, every merge step).
    On the GPU always False. ValueError for a value other than "", "auto" or "gpu"."""
    value = os.environ.get(SIZES_ENV, "").strip().lower()
    if value not in ("", "auto", "gpu"):
        raise ValueError(f"{SIZES_ENV}: expected 'auto' or 'gpu', got {value!r}")
    return interpreting() and value != "gpu"


def why_not(device: torch.device) -> Optional[str]:
    """None if the Triton kernels can run on `device`, else the reason."""
    if K is None:
        return f"triton is not installed or failed to import ({IMPORT_ERROR})"
    if device.type == "cuda":
        return None
    if device.type == "cpu" and interpreting():
        return None
    return (f"it runs on CUDA tensors (and on CPU tensors only under TRITON_INTERPRET=1), "
            f"and the input is on {device}")


def check_limits(T: int, k: int, want_clip: bool = True) -> None:
    """ValueError when the input exceeds what the Triton kernels serve."""
    _check_limits("triton", T, k, want_clip, MAX_T, MAX_K)


# When set (by `record_launches`), launches are recorded instead of run: the GPU compile
# check (tests/test_triton_compile.py) compiles exactly what the launchers would launch.
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


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


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


GPU_BLOCKS_ENV = "CLIPTBP_TRITON_GPU_BLOCKS"
_GPU_BLOCK_KEYS = {"BM": "BM", "BN": "BN", "BK": "BK", "warps": "warps",
                   "cols": "cols_per_split", "bwarps": "bwarps"}


def gpu_block_override() -> dict:
    """GPU block sizes of the float32/16-bit kernels from CLIPTBP_TRITON_GPU_BLOCKS, e.g.
    "BM=32,BN=64,BK=32,warps=4,cols=512,bwarps=8" (any subset; the tuning stage of the GPU
    check sweeps them; bwarps: the warps of the backward's positive-block kernel). Powers of
    two, at least 16 for the dot sizes; ValueError otherwise."""
    return dict(_parse_blocks(os.environ.get(GPU_BLOCKS_ENV, "").strip()))


@functools.lru_cache(maxsize=8)
def _parse_blocks(text: str) -> tuple:
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.partition("=")
        if key not in _GPU_BLOCK_KEYS or not value.isdigit():
            raise ValueError(f"{GPU_BLOCKS_ENV}: expected entries like BM=64 with keys "
                             f"{sorted(_GPU_BLOCK_KEYS)}, got {part!r}")
        n = int(value)
        low = 1 if key in ("warps", "cols", "bwarps") else 16
        if n < low or n & (n - 1):
            raise ValueError(f"{GPU_BLOCKS_ENV}: {key} must be a power of two >= {low}, "
                             f"got {n}")
        out[_GPU_BLOCK_KEYS[key]] = n
    return tuple(out.items())


class _Blocks:
    """Block sizes of one launch: interpreter or GPU, float64 or not. On the GPU every dot
    operand dimension is at least 16 (masking covers smaller D). The GPU sizes of the
    float32/16-bit kernels can be overridden for tuning (`gpu_block_override`). `interp`
    selects the interpreter's sizes (`interpreter_sizes()`: the GPU sizes can be run in the
    interpreter too).

    The float32/16-bit GPU defaults keep the two similarity-tile kernels out of local memory
    (sm_90 resource usage from the compiler, `cuobjdump --dump-resource-usage`, D=256): with
    64 x 64 tiles and 4 warps `_clip_fwd_kernel` spilled a 368-byte stack frame and
    `_pos_bwd_kernel` 920 bytes; with 32-row tiles the forward needs 8 bytes, and the
    positive-block backward with 8 warps none. Not yet timed on a GPU: the GPU check's
    `tune` stage sweeps the alternatives."""

    def __init__(self, T: int, D: int, f64: bool, KP: int, interp: bool, radius: int = 1):
        self.interp = interp
        if interp:
            self.BM, self.BN = min(64, max(16, _pow2(T))), min(256, max(16, _pow2(T)))
            self.BK = min(_pow2(D), 32 if f64 else 128)
            self.BW, self.BP = 64, 256
            self.cols_per_split = 1 << 30  # one column split: fewer programs
            self.warps = self.bwarps = 1
        elif f64:
            self.BM = self.BN = 16
            self.BK = 16
            self.BW, self.BP = 16, 128
            self.cols_per_split = 512
            self.warps = self.bwarps = 4
        else:
            self.BM, self.BN = 32, 64
            self.BK = max(16, min(_pow2(D), 32))
            self.BW, self.BP = 16, 128
            self.cols_per_split = 512
            self.warps, self.bwarps = 4, 8
            for name, value in gpu_block_override().items():
                setattr(self, name, value)
        self.BDO = min(_pow2(D), 128) if interp else max(16, min(_pow2(D), 16 if f64 else 64))
        self.BPK = max(1, 4096 // max(KP, 1))  # partial top-k lists merged per step
        self.BW = min(self.BW, _pow2(T))  # windows per step (a sample has at most T)
        self.BKV = min(_pow2(D), 128) if interp else max(16, min(_pow2(D), 64))  # vector loops
        # window gathers, [BW, BO, BKW] values per step (offsets 0..6r+2 of BW windows, BKW
        # embedding columns): bounded on the GPU (registers)
        self.BO = _pow2(6 * radius + 3)
        step = max(1, min(self.BKV, 8192 // (self.BW * self.BO)))
        self.BKW = self.BKV if interp else _pow2(step)

    def pair_cols(self, KP: int, interp_cols: int) -> int:
        """Embedding columns per step when recomputing the KP chosen pairs' similarities: on
        the GPU at most 4096 values per operand (a k of 300 spilled kilobytes of registers
        with the vector-loop width), in the interpreter `interp_cols`."""
        return interp_cols if self.interp else max(1, min(self.BK, _pow2(4096 // KP + 1) // 2))


def _blocks(T: int, D: int, f64: bool, KP: int, radius: int) -> _Blocks:
    """The block sizes of a launch at this shape (interpreter or GPU sizes, the GPU override
    applied), cached: built once per shape and options rather than on every call, as the
    step at small shapes is bound by host time. Callers must not modify the result."""
    return _cached_blocks(T, D, f64, KP, interpreter_sizes(), radius,
                          os.environ.get(GPU_BLOCKS_ENV, ""))


@functools.lru_cache(maxsize=256)
def _cached_blocks(T, D, f64, KP, interp, radius, override_key) -> _Blocks:
    # override_key: the override's text, a cache key only (`_Blocks` reads and applies it)
    return _Blocks(T, D, f64, KP, interp, radius)


class _Prep:
    """Per-sample index lists and the non-finite flag, built by `_prep_kernel` in one launch
    (tensors on the input's device).

    rows_gt [B, T]: the GT clips ordered by (label, clip), count ng [B]; rows_valid [B, T]
    (None unless `valid_rows`: the backward needs only the count): the valid clips in order,
    count nvalid [B]; win [B, T, 3]: (js, je, centre) of each window (ordered by label; the
    window's label is that of clip js), count nwin [B]; bad [B]: 1 where a valid clip holds
    NaN or Inf. Entries past the counts are unspecified (the kernels mask them).

    No other working memory: the kernel's ranking of falling window ids works in `win` before
    the windows are written. The backward needs only rows_gt and win, 32 bytes per clip: at
    B=2, T=4096, D=256 the step's peak is then the gradient plus about 4 % (it was 9 % with a
    separate scratch buffer, a label column, the valid rows and a buffer of window sums)."""

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


def forward(emb: Tensor, labels: Tensor, opts: tuple):
    k, tau, positives, negatives, radius, mmax, mbase, mscale, want_clip, want_boun = opts
    labels = labels.to(torch.int64).contiguous()
    B, T = labels.shape
    dev = emb.device
    check_limits(T, k, want_clip)
    kcap = kcap_for(k, T)
    if emb.numel() == 0:
        return forward_outputs(B, T, kcap, dev, empty=True)
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
    return loss_c, has_c, loss_b, has_b, lse, lval, pairs, inv


def backward(emb: Tensor, labels: Tensor, opts: tuple, grad_clip: Tensor, grad_boun: Tensor,
             has_clip: Tensor, has_boun: Tensor, lse: Tensor, lval: Tensor, pairs: Tensor,
             inv: Tensor):
    k, tau, positives, negatives, radius, mmax, mbase, mscale, want_clip, want_boun = opts
    labels = labels.to(torch.int64).contiguous()
    grad, saved = backward_buffers(emb, (has_clip, has_boun, lse, lval, pairs, inv))
    grad.zero_()  # the kernels accumulate into it
    if emb.numel() == 0:
        return grad
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
    return grad


OPS = (register_fused_backend("triton", ("cpu", "cuda"), forward, backward, upstream_as_is=True)
       if available() else None)
