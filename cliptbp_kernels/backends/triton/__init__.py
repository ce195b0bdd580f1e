"""The fused Triton backend.

Runs on CUDA tensors, and on CPU tensors when the Triton interpreter is on
(``TRITON_INTERPRET=1`` set before the kernels are defined, as the tests do).

Limits (checked before any kernel runs, `ValueError` past them): ``T <= 65,536`` (the pair
index of a ranking key has 32 bits) and ``min(k, T (T - 1) / 2) <= 1024`` (the running top-k
lives in registers). float64 inputs are computed in float64; their hard negatives are ranked
by the similarity rounded to float32 (a monotone map, so only values within one float32 ulp
of each other, about 6e-8, can be ranked as ties; docs/losses.md, section 9).

Modules: `kernels` (the Triton kernels, one module per pass), `launch` (their launchers),
`blocks` (block sizes, interpreter and GPU).
"""

from __future__ import annotations

from typing import Optional

import torch

from ..._options import GPU_MAX_K, GPU_MAX_T, Limits
from .._ops import check_limits as _check_limits
from .._ops import register_fused_backend
from .blocks import GPU_BLOCKS_ENV, SIZES_ENV, gpu_block_override, interpreter_sizes, interpreting
from .launch import IMPORT_ERROR, available, backward, forward, record_launches

NAME = "triton"
LIMITS = Limits(GPU_MAX_T, GPU_MAX_K)
MAX_T, MAX_K = LIMITS


def why_not(device: torch.device) -> Optional[str]:
    """None if the Triton kernels can run on `device`, else the reason."""
    if not available():
        return f"triton is not installed or failed to import ({IMPORT_ERROR})"
    if device.type == "cuda":
        return None
    if device.type == "cpu" and interpreting():
        return None
    return (f"it runs on CUDA tensors (and on CPU tensors only under TRITON_INTERPRET=1), "
            f"and the input is on {device}")


def check_limits(T: int, k: int, want_clip: bool = True) -> None:
    """ValueError when the input exceeds what the Triton kernels serve."""
    _check_limits(NAME, T, k, want_clip, LIMITS)


OPS = (register_fused_backend(NAME, ("cpu", "cuda"), forward, backward, limits=LIMITS,
                              upstream_as_is=True)
       if available() else None)

__all__ = ["GPU_BLOCKS_ENV", "LIMITS", "MAX_K", "MAX_T", "NAME", "OPS", "SIZES_ENV",
           "available", "check_limits", "gpu_block_override", "interpreter_sizes",
           "interpreting", "record_launches", "why_not"]
