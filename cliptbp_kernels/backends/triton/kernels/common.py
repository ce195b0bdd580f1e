"""Device helpers and constants shared by the Triton kernels: reductions, loads of normalised
embeddings, dot products, ranking keys and the running top-k, float64 helpers."""

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


@_device
def _sim_tile(emb_ptr, b, rows, row_ok, cols, col_ok, inv_ptr, T, D, sb, st, sd,
              BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, CT: tl.constexpr,
              IS_F64: tl.constexpr):
    """The similarity tile s[rows, cols] [BM, BN] of sample b in the compute type, summed over
    the embedding in steps of BK (0 where a row or column is masked)."""
    S = tl.full([BM, BN], 0, CT)
    for d0 in range(0, D, BK):
        ur = _load_u(emb_ptr, b, rows, row_ok, inv_ptr, T, d0, D, sb, st, sd, BK, CT)
        uc = _load_u(emb_ptr, b, cols, col_ok, inv_ptr, T, d0, D, sb, st, sd, BK, CT)
        S += _mm_nt(ur, uc, IS_F64)
    return S
