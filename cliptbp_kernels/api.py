"""Public functional API of cliptbp_kernels (L_clip, L_boun and the hard negatives)."""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from . import _backends, reference
from ._checks import (
    BACKENDS,
    REDUCTIONS,
    check_boundary_options,
    check_choice,
    check_clip_options,
    check_emb_labels,
)
from ._custom_ops import NEGATIVE_CODES, POSITIVE_CODES


def _reduce(loss: Tensor, has: Tensor, reduction: str) -> Tensor:
    """Reduce per-sample losses; samples without a loss hold 0 and are left out of the mean."""
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    return total / has.sum().clamp_min(1)  # int64 count: promoted to the loss dtype


class _FirstOrderOnly(torch.autograd.Function):
    """Identity on ``emb`` whose backward cannot be differentiated again: the reference gives
    the same clear error on double backward as the fused backends (SPEC.md)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        return grad


def _first_order_only(emb: Tensor) -> Tensor:
    if torch.compiler.is_compiling() or not (torch.is_grad_enabled() and emb.requires_grad):
        return emb
    return _FirstOrderOnly.apply(emb)


def _per_sample(emb, labels, backend, *, k, tau, positives, negatives, radius, margin_max,
                margin_base, margin_scale, want_clip, want_boun):
    """(clip_loss, clip_has, boun_loss, boun_has) per sample from the chosen backend."""
    name = _backends.resolve(backend, emb.device)
    if name == "reference":
        with torch.autocast(emb.device.type, enabled=False):  # SPEC.md: float32 compute
            return _reference_per_sample(
                _first_order_only(emb), labels.to(torch.int64), k=k, tau=tau, positives=positives,
                negatives=negatives, radius=radius, margin_max=margin_max,
                margin_base=margin_base, margin_scale=margin_scale, want_clip=want_clip,
                want_boun=want_boun)
    ops = _backends.fused_ops(name)
    lc, hc, lb, hb, *_ = ops.call(
        emb, labels, k, float(tau), POSITIVE_CODES[positives], NEGATIVE_CODES[negatives],
        radius, float(margin_max), float(margin_base), float(margin_scale), want_clip, want_boun)
    return lc, hc, lb, hb


def _reference_per_sample(emb, labels, *, k, tau, positives, negatives, radius, margin_max,
                          margin_base, margin_scale, want_clip, want_boun):
    if want_clip and want_boun:
        return reference.clip_boundary_losses(
            emb, labels, k=k, tau=tau, positives=positives, negatives=negatives, radius=radius,
            margin_max=margin_max, margin_base=margin_base, margin_scale=margin_scale)
    if want_clip:
        lc, hc = reference.clip_pair_losses(emb, labels, k=k, tau=tau, positives=positives,
                                            negatives=negatives)
        return lc, hc, None, None
    lb, hb = reference.boundary_margin_losses(emb, labels, radius=radius, margin_max=margin_max,
                                              margin_base=margin_base, margin_scale=margin_scale)
    return None, None, lb, hb


def clip_pair_loss(emb: Tensor, labels: Tensor, *, k: int = 20, tau: float = 0.07,
                   positives: str = "any", negatives: str = "cross", reduction: str = "mean",
                   backend: str = "auto", check_labels: bool = True) -> Tensor:
    """Clip-pair similarity loss ``L_clip`` with top-k hard negatives (SPEC.md section 1).

    Args:
        emb: ``[B, T, D]`` clip embeddings (float16, bfloat16, float32 or float64).
        labels: ``[B, T]`` signed integers: -1 padding, 0 background, ``w >= 1`` window id.
        k: number of hard negatives per sample (``>= 0``).
        tau: temperature (``> 0``).
        positives: ``"any"`` (both clips in GT) or ``"same"`` (both in the same window).
        negatives: ``"cross"`` (at least one clip in GT; needs ``|G| x T`` similarities) or
            ``"all"`` (every non-positive pair, background-background too: ``T^2 / 2``).
        reduction: ``"mean"`` over samples that have a loss (per call: in data-parallel
            training each rank averages its own samples; use ``"sum"`` and divide by the
            all-reduced count for a global mean), ``"sum"`` or ``"none"`` (``[B]``).
        backend: ``"auto"``, ``"reference"``, ``"cpu"``, ``"triton"`` or ``"cuda"``.
        check_labels: check eagerly that no label is below -1 (one device sync on a GPU).

    Returns:
        float32 loss (float64 for float64 input): a scalar, or ``[B]`` for ``"none"``.
    """
    check_emb_labels(emb, labels, check_labels=check_labels)
    check_clip_options(k, tau, positives, negatives)
    check_choice("reduction", reduction, REDUCTIONS)
    check_choice("backend", backend, BACKENDS)
    lc, hc, _, _ = _per_sample(emb, labels, backend, k=k, tau=tau, positives=positives,
                               negatives=negatives, radius=1, margin_max=0.3, margin_base=0.1,
                               margin_scale=0.1, want_clip=True, want_boun=False)
    return _reduce(lc, hc, reduction)


def boundary_margin_loss(emb: Tensor, labels: Tensor, *, radius: int = 1,
                         margin_max: float = 0.3, margin_base: float = 0.1,
                         margin_scale: float = 0.1, reduction: str = "mean",
                         backend: str = "auto", check_labels: bool = True) -> Tensor:
    """Boundary margin loss ``L_boun`` around each window's start, centre and end (SPEC.md 2).

    Args:
        emb, labels: as for :func:`clip_pair_loss`.
        radius: ``r >= 1``, the neighbourhood of start, centre and end (and outside the ends).
        margin_max, margin_base, margin_scale: ``delta = min(margin_max, margin_base +
            margin_scale * (je - js) / n_valid)``.
        reduction, backend, check_labels: as for :func:`clip_pair_loss`.
    """
    check_emb_labels(emb, labels, check_labels=check_labels)
    check_boundary_options(radius, margin_max, margin_base, margin_scale)
    check_choice("reduction", reduction, REDUCTIONS)
    check_choice("backend", backend, BACKENDS)
    _, _, lb, hb = _per_sample(emb, labels, backend, k=0, tau=1.0, positives="any",
                               negatives="cross", radius=radius, margin_max=margin_max,
                               margin_base=margin_base, margin_scale=margin_scale,
                               want_clip=False, want_boun=True)
    return _reduce(lb, hb, reduction)


def clip_boundary_losses(emb: Tensor, labels: Tensor, *, k: int = 20, tau: float = 0.07,
                         positives: str = "any", negatives: str = "cross", radius: int = 1,
                         margin_max: float = 0.3, margin_base: float = 0.1,
                         margin_scale: float = 0.1, reduction: str = "mean",
                         backend: str = "auto",
                         check_labels: bool = True) -> Tuple[Tensor, Tensor]:
    """``(L_clip, L_boun)`` from one pass over ``emb``; options as in the two functions."""
    check_emb_labels(emb, labels, check_labels=check_labels)
    check_clip_options(k, tau, positives, negatives)
    check_boundary_options(radius, margin_max, margin_base, margin_scale)
    check_choice("reduction", reduction, REDUCTIONS)
    check_choice("backend", backend, BACKENDS)
    lc, hc, lb, hb = _per_sample(emb, labels, backend, k=k, tau=tau, positives=positives,
                                 negatives=negatives, radius=radius, margin_max=margin_max,
                                 margin_base=margin_base, margin_scale=margin_scale,
                                 want_clip=True, want_boun=True)
    return _reduce(lc, hc, reduction), _reduce(lb, hb, reduction)


def hard_negative_pairs(emb: Tensor, labels: Tensor, *, k: int = 20, positives: str = "any",
                        negatives: str = "cross", backend: str = "auto",
                        check_labels: bool = True) -> Tensor:
    """The hard negatives ``N_k`` of each sample: LongTensor ``[B, k, 2]`` of ``(i, j)``, ``i < j``.

    Rank order (largest similarity first; ties to the smaller ``i``, then ``j``), padded with
    -1 where a sample has fewer than ``k`` negative candidates. No gradient.
    """
    check_emb_labels(emb, labels, check_labels=check_labels)
    check_clip_options(k, 1.0, positives, negatives)
    check_choice("backend", backend, BACKENDS)
    name = _backends.resolve(backend, emb.device)
    with torch.no_grad():
        if name == "reference":
            return reference.hard_negative_pairs(emb, labels.to(torch.int64), k=k,
                                                 positives=positives, negatives=negatives)
        ops = _backends.fused_ops(name)
        pairs = ops.call(emb, labels, k, 1.0, POSITIVE_CODES[positives],
                            NEGATIVE_CODES[negatives], 1, 0.3, 0.1, 0.1, True, False)[6]
    B, T = labels.shape
    out = torch.full((B, k, 2), -1, dtype=torch.int64, device=emb.device)
    n = pairs.shape[1]
    found = pairs >= 0
    out[:, :n, 0] = torch.where(found, pairs // max(T, 1), -1)
    out[:, :n, 1] = torch.where(found, pairs % max(T, 1), -1)
    return out
