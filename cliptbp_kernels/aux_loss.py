"""Auxiliary boundary loss ``L_b_aux`` (docs/losses.md, section 3), plain PyTorch."""

import torch

from ._checks import check_real, check_reals, check_reduction, scalar_item
from .distributed import check_process_group, global_means

__all__ = ["boundary_aux_loss"]

def _smooth_l1(x, beta):
    ax = x.abs()  # the gradient of abs at exactly 0 is 0
    if beta == 0.0:
        return ax
    return torch.where(ax < beta, (0.5 / beta) * x * x, ax - 0.5 * beta)


def boundary_aux_loss(
    pred, target, mask=None, *, weights=(1.0, 1.0, 1.0, 1.0), beta=1.0, reduction="mean",
    process_group=None,
):
    """Smooth-L1 loss on start, end, centre and length of predicted spans.

    Args:
        pred: ``[..., 2]`` predicted (start, end), floating point; the gradient flows here.
        target: ``[..., 2]`` target (start, end), same shape; no gradient flows to it.
        mask: optional ``[...]`` bool mask or float weights ``>= 0``; elements with weight 0
            never influence the result, whatever ``pred`` holds there.
        weights: ``(ws, we, wc, wl)``, finite and ``>= 0``.
        beta: smooth-L1 threshold ``>= 0``; ``0`` gives plain ``|x|``.
        reduction: ``"none"`` (``mask * l``, shape ``[...]``), ``"sum"`` or ``"mean"``
            (``sum(mask * l) / sum(mask)``; 0 with zero gradient when the mask sums to 0).
        process_group: a ``torch.distributed`` process group for a mean over every rank's
            elements (docs/losses.md, section 7); needs ``reduction="mean"``.

    16-bit inputs are computed and returned in float32; float64 in float64.
    """
    check_reduction(reduction)
    check_process_group(process_group, reduction)
    loss, denom = aux_terms(pred, target, mask, weights, beta)
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    if process_group is not None:
        return global_means([total], [denom], process_group)[0]
    nonzero = denom > 0
    safe = torch.where(nonzero, denom, denom.new_ones(()))
    return torch.where(nonzero, total / safe, total.new_zeros(()))


def aux_terms(pred, target, mask, weights, beta):
    """(``mask * l`` elementwise, the mean's denominator: ``sum(mask)``, or the number of
    elements without a mask), after checking every input (``boundary_aux_loss``'s)."""
    if not isinstance(pred, torch.Tensor):
        raise TypeError(f"pred must be a torch.Tensor, got {type(pred).__name__}")
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if not pred.is_floating_point():
        raise TypeError(f"pred must be a floating point tensor, got {pred.dtype}")
    if not target.is_floating_point():
        raise TypeError(f"target must be a floating point tensor, got {target.dtype}")
    if pred.dim() < 1 or pred.shape[-1] != 2:
        raise ValueError(
            f"pred must have shape [..., 2] (start, end), got {tuple(pred.shape)}"
        )
    if target.shape != pred.shape:
        raise ValueError(
            f"target must have the shape of pred {tuple(pred.shape)}, got {tuple(target.shape)}"
        )
    if target.device != pred.device:
        raise ValueError(
            f"target must be on the device of pred ({pred.device}), got {target.device}"
        )
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
        if mask.is_complex() or not (mask.dtype == torch.bool or mask.is_floating_point()):
            raise TypeError(f"mask must be a bool or floating point tensor, got {mask.dtype}")
        if mask.shape != pred.shape[:-1]:
            raise ValueError(
                f"mask must have shape {tuple(pred.shape[:-1])} (pred.shape[:-1]), got "
                f"{tuple(mask.shape)}"
            )
        if mask.device != pred.device:
            raise ValueError(
                f"mask must be on the device of pred ({pred.device}), got {mask.device}"
            )
        if mask.dtype != torch.bool and not torch.compiler.is_compiling():
            m = mask.detach()
            if not bool(((m >= 0) & torch.isfinite(m)).all()):
                raise ValueError("mask weights must be finite and >= 0")
    ws, we, wc, wl = check_reals("weights", weights, 4, "(ws, we, wc, wl)", nonnegative=True)
    beta = check_real("beta", scalar_item(beta), nonnegative=True)

    if pred.dtype == torch.float64 or target.dtype == torch.float64:
        dtype = torch.float64
    else:
        dtype = torch.float32
    diff = pred.to(dtype) - target.detach().to(dtype)
    weight = None
    if mask is not None:
        weight = mask.detach().to(dtype)
        # Elements with weight 0 are zeroed before any arithmetic, so whatever pred holds
        # there (NaN included) reaches neither the value nor the gradient.
        diff = torch.where((weight != 0).unsqueeze(-1), diff, diff.new_zeros(()))
    d_start = diff[..., 0]
    d_end = diff[..., 1]
    loss = (
        ws * _smooth_l1(d_start, beta)
        + we * _smooth_l1(d_end, beta)
        + wc * _smooth_l1(0.5 * (d_start + d_end), beta)
        + wl * _smooth_l1(d_end - d_start, beta)
    )
    if weight is not None:
        loss = loss * weight
        denom = weight.sum()
    else:
        denom = torch.tensor(float(loss.numel()), dtype=dtype, device=loss.device)
    return loss, denom
