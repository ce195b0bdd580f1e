"""`ClipTBPLoss`: the drop-in criterion of paper Eq. 8.

    L_total = w_basic * L_basic + w_clip * L_clip + w_boun * L_boun + w_aux * L_b_aux
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ._checks import (
    check_backend,
    check_boundary_options,
    check_choice,
    check_clip_options,
    check_real,
)
from .api import boundary_margin_loss, clip_boundary_losses, clip_pair_loss
from .aux_loss import boundary_aux_loss

_RESERVED = ("loss", "loss_basic", "loss_clip", "loss_boun", "loss_aux")


class ClipTBPLoss(nn.Module):
    """The ClipTBP training criterion (paper Eq. 8), added on top of a baseline's own loss.

    Args:
        w_basic, w_clip, w_boun, w_aux: weights of the baseline loss and of the three ClipTBP
            terms (defaults: 1, 3, 3, 2 as in the paper's Tab. 3). A ClipTBP term whose weight
            is 0 is not computed and not reported.
        k, tau, positives, negatives: options of :func:`cliptbp_kernels.clip_pair_loss`.
        radius, margin_max, margin_base, margin_scale: options of
            :func:`cliptbp_kernels.boundary_margin_loss`.
        aux_weights, aux_beta: options of :func:`cliptbp_kernels.boundary_aux_loss`.
        backend: backend of the fused losses (``"auto"`` picks the fastest available).
        reduction: ``"mean"`` (default: over the samples of this call that have a loss, so per
            rank in data-parallel training) or ``"sum"`` (divide by an all-reduced count for a
            global mean).
        check_labels: check eagerly that no label is below -1 (one device sync on a GPU).

    ``forward(emb, labels, basic=None, pred_spans=None, target_spans=None, span_mask=None)``
    returns a dict with ``"loss"`` (the weighted total) and each unweighted term:
    ``"loss_clip"``, ``"loss_boun"``, ``"loss_aux"`` (when spans are given) and, when ``basic``
    is given, ``"loss_basic"`` plus every key of a ``basic`` dict (e.g. ``"loss_span"``).

    ``basic`` is the baseline's own loss: a scalar tensor, or a dict of already weighted terms
    (tensors, or plain numbers such as a baseline's constant ``0.``) that are summed (as
    UniVTG / Moment-DETR criteria return them); its keys must not be one
    of ``"loss"``, ``"loss_basic"``, ``"loss_clip"``, ``"loss_boun"``, ``"loss_aux"``.
    """

    def __init__(self, *, w_basic: float = 1.0, w_clip: float = 3.0, w_boun: float = 3.0,
                 w_aux: float = 2.0, k: int = 20, tau: float = 0.07, positives: str = "any",
                 negatives: str = "cross", radius: int = 1, margin_max: float = 0.3,
                 margin_base: float = 0.1, margin_scale: float = 0.1,
                 aux_weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0), aux_beta: float = 1.0,
                 backend: str = "auto", reduction: str = "mean",
                 check_labels: bool = True) -> None:
        super().__init__()
        for name, w in (("w_basic", w_basic), ("w_clip", w_clip), ("w_boun", w_boun),
                        ("w_aux", w_aux)):
            check_real(name, w)
        check_clip_options(k, tau, positives, negatives)
        check_boundary_options(radius, margin_max, margin_base, margin_scale)
        check_backend(backend)
        check_choice("reduction", reduction, ("mean", "sum"))
        self.w_basic, self.w_clip, self.w_boun, self.w_aux = (
            float(w_basic), float(w_clip), float(w_boun), float(w_aux))
        self.clip_options = dict(k=k, tau=tau, positives=positives, negatives=negatives)
        self.boundary_options = dict(radius=radius, margin_max=margin_max,
                                     margin_base=margin_base, margin_scale=margin_scale)
        self.call_options = dict(backend=backend, reduction=reduction, check_labels=check_labels)
        self.aux_weights = tuple(float(w) for w in aux_weights)
        self.aux_beta = float(aux_beta)

    def forward(self, emb: Tensor, labels: Tensor,
                basic: Optional[Union[Tensor, Mapping[str, Tensor]]] = None,
                pred_spans: Optional[Tensor] = None, target_spans: Optional[Tensor] = None,
                span_mask: Optional[Tensor] = None) -> Dict[str, Tensor]:
        if (pred_spans is None) != (target_spans is None):
            raise ValueError("pred_spans and target_spans must be given together")
        out: Dict[str, Tensor] = {}
        if self.w_clip != 0 and self.w_boun != 0:
            out["loss_clip"], out["loss_boun"] = clip_boundary_losses(
                emb, labels, **self.clip_options, **self.boundary_options, **self.call_options)
        elif self.w_clip != 0:
            out["loss_clip"] = clip_pair_loss(emb, labels, **self.clip_options,
                                              **self.call_options)
        elif self.w_boun != 0:
            out["loss_boun"] = boundary_margin_loss(emb, labels, **self.boundary_options,
                                                    **self.call_options)
        dtype = torch.float64 if emb.dtype == torch.float64 else torch.float32
        total = emb.new_zeros((), dtype=dtype)
        if "loss_clip" in out:
            total = total + self.w_clip * out["loss_clip"]
        if "loss_boun" in out:
            total = total + self.w_boun * out["loss_boun"]

        if pred_spans is not None and self.w_aux != 0:
            l_aux = boundary_aux_loss(pred_spans, target_spans, span_mask,
                                      weights=self.aux_weights, beta=self.aux_beta,
                                      reduction=self.call_options["reduction"])
            out["loss_aux"] = l_aux
            total = total + self.w_aux * l_aux.to(total.dtype)

        if basic is not None:
            if isinstance(basic, Mapping):
                if not basic:
                    raise ValueError("basic must be a tensor or a non-empty dict of tensors")
                terms = []
                for key, value in basic.items():
                    if key in _RESERVED:
                        raise ValueError(f"basic must not have the key {key!r} (reserved for "
                                         "the criterion's own outputs)")
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        value = total.new_tensor(float(value))  # e.g. a baseline's literal 0.
                    if not isinstance(value, Tensor):
                        raise TypeError(f"basic[{key!r}] must be a tensor or a number; "
                                        f"got {type(value).__name__}")
                    out[key] = value
                    terms.append(value)
                l_basic = torch.stack([t.reshape(()).to(total.dtype) for t in terms]).sum()
            elif isinstance(basic, Tensor):
                if basic.numel() != 1:
                    raise ValueError(f"basic must be a scalar loss; got shape {tuple(basic.shape)}")
                l_basic = basic.reshape(()).to(total.dtype)
            else:
                raise TypeError("basic must be a tensor or a dict of tensors; got "
                                f"{type(basic).__name__}")
            out["loss_basic"] = l_basic
            total = total + self.w_basic * l_basic
        out["loss"] = total
        return out

    def extra_repr(self) -> str:
        options = {**self.clip_options, **self.boundary_options, **self.call_options}
        return (f"w_basic={self.w_basic}, w_clip={self.w_clip}, w_boun={self.w_boun}, "
                f"w_aux={self.w_aux}, " + ", ".join(f"{k}={v!r}" for k, v in options.items()))
