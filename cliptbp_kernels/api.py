"""Public functional API of cliptbp_kernels (L_clip, L_boun and the hard negatives)."""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from . import backends
from ._checks import (
    check_backend,
    check_boundary_options,
    check_clip_options,
    check_emb_labels,
    check_reduction,
)
from ._options import NEGATIVE_CODES, POSITIVE_CODES, FusedOptions
from .backends import reference
from .distributed import check_process_group, global_means


def _reduce(loss: Tensor, has: Tensor, reduction: str) -> Tensor:
    """Reduce per-sample losses; samples without a loss hold 0 and are left out of the mean."""
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    return total / has.sum().clamp_min(1)  # int64 count: promoted to the loss dtype


def _reduce_all(terms, reduction: str, process_group) -> Tuple[Tensor, ...]:
    """`_reduce` of each (loss, has) pair; with a process group, global means from one
    all-reduce."""
    if process_group is None:
        return tuple(_reduce(loss, has, reduction) for loss, has in terms)
    return tuple(global_means([loss.sum() for loss, _ in terms],
                              [has.sum() for _, has in terms], process_group))


def _options(k=0, tau=1.0, positives="any", negatives="cross", radius=1, margin_max=0.3,
             margin_base=0.1, margin_scale=0.1, want_clip=True, want_boun=True) -> FusedOptions:
    """The checked options as the backends take them (codes for the option names)."""
    return FusedOptions(k, float(tau), POSITIVE_CODES[positives], NEGATIVE_CODES[negatives],
                        radius, float(margin_max), float(margin_base), float(margin_scale),
                        want_clip, want_boun)


def _per_sample(emb: Tensor, labels: Tensor, backend: str, opts: FusedOptions):
    """(clip_loss, clip_has, boun_loss, boun_has) per sample from the chosen backend."""
    name = backends.resolve(backend, emb.device, emb.dtype)
    if name == reference.NAME:
        return reference.per_sample(emb, labels, opts)
    out = backends.fused_ops(name).call(emb, labels, opts)
    return out.loss_clip, out.has_clip, out.loss_boun, out.has_boun


def clip_pair_loss(emb: Tensor, labels: Tensor, *, k: int = 20, tau: float = 0.07,
                   positives: str = "any", negatives: str = "cross", reduction: str = "mean",
                   backend: str = "auto", check_labels: bool = True,
                   process_group=None) -> Tensor:
    """Clip-pair similarity loss ``L_clip`` with top-k hard negatives (docs/losses.md, section 1).

    Args:
        emb: ``[B, T, D]`` clip embeddings (float16, bfloat16, float32 or float64).
        labels: ``[B, T]`` signed integers: -1 padding, 0 background, ``w >= 1`` window id.
        k: number of hard negatives per sample (``>= 0``).
        tau: temperature (``> 0``).
        positives: ``"any"`` (both clips in GT) or ``"same"`` (both in the same window).
        negatives: ``"cross"`` (at least one clip in GT; needs ``|G| x T`` similarities) or
            ``"all"`` (every non-positive pair, background-background too: ``T^2 / 2``).
        reduction: ``"mean"`` over samples that have a loss (per call: in data-parallel
            training each rank averages its own samples unless ``process_group`` is given),
            ``"sum"`` or ``"none"`` (``[B]``).
        backend: ``"auto"``, ``"reference"``, ``"cpu"``, ``"triton"`` or ``"cuda"``.
        check_labels: check eagerly that no label is below -1 (one device sync on a GPU).
        process_group: a ``torch.distributed`` process group: the mean over the samples of
            every rank that have a loss, from one all-reduce; gradients scaled for DDP's
            average (docs/losses.md, section 7). Needs ``reduction="mean"``.

    Returns:
        float32 loss (float64 for float64 input): a scalar, or ``[B]`` for ``"none"``.
    """
    return _reduced_terms(emb, labels, reduction, process_group, backend=backend,
                          check_labels=check_labels,
                          clip_options=dict(k=k, tau=tau, positives=positives,
                                            negatives=negatives))[0]


def boundary_margin_loss(emb: Tensor, labels: Tensor, *, radius: int = 1,
                         margin_max: float = 0.3, margin_base: float = 0.1,
                         margin_scale: float = 0.1, reduction: str = "mean",
                         backend: str = "auto", check_labels: bool = True,
                         process_group=None) -> Tensor:
    """Boundary margin loss ``L_boun`` around each window's start, centre and end
    (docs/losses.md, section 2).

    Args:
        emb, labels: as for :func:`clip_pair_loss`.
        radius: ``r >= 1``, the neighbourhood of start, centre and end (and outside the ends).
        margin_max, margin_base, margin_scale: ``delta = min(margin_max, margin_base +
            margin_scale * (je - js) / n_valid)``.
        reduction, backend, check_labels, process_group: as for :func:`clip_pair_loss`.
    """
    return _reduced_terms(emb, labels, reduction, process_group, backend=backend,
                          check_labels=check_labels,
                          boundary_options=dict(radius=radius, margin_max=margin_max,
                                                margin_base=margin_base,
                                                margin_scale=margin_scale))[0]


def clip_boundary_losses(emb: Tensor, labels: Tensor, *, k: int = 20, tau: float = 0.07,
                         positives: str = "any", negatives: str = "cross", radius: int = 1,
                         margin_max: float = 0.3, margin_base: float = 0.1,
                         margin_scale: float = 0.1, reduction: str = "mean",
                         backend: str = "auto", check_labels: bool = True,
                         process_group=None) -> Tuple[Tensor, Tensor]:
    """``(L_clip, L_boun)`` from one pass over ``emb``; options as in the two functions
    (with ``process_group``, both global means come from one all-reduce)."""
    return _reduced_terms(emb, labels, reduction, process_group, backend=backend,
                          check_labels=check_labels,
                          clip_options=dict(k=k, tau=tau, positives=positives,
                                            negatives=negatives),
                          boundary_options=dict(radius=radius, margin_max=margin_max,
                                                margin_base=margin_base,
                                                margin_scale=margin_scale))


def per_sample_terms(emb: Tensor, labels: Tensor, *, backend: str, check_labels: bool,
                     clip_options: Optional[dict] = None,
                     boundary_options: Optional[dict] = None) -> Dict[str, Tuple[Tensor, Tensor]]:
    """Checked ``{"loss_clip": (loss [B], has [B]), "loss_boun": ...}`` from one pass over
    ``emb``: ``L_clip`` when ``clip_options`` (``k``, ``tau``, ``positives``, ``negatives``)
    are given, ``L_boun`` when ``boundary_options`` (``radius``, ``margin_*``) are. Every
    input is checked before a kernel runs. The losses above reduce it; ``ClipTBPLoss`` too."""
    if clip_options is None and boundary_options is None:
        raise ValueError("per_sample_terms needs clip_options, boundary_options or both")
    check_emb_labels(emb, labels, check_labels=check_labels)
    if clip_options is not None:
        check_clip_options(**clip_options)
    if boundary_options is not None:
        check_boundary_options(**boundary_options)
    check_backend(backend)
    opts = _options(**(clip_options or {}), **(boundary_options or {}),
                    want_clip=clip_options is not None, want_boun=boundary_options is not None)
    lc, hc, lb, hb = _per_sample(emb, labels, backend, opts)
    out = {}
    if clip_options is not None:
        out["loss_clip"] = (lc, hc)
    if boundary_options is not None:
        out["loss_boun"] = (lb, hb)
    return out


def _reduced_terms(emb: Tensor, labels: Tensor, reduction: str, process_group,
                   **terms) -> Tuple[Tensor, ...]:
    """:func:`per_sample_terms` reduced (``_reduce_all``), with the reduction and the process
    group checked first."""
    check_reduction(reduction)
    check_process_group(process_group, reduction)
    return _reduce_all(per_sample_terms(emb, labels, **terms).values(), reduction,
                       process_group)


def hard_negative_pairs(emb: Tensor, labels: Tensor, *, k: int = 20, positives: str = "any",
                        negatives: str = "cross", backend: str = "auto",
                        check_labels: bool = True) -> Tensor:
    """The hard negatives ``N_k`` of each sample: LongTensor ``[B, k, 2]`` of ``(i, j)``, ``i < j``.

    Rank order (largest similarity first; ties to the smaller ``i``, then ``j``), padded with
    -1 where a sample has fewer than ``k`` negative candidates. No gradient.
    """
    check_emb_labels(emb, labels, check_labels=check_labels)
    check_clip_options(k, 1.0, positives, negatives)
    check_backend(backend)
    name = backends.resolve(backend, emb.device, emb.dtype)
    with torch.no_grad():
        if name == reference.NAME:
            return reference.hard_negative_pairs(emb, labels.to(torch.int64), k=k,
                                                 positives=positives, negatives=negatives)
        opts = _options(k, 1.0, positives, negatives, want_boun=False)
        pairs = backends.fused_ops(name).call(emb, labels, opts).pairs
    B, T = labels.shape
    out = torch.full((B, k, 2), -1, dtype=torch.int64, device=emb.device)
    n = pairs.shape[1]
    found = pairs >= 0
    out[:, :n, 0] = torch.where(found, pairs // max(T, 1), -1)
    out[:, :n, 1] = torch.where(found, pairs % max(T, 1), -1)
    return out
