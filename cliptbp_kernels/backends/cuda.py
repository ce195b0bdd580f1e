"""The fused CUDA C++ backend: launchers of the kernels in `cliptbp_kernels._C_cuda`.

Runs on CUDA tensors, on the caller's current stream and the input's device. With
``CLIPTBP_CUDA_EMULATE=1`` it also runs on CPU tensors through `cliptbp_kernels._C_cuda_emu`:
the same kernel source compiled for a CPU emulation of CUDA (every thread a fiber, blocks one
after another). That is how the tests run the CUDA kernels on machines without a GPU; it is
slow and meant for nothing else.

Limits (checked before any kernel runs, `ValueError` past them): ``T <= 65,536`` (the pair
index of a ranking key has 32 bits) and ``min(k, T (T - 1) / 2) <= 1024`` (the running top-k
lives in shared memory). float64 inputs are computed in float64; their hard negatives are
ranked by the similarity rounded to float32, as on the Triton backend. 16-bit inputs are
computed with float32 products.

``CLIPTBP_CUDA_COL_CHUNK`` (default 1024): valid-list columns one forward block sweeps; fewer
give more blocks per sample (a tuning knob, not a semantic one).
"""

from __future__ import annotations

import os
import re
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .._options import (
    DTYPE_CODES,
    GPU_MAX_K,
    GPU_MAX_T,
    FusedOptions,
    FusedOutputs,
    Limits,
    SavedForBackward,
)
from . import _loader
from ._ops import check_limits as _check_limits
from ._ops import forward_outputs, register_fused_backend

NAME = "cuda"
LIMITS = Limits(GPU_MAX_T, GPU_MAX_K)
MAX_T, MAX_K = LIMITS
_ext, IMPORT_ERROR = _loader.load("_C_cuda")  # absent when built without nvcc
_emu, EMU_IMPORT_ERROR = _loader.load("_C_cuda_emu")  # absent when built with CLIPTBP_CUDA_EMU=0


def emulating() -> bool:
    """True when CPU tensors are served by the CUDA emulation (CLIPTBP_CUDA_EMULATE=1)."""
    return os.environ.get("CLIPTBP_CUDA_EMULATE", "0") == "1"


def available() -> bool:
    return _ext is not None or _emu is not None


def module_archs() -> Tuple[str, ...]:
    """The architectures `_C_cuda` was compiled for, as CMAKE_CUDA_ARCHITECTURES entries
    ("80": SASS and PTX, "90-real": SASS only, "90-virtual": PTX only); () when unknown."""
    raw = getattr(_ext, "ARCHS", "") if _ext is not None else ""
    return tuple(a for a in str(raw).split(",") if a)


_ARCH = re.compile(r"^(\d+)([a-z]?)(-real|-virtual)?$")


def _parse_arch(entry: str) -> Optional[Tuple[int, str, bool, bool]]:
    """(number, arch-specific suffix, has SASS, has PTX) of a CMAKE_CUDA_ARCHITECTURES entry
    ("90a-real": (90, "a", True, False)); None when it is not a number ("native", "all")."""
    m = _ARCH.match(entry)
    if m is None:
        return None
    return int(m.group(1)), m.group(2), m.group(3) != "-virtual", m.group(3) != "-real"


def arch_support(entries: Sequence[str], capability: Tuple[int, int]) -> Optional[bool]:
    """Whether code compiled for `entries` runs on a GPU of compute `capability` (major,
    minor): SASS for sm_XY runs on the same major with a minor >= Y, PTX for compute_XY on any
    capability >= X.Y (the driver compiles it); arch-specific entries ("90a") only on X.Y
    itself. None when an entry is not a number ("native", "all"): nothing to compare."""
    cap = 10 * capability[0] + capability[1]
    for entry in entries:
        parsed = _parse_arch(entry)
        if parsed is None:
            return None
        n, specific, sass, ptx = parsed
        if sass and (cap == n if specific else
                     (capability[0] == n // 10 and capability[1] >= n % 10)):
            return True
        if ptx and (cap == n if specific else cap >= n):
            return True
    return False


def describe_archs(entries: Sequence[str]) -> str:
    """"sm_80, sm_90 and PTX compute_80, compute_90" for ("80", "90")."""
    sass_list, ptx_list = [], []
    for entry in entries:
        parsed = _parse_arch(entry)
        if parsed is None:
            sass_list.append(entry)
            continue
        n, suffix, sass, ptx = parsed
        if sass:
            sass_list.append(f"sm_{n}{suffix}")
        if ptx:
            ptx_list.append(f"compute_{n}{suffix}")
    return ", ".join(sass_list) + (" and PTX " + ", ".join(ptx_list) if ptx_list
                                   else " (no PTX)")


_arch_reason: Dict[int, Optional[str]] = {}


def _arch_why_not(device: torch.device) -> Optional[str]:
    """Why `_C_cuda` holds no code for this GPU's architecture (cached per device)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _arch_reason:
        major, minor = torch.cuda.get_device_capability(index)
        entries = module_archs()
        reason = None
        if entries and arch_support(entries, (major, minor)) is False:
            reason = (f"the CUDA module holds {describe_archs(entries)}, none of which runs on "
                      f"this GPU (sm_{major}{minor}); rebuild it for this GPU: "
                      f"CLIPTBP_CUDA_ARCH=\"{major}{minor}\" pip install --no-build-isolation "
                      "-e . (or add it to the list)")
        _arch_reason[index] = reason
    return _arch_reason[index]


def why_not(device: torch.device) -> Optional[str]:
    """None if the CUDA kernels can run on `device`, else the reason."""
    if device.type == "cuda":
        if _ext is None:
            return ("the CUDA extension cliptbp_kernels._C_cuda is not built (no nvcc at build "
                    f"time? {IMPORT_ERROR}); reinstall with nvcc on PATH or CLIPTBP_CUDA=1")
        return _arch_why_not(device)
    if device.type == "cpu" and emulating():
        if _emu is None:
            return f"the CUDA emulation module is not built ({EMU_IMPORT_ERROR})"
        return None
    return (f"it runs on CUDA tensors (and on CPU tensors only under CLIPTBP_CUDA_EMULATE=1), "
            f"and the input is on {device}")


def check_limits(T: int, k: int, want_clip: bool = True) -> None:
    """ValueError when the input exceeds what the CUDA kernels serve."""
    _check_limits(NAME, T, k, want_clip, LIMITS)


def col_chunk() -> int:
    value = os.environ.get("CLIPTBP_CUDA_COL_CHUNK", "1024")
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"CLIPTBP_CUDA_COL_CHUNK must be an integer, not {value!r}") from None
    if n < 1:
        raise ValueError(f"CLIPTBP_CUDA_COL_CHUNK must be >= 1, got {n}")
    return n


class _Call:
    """Module, stream, device guard and workspace of one kernel call."""

    def __init__(self, emb: Tensor, kcap: int, want_clip: bool):
        B, T = emb.shape[0], emb.shape[1]
        self.cuda = emb.device.type == "cuda"
        self.mod = _ext if self.cuda else _emu
        self.chunk = col_chunk()
        nbytes, _, _ = self.mod.workspace_bytes(B, T, kcap, bool(want_clip), self.chunk)
        self.workspace = torch.empty(nbytes, dtype=torch.uint8, device=emb.device)
        self.nbytes = nbytes
        self.stream = torch.cuda.current_stream(emb.device).cuda_stream if self.cuda else 0
        self.view = (emb.data_ptr(), DTYPE_CODES[emb.dtype], *emb.shape, *emb.stride())

    def guard(self, emb: Tensor):
        return torch.cuda.device(emb.device) if self.cuda else _NullGuard()


class _NullGuard:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def forward(emb: Tensor, labels: Tensor, opts: FusedOptions, kcap: int) -> FusedOutputs:
    B, T = labels.shape
    out = forward_outputs(B, T, kcap, emb.device)
    call = _Call(emb, kcap, opts.want_clip)
    with call.guard(emb):
        call.mod.forward(call.view, labels.data_ptr(), tuple(opts), kcap, call.chunk,
                         call.workspace.data_ptr(), call.nbytes, *(t.data_ptr() for t in out),
                         call.stream)
    return out


def backward(emb: Tensor, labels: Tensor, opts: FusedOptions, grad_clip: Tensor,
             grad_boun: Tensor, saved: SavedForBackward, grad: Tensor) -> None:
    kcap = saved.pairs.shape[1]
    call = _Call(emb, kcap, False)  # the backward needs no partial top-k lists
    with call.guard(emb):
        call.mod.backward(call.view, labels.data_ptr(), tuple(opts), kcap, call.chunk,
                          call.workspace.data_ptr(), call.nbytes, grad_clip.data_ptr(),
                          grad_boun.data_ptr(), *(t.data_ptr() for t in saved),
                          grad.data_ptr(), call.stream)


def _device_types():
    types = []
    if _emu is not None:
        types.append("cpu")
    if _ext is not None:
        types.append("cuda")
    return tuple(types)


OPS = (register_fused_backend(NAME, _device_types(), forward, backward, limits=LIMITS)
       if available() else None)
