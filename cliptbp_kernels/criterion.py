"""`ClipTBPLoss`: the drop-in criterion of paper Eq. 8.

    L_total = w_basic * L_basic + w_clip * L_clip + w_boun * L_boun + w_aux * L_b_aux
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ._checks import (
    check_backend,
    check_boundary_options,
    check_choice,
    check_clip_options,
    check_real,
)
from .api import _reduce_all, per_sample_terms
from .aux_loss import aux_terms, boundary_aux_loss
from .distributed import (
    _all_reduce_sum,
    check_counts,
    check_process_group,
    global_means,
    loss_counts,
)

_RESERVED = ("loss", "loss_basic", "loss_clip", "loss_boun", "loss_aux")
_TERMS = ("loss_clip", "loss_boun", "loss_aux")  # the order of `counts`


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
        reduction: ``"mean"`` (default: over the samples of this call that have a loss; over
            every rank's with ``process_group``) or ``"sum"``.
        check_labels: check eagerly that no label is below -1 (one device sync on a GPU).
        process_group: a ``torch.distributed`` process group: every ClipTBP term is the mean
            over the samples (spans) of all ranks, from one all-reduce per call, and its
            gradient is scaled for DDP's average (docs/losses.md, section 7). ``basic`` is
            added as given. Needs ``reduction="mean"``.

    ``forward(emb, labels, basic=None, pred_spans=None, target_spans=None, span_mask=None,
    counts=None)``
    returns a dict with ``"loss"`` (the weighted total) and each unweighted term:
    ``"loss_clip"``, ``"loss_boun"``, ``"loss_aux"`` (when spans are given) and, when ``basic``
    is given, ``"loss_basic"`` plus every key of a ``basic`` dict (e.g. ``"loss_span"``).

    ``basic`` is the baseline's own loss: a scalar tensor, or a dict of already weighted terms
    (tensors, or plain numbers such as a baseline's constant ``0.``) that are summed (as
    UniVTG / Moment-DETR criteria return them); its keys must not be one
    of ``"loss"``, ``"loss_basic"``, ``"loss_clip"``, ``"loss_boun"``, ``"loss_aux"``.

    ``counts`` (with ``process_group``, for gradient accumulation): the global counts of the
    whole optimiser step, from :meth:`global_counts`; each call then divides its terms by
    them, so the terms summed over the micro-batches are the step's global means.
    """

    def __init__(self, *, w_basic: float = 1.0, w_clip: float = 3.0, w_boun: float = 3.0,
                 w_aux: float = 2.0, k: int = 20, tau: float = 0.07, positives: str = "any",
                 negatives: str = "cross", radius: int = 1, margin_max: float = 0.3,
                 margin_base: float = 0.1, margin_scale: float = 0.1,
                 aux_weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0), aux_beta: float = 1.0,
                 backend: str = "auto", reduction: str = "mean",
                 check_labels: bool = True, process_group=None) -> None:
        super().__init__()
        for name, w in (("w_basic", w_basic), ("w_clip", w_clip), ("w_boun", w_boun),
                        ("w_aux", w_aux)):
            check_real(name, w)
        check_clip_options(k, tau, positives, negatives)
        check_boundary_options(radius, margin_max, margin_base, margin_scale)
        check_backend(backend)
        check_choice("reduction", reduction, ("mean", "sum"))
        check_process_group(process_group, reduction)
        self.process_group = process_group
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
                span_mask: Optional[Tensor] = None,
                counts: Optional[Tensor] = None) -> Dict[str, Tensor]:
        if (pred_spans is None) != (target_spans is None):
            raise ValueError("pred_spans and target_spans must be given together")
        check_counts(counts, len(_TERMS), self.process_group)
        out: Dict[str, Tensor] = {}
        parts = self._per_sample(emb, labels)
        if self.process_group is not None:
            out.update(self._global_terms(parts, pred_spans, target_spans, span_mask, counts))
        else:
            out.update(zip(parts, _reduce_all(parts.values(), self.call_options["reduction"],
                                              None)))
        dtype = torch.float64 if emb.dtype == torch.float64 else torch.float32
        total = emb.new_zeros((), dtype=dtype)
        if "loss_clip" in out:
            total = total + self.w_clip * out["loss_clip"]
        if "loss_boun" in out:
            total = total + self.w_boun * out["loss_boun"]

        if "loss_aux" in out:
            total = total + self.w_aux * out["loss_aux"].to(total.dtype)
        elif pred_spans is not None and self.w_aux != 0:
            l_aux = boundary_aux_loss(pred_spans, target_spans, span_mask,
                                      reduction=self.call_options["reduction"],
                                      **self._aux_options())
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

    def _aux_options(self) -> dict:
        return dict(weights=self.aux_weights, beta=self.aux_beta)

    def _per_sample(self, emb: Tensor, labels: Tensor) -> Dict[str, tuple]:
        """``per_sample_terms`` of the fused terms with a non-zero weight ({} when none)."""
        if self.w_clip == 0 and self.w_boun == 0:
            return {}
        return per_sample_terms(
            emb, labels, backend=self.call_options["backend"],
            check_labels=self.call_options["check_labels"],
            clip_options=self.clip_options if self.w_clip != 0 else None,
            boundary_options=self.boundary_options if self.w_boun != 0 else None)

    def _global_terms(self, per_sample: Dict[str, tuple], pred_spans, target_spans, span_mask,
                      counts) -> Dict[str, Tensor]:
        """The ClipTBP terms as global means over the process group (one all-reduce)."""
        parts = {name: (loss.sum(), has.sum()) for name, (loss, has) in per_sample.items()}
        if pred_spans is not None and self.w_aux != 0:
            elems, denom = aux_terms(pred_spans, target_spans, span_mask, self.aux_weights,
                                     self.aux_beta)
            parts["loss_aux"] = (elems.sum(), denom)
        if not parts:
            return {}
        names = list(parts)
        totals = None
        if counts is not None:
            totals = torch.stack([counts[_TERMS.index(n)] for n in names])
        values = global_means([parts[n][0] for n in names], [parts[n][1] for n in names],
                              self.process_group, totals)
        return dict(zip(names, values))

    def local_counts(self, labels: Tensor, span_mask: Optional[Tensor] = None) -> Tensor:
        """float64 ``[3]``: this batch's counts of samples with an ``L_clip``, with an
        ``L_boun`` (:func:`cliptbp_kernels.distributed.loss_counts`) and the weight of its aux
        spans (``span_mask``'s sum; pass a ones mask if forward gets none), 0 for unused
        terms."""
        if self.w_aux != 0 and span_mask is None:
            raise ValueError("span_mask is required when w_aux != 0 (the aux term's count is "
                             "the sum of its span mask; pass a ones mask if forward gets none)")
        n_clip, n_boun = loss_counts(labels, positives=self.clip_options["positives"],
                                     radius=self.boundary_options["radius"])
        zero = torch.zeros((), dtype=torch.float64, device=labels.device)
        return torch.stack([
            n_clip.to(torch.float64) if self.w_clip != 0 else zero,
            n_boun.to(torch.float64) if self.w_boun != 0 else zero,
            span_mask.detach().to(torch.float64).sum() if self.w_aux != 0 else zero])

    def global_counts(self, labels: Union[Tensor, Sequence[Tensor]],
                      span_masks: Optional[Union[Tensor, Sequence[Tensor]]] = None) -> Tensor:
        """The counts of a whole optimiser step (every micro-batch of every rank) for
        ``forward(..., counts=...)``: :meth:`local_counts` summed over this rank's
        micro-batches (``labels`` and ``span_masks``: a tensor or a list, one per micro-batch)
        and all-reduced over the process group (one small all-reduce)."""
        if self.process_group is None:
            raise ValueError("global_counts needs a ClipTBPLoss built with process_group")
        labels_list: List[Tensor] = [labels] if isinstance(labels, Tensor) else list(labels)
        if span_masks is None:
            masks: List[Optional[Tensor]] = [None] * len(labels_list)
        else:
            masks = [span_masks] if isinstance(span_masks, Tensor) else list(span_masks)
        if len(masks) != len(labels_list) or not labels_list:
            raise ValueError("labels and span_masks must be non-empty lists of one tensor per "
                             f"micro-batch; got {len(labels_list)} and {len(masks)}")
        local = torch.stack([self.local_counts(lab, m)
                             for lab, m in zip(labels_list, masks)]).sum(0)
        return _all_reduce_sum(local, self.process_group)

    def extra_repr(self) -> str:
        options = {**self.clip_options, **self.boundary_options, **self.call_options}
        return (f"w_basic={self.w_basic}, w_clip={self.w_clip}, w_boun={self.w_boun}, "
                f"w_aux={self.w_aux}, " + ", ".join(f"{k}={v!r}" for k, v in options.items()))
