"""`ClipTBPLoss`: the drop-in criterion of paper Eq. 8.

    L_total = w_basic * L_basic + w_clip * L_clip + w_boun * L_boun + w_aux * L_b_aux
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ._checks import (
    BACKENDS,
    check_boundary_options,
    check_choice,
    check_clip_options,
    check_real,
)
from .api import clip_boundary_losses
from .aux_loss import boundary_aux_loss


class ClipTBPLoss(nn.Module):
    """The ClipTBP training criterion (paper Eq. 8), added on top of a baseline's own loss.

    Args:
        w_basic, w_clip, w_boun, w_aux: weights of the baseline loss and of the three ClipTBP
            terms (defaults: 1, 3, 3, 2 as in the paper's Tab. 3). A weight of 0 skips a term.
        k, tau, positives, negatives: options of :func:`cliptbp_kernels.clip_pair_loss`.
        radius, margin_max, margin_base, margin_scale: options of
            :func:`cliptbp_kernels.boundary_margin_loss`.
        aux_weights, aux_beta: options of :func:`cliptbp_kernels.boundary_aux_loss`.
        backend: backend of the fused losses (``"auto"`` picks the fastest available).

    ``forward(emb, labels, basic=None, pred_spans=None, target_spans=None, span_mask=None)``
    returns a dict with ``"loss"`` (the weighted total) and each unweighted term:
    ``"loss_basic"`` (or every key of a ``basic`` dict, e.g. ``"loss_span"``),
    ``"loss_clip"``, ``"loss_boun"`` and, when spans are given, ``"loss_aux"``.

    ``basic`` is the baseline's own loss: a scalar tensor, or a dict of already weighted terms
    that are summed (as UniVTG / Moment-DETR criteria return them).
    """

    def __init__(self, *, w_basic: float = 1.0, w_clip: float = 3.0, w_boun: float = 3.0,
                 w_aux: float = 2.0, k: int = 20, tau: float = 0.07, positives: str = "any",
                 negatives: str = "cross", radius: int = 1, margin_max: float = 0.3,
                 margin_base: float = 0.1, margin_scale: float = 0.1,
                 aux_weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0), aux_beta: float = 1.0,
                 backend: str = "auto") -> None:
        super().__init__()
        for name, w in (("w_basic", w_basic), ("w_clip", w_clip), ("w_boun", w_boun),
                        ("w_aux", w_aux)):
            check_real(name, w)
        check_clip_options(k, tau, positives, negatives)
        check_boundary_options(radius, margin_max, margin_base, margin_scale)
        check_choice("backend", backend, BACKENDS)
        self.w_basic, self.w_clip, self.w_boun, self.w_aux = (
            float(w_basic), float(w_clip), float(w_boun), float(w_aux))
        self.loss_options = dict(k=k, tau=tau, positives=positives, negatives=negatives,
                                 radius=radius, margin_max=margin_max, margin_base=margin_base,
                                 margin_scale=margin_scale, backend=backend)
        self.aux_weights = tuple(float(w) for w in aux_weights)
        self.aux_beta = float(aux_beta)

    def forward(self, emb: Tensor, labels: Tensor,
                basic: Optional[Union[Tensor, Mapping[str, Tensor]]] = None,
                pred_spans: Optional[Tensor] = None, target_spans: Optional[Tensor] = None,
                span_mask: Optional[Tensor] = None) -> Dict[str, Tensor]:
        out: Dict[str, Tensor] = {}
        l_clip, l_boun = clip_boundary_losses(emb, labels, **self.loss_options)
        out["loss_clip"] = l_clip
        out["loss_boun"] = l_boun
        total = self.w_clip * l_clip + self.w_boun * l_boun

        if (pred_spans is None) != (target_spans is None):
            raise ValueError("pred_spans and target_spans must be given together")
        if pred_spans is not None:
            l_aux = boundary_aux_loss(pred_spans, target_spans, span_mask,
                                      weights=self.aux_weights, beta=self.aux_beta)
            out["loss_aux"] = l_aux
            total = total + self.w_aux * l_aux.to(total.dtype)

        if basic is not None:
            if isinstance(basic, Mapping):
                if not basic:
                    raise ValueError("basic must be a tensor or a non-empty dict of tensors")
                terms = []
                for key, value in basic.items():
                    if not isinstance(value, Tensor):
                        raise TypeError(f"basic[{key!r}] must be a tensor; got {type(value).__name__}")
                    out[key] = value
                    terms.append(value)
                l_basic = torch.stack([t.reshape(()).to(total.dtype) for t in terms]).sum()
            elif isinstance(basic, Tensor):
                if basic.numel() != 1:
                    raise ValueError(f"basic must be a scalar loss; got shape {tuple(basic.shape)}")
                l_basic = basic.reshape(()).to(total.dtype)
            else:
                raise TypeError(f"basic must be a tensor or a dict of tensors; got {type(basic).__name__}")
            out["loss_basic"] = l_basic
            total = total + self.w_basic * l_basic
        out["loss"] = total
        return out

    def extra_repr(self) -> str:
        return (f"w_basic={self.w_basic}, w_clip={self.w_clip}, w_boun={self.w_boun}, "
                f"w_aux={self.w_aux}, " + ", ".join(f"{k}={v!r}" for k, v in self.loss_options.items()))
