"""The fused CPU backend: launchers of the C++ kernels in `cliptbp_kernels._C_cpu`."""

from typing import Optional, Tuple

import torch
from torch import Tensor

from ._custom_ops import compute_dtype, kcap_for, register_fused_backend

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
    f64 = dict(dtype=torch.float64, device=emb.device)
    out = (
        torch.empty(B, **f64),
        torch.empty(B, dtype=torch.uint8, device=emb.device),
        torch.empty(B, **f64),
        torch.empty(B, dtype=torch.uint8, device=emb.device),
        torch.empty(B, **f64),
        torch.empty(B, **f64),
        torch.empty((B, kcap_for(opts[0], T)), dtype=torch.int64, device=emb.device),
        torch.empty((B, T), **f64),
    )
    if emb.numel() > 0:
        forward_into(emb, labels, opts, out)
    else:
        for t in out[:6]:
            t.zero_()
        out[6].fill_(-1)
        out[7].zero_()
    return out


def backward(emb: Tensor, labels: Tensor, opts: tuple, grad_clip: Tensor, grad_boun: Tensor,
             has_clip: Tensor, has_boun: Tensor, lse: Tensor, neg_sum: Tensor, pairs: Tensor,
             inv_norm: Tensor):
    labels = labels.to(torch.int64).contiguous()
    grad = torch.empty(emb.shape, dtype=compute_dtype(emb.dtype), device=emb.device)
    if emb.numel() == 0:
        return grad.zero_()
    # Keep references to every buffer whose pointer is passed.
    has_clip, has_boun = has_clip.contiguous(), has_boun.contiguous()
    lse, neg_sum, pairs = lse.contiguous(), neg_sum.contiguous(), pairs.contiguous()
    inv_norm = inv_norm.contiguous()
    _ext.backward(*_view_args(emb, labels), tuple(opts), grad_clip.data_ptr(),
                  grad_boun.data_ptr(), has_clip.data_ptr(), has_boun.data_ptr(), lse.data_ptr(),
                  neg_sum.data_ptr(), pairs.data_ptr(), pairs.shape[1], inv_norm.data_ptr(),
                  grad.data_ptr(), torch.get_num_threads())
    return grad


OPS = register_fused_backend("cpu", "cpu", forward, backward) if available() else None
