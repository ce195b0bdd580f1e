"""Global means over the ranks of a ``torch.distributed`` process group (docs/losses.md,
section 7).

Every loss of the package takes ``process_group=``: with it, ``reduction="mean"`` becomes the
mean over the samples of *all* ranks that have a loss, and every rank returns that value.
The gradient each rank computes is scaled for the average that DDP takes over the group, so
after ``backward()`` under DDP the parameter gradients are those of one process that sees the
union of the ranks' batches. One small all-reduce per call carries every term's sum and
count (``ClipTBPLoss`` packs all its terms into it).

For gradient accumulation over micro-batches (DDP's ``no_sync``), the count must span the
micro-batches: :func:`loss_counts` gives a batch's counts from its labels alone, and
``ClipTBPLoss.global_counts`` all-reduces them over the ranks once per optimiser step; the
calls then take ``counts=`` and divide by it.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["global_means", "loss_counts"]


def check_process_group(process_group: object, reduction: str = "mean") -> None:
    """Check a ``process_group`` argument (None: per-call reduction)."""
    if process_group is None:
        return
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("process_group was given but torch.distributed is not initialised; "
                         "call torch.distributed.init_process_group first (or pass "
                         "process_group=None for a per-call mean)")
    if not isinstance(process_group, dist.ProcessGroup):
        raise TypeError("process_group must be a torch.distributed.ProcessGroup (e.g. "
                        f"torch.distributed.group.WORLD) or None; got "
                        f"{type(process_group).__name__}")
    if reduction != "mean":
        raise ValueError(f"process_group needs reduction='mean' (a global mean); got "
                         f"reduction={reduction!r}")


def check_counts(counts: object, n_terms: int, process_group: object) -> None:
    """Check precomputed global counts: a tensor of shape ``(n_terms,)``, with a group."""
    if counts is None:
        return
    if process_group is None:
        raise ValueError("counts needs process_group (counts are global: all-reduced over the "
                         "ranks' micro-batches)")
    if not isinstance(counts, Tensor):
        raise TypeError(f"counts must be a torch.Tensor; got {type(counts).__name__}")
    if counts.shape != (n_terms,):
        raise ValueError(f"counts must have shape ({n_terms},); got {tuple(counts.shape)}")


def _all_reduce_sum(x: Tensor, group) -> Tensor:
    """Sum of ``x`` over the group, out of place (traceable by ``torch.compile``)."""
    from torch.distributed import _functional_collectives as fc

    return fc.wait_tensor(fc.all_reduce(x, "sum", group))


def global_means(sums: Sequence[Tensor], counts: Sequence[Tensor], group,
                 totals: Optional[Tensor] = None) -> List[Tensor]:
    """For each term, ``(sum over ranks of sums) / (sum over ranks of counts)`` (0 where the
    count is 0), from one all-reduce.

    Value: the global mean on every rank. Gradient: ``world_size * d(local sum) / global
    count``, so DDP's average over the ranks gives the gradient of the global mean. With
    ``totals`` (global counts known in advance, e.g. over micro-batches), only the sums are
    all-reduced and each term is divided by its total.
    """
    import torch.distributed as dist

    world = dist.get_world_size(group)
    device = sums[0].device
    local = torch.stack([s.detach().to(torch.float64).reshape(()) for s in sums])
    if totals is None:
        local = torch.cat([local, torch.stack(
            [c.detach().to(device, torch.float64).reshape(()) for c in counts])])
    reduced = _all_reduce_sum(local, group)
    n = len(sums)
    glob_sums = reduced[:n]
    glob_counts = reduced[n:] if totals is None else totals.detach().to(device, torch.float64)
    out = []
    for i, s in enumerate(sums):
        c = glob_counts[i].to(s.dtype)
        safe = torch.where(c > 0, c, torch.ones_like(c))
        scaled = s * world
        value = scaled + (glob_sums[i].to(s.dtype) - scaled).detach()
        out.append(torch.where(c > 0, value / safe, value * 0))
    return out


def loss_counts(labels: Tensor, *, positives: str = "any", radius: int = 1) -> Tuple[Tensor,
                                                                                      Tensor]:
    """``(n_clip, n_boun)``: how many samples of ``labels`` have an ``L_clip`` and an
    ``L_boun`` (int64 scalars on the labels' device), from the labels alone.

    A sample has an ``L_clip`` when it has a positive pair (``"any"``: at least two valid GT
    clips; ``"same"``: a window of at least two clips), and an ``L_boun`` when a window of at
    least two clips has a background clip within ``radius`` outside its first or last clip.
    These are the counts the ``"mean"`` reductions divide by, except for a sample with a
    non-finite valid clip, which also counts (its loss, and so the mean, is NaN).
    """
    from ._checks import check_choice, check_int, check_label_values
    from ._options import LABEL_DTYPES, POSITIVES
    from .backends.reference import window_extents

    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor; got {type(labels).__name__}")
    if labels.dtype not in LABEL_DTYPES or labels.dim() != 2:
        raise ValueError(f"labels must be a [B, T] signed integer tensor; got "
                         f"{labels.dtype} of shape {tuple(labels.shape)}")
    check_choice("positives", positives, POSITIVES)
    check_int("radius", radius, 1)
    check_label_values(labels)
    B, T = labels.shape
    if B == 0 or T == 0:
        zero = torch.zeros((), dtype=torch.int64, device=labels.device)
        return zero, zero.clone()
    lab = labels.to(torch.int64)
    gt = lab >= 1
    js, je, _, size = window_extents(lab.contiguous())  # each clip's window
    if positives == "any":
        has_clip = gt.sum(1) >= 2
    else:
        has_clip = (gt & (size >= 2)).any(1)
    # background clips in [lo, hi) from a prefix count of background
    bg = torch.cat([lab.new_zeros(B, 1), (lab == 0).to(torch.int64).cumsum(1)], dim=1)

    def background(lo: Tensor, hi: Tensor) -> Tensor:
        lo, hi = lo.clamp(0, T), hi.clamp(0, T)
        return bg.gather(1, hi) - bg.gather(1, lo) > 0

    near = background(js - radius, js) | background(je + 1, je + 1 + radius)
    has_boun = (gt & (size >= 2) & near).any(1)
    return has_clip.sum(), has_boun.sum()
