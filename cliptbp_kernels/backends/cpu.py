"""The fused CPU backend: launchers of the C++ kernels in `cliptbp_kernels._C_cpu`.

Runs on CPU tensors, with no limit on `k` and `T` up to 2^31 - 1. The kernels use at most
`torch.get_num_threads()` threads and give bitwise the same results whatever that number.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._options import DTYPE_CODES, FusedOptions, FusedOutputs, SavedForBackward
from . import _loader
from ._ops import forward_outputs, register_fused_backend

NAME = "cpu"
_ext, IMPORT_ERROR = _loader.load("_C_cpu")


def available() -> bool:
    return _ext is not None


def simd_level() -> str:
    """Instruction set the CPU similarity tiles use on this machine."""
    return _ext.simd_level() if _ext is not None else "unavailable"


def why_not(device: torch.device) -> Optional[str]:
    """None if the CPU kernels can run on `device`, else the reason."""
    if _ext is None:
        return ("the C++ extension cliptbp_kernels._C_cpu is not built "
                f"({IMPORT_ERROR}); reinstall with `pip install .`")
    if device.type != "cpu":
        return f"it runs on CPU tensors only, and the input is on {device}"
    return None


def _view_args(emb: Tensor, labels: Tensor):
    """(emb view tuple, labels pointer) as the bindings take them."""
    B, T, D = emb.shape
    sb, st, sd = emb.stride()
    return (emb.data_ptr(), DTYPE_CODES[emb.dtype], B, T, D, sb, st, sd), labels.data_ptr()


def forward_into(emb: Tensor, labels: Tensor, opts: FusedOptions, out: FusedOutputs) -> None:
    """Run the forward kernel into caller-allocated buffers `out` (see `forward_outputs`)."""
    _ext.forward(*_view_args(emb, labels), tuple(opts), out.loss_clip.data_ptr(),
                 out.has_clip.data_ptr(), out.loss_boun.data_ptr(), out.has_boun.data_ptr(),
                 out.lse.data_ptr(), out.neg_sum.data_ptr(), out.pairs.data_ptr(),
                 out.pairs.shape[1], out.inv_norm.data_ptr(), torch.get_num_threads())


def forward(emb: Tensor, labels: Tensor, opts: FusedOptions, kcap: int) -> FusedOutputs:
    B, T = labels.shape
    out = forward_outputs(B, T, kcap, emb.device)
    forward_into(emb, labels, opts, out)
    return out


def backward(emb: Tensor, labels: Tensor, opts: FusedOptions, grad_clip: Tensor,
             grad_boun: Tensor, saved: SavedForBackward, grad: Tensor) -> None:
    _ext.backward(*_view_args(emb, labels), tuple(opts), grad_clip.data_ptr(),
                  grad_boun.data_ptr(), *(t.data_ptr() for t in saved[:5]),
                  saved.pairs.shape[1], saved.inv_norm.data_ptr(), grad.data_ptr(),
                  torch.get_num_threads())


OPS = register_fused_backend(NAME, "cpu", forward, backward) if available() else None
