"""The fused CPU backend: launchers of the C++ kernels in `cliptbp_kernels._C_cpu`."""

from typing import Optional, Tuple

import torch
from torch import Tensor

from ._custom_ops import backward_buffers, forward_outputs, kcap_for, register_fused_backend

try:  # the extension is absent when the package was not built
    from . import _C_cpu as _ext
    IMPORT_ERROR: Optional[str] = None
except ImportError as exc:  # pragma: no cover - exercised only on broken installs
    _ext = None
    IMPORT_ERROR = str(exc)

DTYPE_CODES = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2, torch.float64: 3}


def available() -> bool:
    return _ext is not None


def simd_level() -> str:
    """Instruction set the CPU similarity tiles use on this machine."""
    return _ext.simd_level() if _ext is not None else "unavailable"


def _view_args(emb: Tensor, labels: Tensor):
    """(emb view tuple, labels pointer) as the bindings take them."""
    B, T, D = emb.shape
    sb, st, sd = emb.stride()
    return (emb.data_ptr(), DTYPE_CODES[emb.dtype], B, T, D, sb, st, sd), labels.data_ptr()


def forward_into(emb: Tensor, labels: Tensor, opts: tuple, out: Tuple[Tensor, ...]) -> None:
    """Run the forward kernel into caller-allocated buffers `out` (see `forward`)."""
    loss_clip, has_clip, loss_boun, has_boun, lse, neg_sum, pairs, inv_norm = out
    _ext.forward(*_view_args(emb, labels), tuple(opts), loss_clip.data_ptr(),
                 has_clip.data_ptr(), loss_boun.data_ptr(), has_boun.data_ptr(), lse.data_ptr(),
                 neg_sum.data_ptr(), pairs.data_ptr(), pairs.shape[1], inv_norm.data_ptr(),
                 torch.get_num_threads())


def forward(emb: Tensor, labels: Tensor, opts: tuple):
    labels = labels.to(torch.int64).contiguous()
    B, T = labels.shape
    out = forward_outputs(B, T, kcap_for(opts[0], T), emb.device, emb.numel() == 0)
    if emb.numel() > 0:
        forward_into(emb, labels, opts, out)
    return out


def backward(emb: Tensor, labels: Tensor, opts: tuple, grad_clip: Tensor, grad_boun: Tensor,
             has_clip: Tensor, has_boun: Tensor, lse: Tensor, neg_sum: Tensor, pairs: Tensor,
             inv_norm: Tensor):
    labels = labels.to(torch.int64).contiguous()
    grad, saved = backward_buffers(emb, (has_clip, has_boun, lse, neg_sum, pairs, inv_norm))
    if emb.numel() == 0:
        return grad.zero_()
    _ext.backward(*_view_args(emb, labels), tuple(opts), grad_clip.data_ptr(),
                  grad_boun.data_ptr(), *(t.data_ptr() for t in saved[:5]), pairs.shape[1],
                  saved[5].data_ptr(), grad.data_ptr(), torch.get_num_threads())
    return grad


OPS = register_fused_backend("cpu", "cpu", forward, backward) if available() else None
