"""Block sizes of the Triton launches.

The interpreter (CPU tensors under ``TRITON_INTERPRET=1``) and the GPU use separate sizes:
large blocks keep the interpreter fast, the GPU sizes suit its registers. The GPU sizes can
be run in the interpreter too (``CLIPTBP_TRITON_SIZES=gpu``), which exercises the GPU tilings
on the CPU, and those of the float32/16-bit kernels can be overridden for tuning
(``CLIPTBP_TRITON_GPU_BLOCKS``).
"""

from __future__ import annotations

import functools
import os


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


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


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
    """Block sizes of one launch: interpreter or GPU, float64 or not.

    On the GPU every dot operand dimension is at least 16 (masking covers smaller D), and the
    float32/16-bit defaults are chosen so that the two similarity-tile kernels need no local
    memory (32-row tiles; 8 warps for the backward's positive block). Those GPU sizes can be
    overridden for tuning (`gpu_block_override`). `interp` selects the interpreter's sizes
    (`interpreter_sizes()`: the GPU sizes can be run in the interpreter too)."""

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
