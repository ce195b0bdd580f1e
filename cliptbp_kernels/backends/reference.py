"""PyTorch reference backend: docs/losses.md sections 1 and 2 in plain vectorised PyTorch.

This is the readable definition of the losses and the naive baseline the fused kernels are
measured against: it materialises the full ``[B, T, T]`` similarity matrix and ``[B, T, T]``
pair masks, then reduces them with ordinary tensor operations. Autograd gives the backward.

Inputs are validated by the caller (the public functions of ``cliptbp_kernels``):

* ``emb``: ``[B, T, D]`` float16 / bfloat16 / float32 / float64, any strides;
* ``labels``: ``[B, T]`` integer tensor on the same device (``-1`` padding, ``0`` background,
  ``w >= 1`` ground-truth window ``w``; values below ``-1`` count as padding here).

Every function returns per-sample values; the reductions live in the public API.
"""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .._options import NEGATIVES, POSITIVES, FusedOptions

__all__ = [
    "per_sample",
    "clip_pair_losses",
    "boundary_margin_losses",
    "clip_boundary_losses",
    "hard_negative_pairs",
]

_NORM_EPS = 1e-8


# --------------------------------------------------------------------------------------
# shared preparation
# --------------------------------------------------------------------------------------


def _prepare(emb, labels):
    """Normalised embeddings and the similarity matrix, once for every loss.

    Returns ``(labels, valid, gt, bad, sim)``:

    * ``labels``: int64 ``[B, T]``;
    * ``valid`` / ``gt``: bool ``[B, T]`` (``label >= 0`` / ``label >= 1``);
    * ``bad``: bool ``[B]``, a valid clip of the sample holds NaN or infinity;
    * ``sim``: ``[B, T, T]`` cosine similarities in the compute dtype (float64 for float64
      input, float32 otherwise).

    Padded clips are replaced by zeros *before* anything else touches them, so whatever they
    hold (NaN included) cannot reach an output and their gradient is exactly zero. The
    non-finite entries of a bad sample are zeroed as well, so its arithmetic stays finite and
    cannot leak NaN into the gradients of other samples; the caller forces its losses to NaN.
    """
    labels = labels.long()
    compute_dtype = torch.float64 if emb.dtype == torch.float64 else torch.float32
    x = emb.to(compute_dtype)
    valid = labels >= 0
    gt = labels >= 1
    zero = x.new_zeros(())
    x = torch.where(valid.unsqueeze(-1), x, zero)
    finite = torch.isfinite(x)
    bad = ~finite.flatten(1).all(dim=1)
    x = torch.where(finite, x, zero)
    u = F.normalize(x, p=2.0, dim=-1, eps=_NORM_EPS)  # v / max(||v||, eps)
    sim = _true_fp32_matmul(u, u.transpose(1, 2))
    return labels, valid, gt, bad, sim


def _true_fp32_matmul(a, b):
    """``a @ b`` with true float32 products on CUDA (docs/losses.md: no TF32), whatever the global
    TF32 setting. Compiled graphs take the setting in force when they are traced."""
    if not (a.is_cuda and a.dtype == torch.float32) or torch.compiler.is_compiling():
        return torch.matmul(a, b)
    flag = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        return torch.matmul(a, b)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = flag


def _pair_masks(labels, valid, gt, positives, negatives):
    """Positive pairs ``P`` and negative candidates ``N`` as bool ``[B, T, T]`` (``i < j``)."""
    T = labels.shape[1]
    upper = torch.ones(T, T, dtype=torch.bool, device=labels.device).triu(diagonal=1)
    pair = upper & valid.unsqueeze(2) & valid.unsqueeze(1)
    gt_i = gt.unsqueeze(2)
    gt_j = gt.unsqueeze(1)
    if positives == "any":
        pos = pair & gt_i & gt_j
    elif positives == "same":
        pos = pair & gt_i & (labels.unsqueeze(2) == labels.unsqueeze(1))
    else:
        raise ValueError(f"positives must be 'any' or 'same', got {positives!r}")
    if negatives == "cross":
        neg = pair & ~pos & (gt_i | gt_j)
    elif negatives == "all":
        neg = pair & ~pos
    else:
        raise ValueError(f"negatives must be 'cross' or 'all', got {negatives!r}")
    return pos, neg


def _select_hard(sim_flat, neg_flat, k):
    """Exact top-k of the negative candidates, as a bool mask ``[B, T*T]``.

    Larger similarity first; equal similarities go to the smaller flat index ``i*T + j``
    (smaller ``i``, then smaller ``j``). ``topk`` gives the k-th largest value; everything
    strictly above it is taken, and the remaining places go to the first ties in flat order.
    """
    n = sim_flat.shape[1]
    k_eff = min(int(k), n)
    if k_eff <= 0:
        return torch.zeros_like(neg_flat)
    neg_inf = sim_flat.new_full((), float("-inf"))
    masked = torch.where(neg_flat, sim_flat, neg_inf)
    kth = masked.topk(k_eff, dim=1).values[:, -1:]  # -inf when fewer than k candidates
    above = neg_flat & (sim_flat > kth)
    ties = neg_flat & (sim_flat == kth)
    need = k_eff - above.sum(dim=1, keepdim=True)
    count_dtype = torch.int32 if n < 2**31 else torch.int64
    first_ties = ties & (ties.cumsum(dim=1, dtype=count_dtype) <= need)
    return above | first_ties


def _nan_where(bad, loss):
    return torch.where(bad, loss.new_full((), float("nan")), loss)


# --------------------------------------------------------------------------------------
# L_clip
# --------------------------------------------------------------------------------------


def _clip_from_sim(sim, labels, valid, gt, bad, *, k, tau, positives, negatives):
    pos, neg = _pair_masks(labels, valid, gt, positives, negatives)
    sim_flat = sim.flatten(1)
    pos_flat = pos.flatten(1)
    sel = _select_hard(sim_flat.detach(), neg.flatten(1), k)

    logits = sim_flat / tau
    neg_inf = logits.new_full((), float("-inf"))
    zero = logits.new_zeros(())

    # lse_P over the positive pairs. A sample without positives gets finite dummy logits so
    # that no -inf - (-inf) appears anywhere, in the forward or in the backward.
    has_pos = pos_flat.any(dim=1)
    pos_logits = torch.where(pos_flat, logits, neg_inf)
    pos_logits = torch.where(has_pos.unsqueeze(1), pos_logits, zero)
    lse_pos = torch.logsumexp(pos_logits, dim=1)
    lse_pos = torch.where(has_pos, lse_pos, zero)

    # log1p(sum_{N_k} exp(s/tau - lse_P)) = softplus(logsumexp_{N_k}(s/tau - lse_P)).
    has_neg = sel.any(dim=1)
    neg_logits = torch.where(sel, logits - lse_pos.unsqueeze(1), neg_inf)
    neg_logits = torch.where(has_neg.unsqueeze(1), neg_logits, zero)
    lse_neg = torch.logsumexp(neg_logits, dim=1)
    loss = torch.where(has_pos & has_neg, F.softplus(lse_neg), zero)

    loss = _nan_where(bad, loss)
    return loss, has_pos | bad


def clip_pair_losses(emb, labels, *, k, tau, positives, negatives):
    """Per-sample clip-pair similarity loss ``L_clip`` (docs/losses.md, section 1).

    Returns ``(loss, has)``: ``loss`` ``[B]`` (float32, float64 for float64 input) and
    ``has`` bool ``[B]`` (the positive set is non-empty, or a valid clip is non-finite).
    """
    loss, has, _, _ = _losses(emb, labels, dict(k=k, tau=tau, positives=positives,
                                                negatives=negatives), None)
    return loss, has


# --------------------------------------------------------------------------------------
# L_boun
# --------------------------------------------------------------------------------------


def window_extents(lab: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """For every clip of ``lab`` ([B, T] int64, contiguous): the first clip ``js``, last clip
    ``je``, centre clip and size of the clips that share its label (its window; padding and
    background form groups too), each [B, T], without host synchronisation: a stable sort
    groups each label's clips in increasing clip order and ``searchsorted`` finds the group."""
    sorted_lab, order = torch.sort(lab, dim=1, stable=True)
    start = torch.searchsorted(sorted_lab, lab, side="left")
    end = torch.searchsorted(sorted_lab, lab, side="right")
    size = end - start
    return (order.gather(1, start), order.gather(1, end - 1),
            order.gather(1, start + (size - 1) // 2), size)


def _boundary_from_sim(
    sim, labels, valid, gt, bad, *, radius, margin_max, margin_base, margin_scale
):
    """Boundary margin loss from the similarity matrix, vectorised over all windows.

    Windows are found without host synchronisation or data-dependent shapes: a stable sort
    of each sample's labels puts every window's clips next to each other in increasing clip
    order, and ``searchsorted`` gives, for every clip, where its window starts and ends in
    that order. From there every clip knows its window's ``js``, ``je``, centre and size.
    Each window is then represented by its first clip ``js``: its positive sums are
    scatter-added there, and its negative neighbours are gathered around it.
    """
    B, T = labels.shape
    device = labels.device
    dtype = sim.dtype
    zero = sim.new_zeros(())
    idx = torch.arange(T, device=device)

    lab = torch.where(valid, labels, torch.full_like(labels, -1)).contiguous()
    js, je, centre, size = window_extents(lab)

    # I_pos: window clips other than the centre within `radius` of start, centre or end.
    dist = torch.minimum(
        torch.minimum((idx - js).abs(), (idx - centre).abs()), (idx - je).abs()
    )
    in_pos = gt & (idx != centre) & (dist <= radius)
    s_centre = sim.gather(1, centre.unsqueeze(1)).squeeze(1)  # s[b, centre_i, i]
    pos_sum = torch.zeros_like(s_centre).scatter_add(
        1, js, torch.where(in_pos, s_centre, zero)
    )
    pos_cnt = torch.zeros_like(s_centre).scatter_add(1, js, in_pos.to(dtype))

    # I_neg: background clips within `radius` outside [js, je], gathered per window.
    rep = gt & (idx == js)  # one representative clip per window: its first clip
    reach = max(1, min(int(radius), T))
    offsets = torch.arange(1, reach + 1, device=device)
    cand = torch.cat(
        [js.unsqueeze(2) - offsets, je.unsqueeze(2) + offsets], dim=2
    )  # [B, T, 2*reach]
    inside = (cand >= 0) & (cand < T)
    cand = cand.clamp(0, max(T - 1, 0))
    is_bg = (lab == 0).gather(1, cand.flatten(1)).reshape(cand.shape)
    in_neg = inside & is_bg & rep.unsqueeze(2)
    flat = (centre.unsqueeze(2) * T + cand).flatten(1)
    s_cand = sim.flatten(1).gather(1, flat).reshape(cand.shape)
    neg_sum = torch.where(in_neg, s_cand, zero).sum(dim=2)
    neg_cnt = in_neg.sum(dim=2).to(dtype)

    keep = rep & (pos_cnt > 0) & (neg_cnt > 0)
    s_pos = pos_sum / pos_cnt.clamp(min=1)
    s_neg = neg_sum / neg_cnt.clamp(min=1)
    n_valid = valid.sum(dim=1, keepdim=True).clamp(min=1).to(dtype)
    delta = (margin_base + margin_scale * (je - js).to(dtype) / n_valid).clamp(max=margin_max)
    per_window = torch.where(keep, torch.relu(s_neg - s_pos + delta), zero)

    n_windows = keep.sum(dim=1)
    has = n_windows > 0
    loss = per_window.sum(dim=1) / n_windows.clamp(min=1).to(dtype)
    loss = torch.where(has, loss, zero)
    loss = _nan_where(bad, loss)
    return loss, has | bad


def boundary_margin_losses(emb, labels, *, radius, margin_max, margin_base, margin_scale):
    """Per-sample boundary margin loss ``L_boun`` (docs/losses.md, section 2).

    Returns ``(loss, has)`` like :func:`clip_pair_losses`; ``has`` is true when the sample
    has at least one window with non-empty ``I_pos`` and ``I_neg`` (or a non-finite clip).
    """
    _, _, loss, has = _losses(emb, labels, None, dict(
        radius=radius, margin_max=margin_max, margin_base=margin_base, margin_scale=margin_scale))
    return loss, has


# --------------------------------------------------------------------------------------
# both from one similarity matrix
# --------------------------------------------------------------------------------------


def _losses(emb, labels, clip_opts, boun_opts):
    """``(clip_loss, clip_has, boun_loss, boun_has)`` from one normalisation and one matrix;
    a loss whose options are None is not computed (None, None)."""
    labels, valid, gt, bad, sim = _prepare(emb, labels)
    out = (None, None)
    if clip_opts is not None:
        out = _clip_from_sim(sim, labels, valid, gt, bad, **clip_opts)
    if boun_opts is not None:
        out = out + _boundary_from_sim(sim, labels, valid, gt, bad, **boun_opts)
    else:
        out = out + (None, None)
    return out


def clip_boundary_losses(emb, labels, *, k, tau, positives, negatives, radius, margin_max,
                         margin_base, margin_scale):
    """``(clip_loss, clip_has, boun_loss, boun_has)`` from one normalisation and one matrix."""
    return _losses(emb, labels, dict(k=k, tau=tau, positives=positives, negatives=negatives),
                   dict(radius=radius, margin_max=margin_max, margin_base=margin_base,
                        margin_scale=margin_scale))


# --------------------------------------------------------------------------------------
# the chosen hard negatives
# --------------------------------------------------------------------------------------


@torch.no_grad()
def hard_negative_pairs(emb, labels, *, k, positives, negatives):
    """The hard negatives ``N_k`` of every sample: LongTensor ``[B, k, 2]``.

    Row ``r`` of sample ``b`` is the pair ``(i, j)``, ``i < j``, of rank ``r`` (larger
    similarity first, ties to the smaller ``i`` then the smaller ``j``); rows past the number
    of candidates are ``-1``.
    """
    labels, valid, gt, bad, sim = _prepare(emb.detach(), labels)
    B, T = labels.shape
    k = int(k)
    out = torch.full((B, k, 2), -1, dtype=torch.long, device=labels.device)
    k_eff = min(k, T * T)
    if k_eff <= 0 or B == 0:
        return out
    _, neg = _pair_masks(labels, valid, gt, positives, negatives)
    sim_flat = sim.flatten(1) + 0.0  # -0.0 -> +0.0, so the sorts below see one zero
    sel = _select_hard(sim_flat, neg.flatten(1), k)

    # The selected set has at most k_eff members: topk finds them (in no particular order
    # among equal values); sort them by flat index, then stable-sort by descending value.
    neg_inf = sim_flat.new_full((), float("-inf"))
    flat_idx = torch.where(sel, sim_flat, neg_inf).topk(k_eff, dim=1).indices
    chosen = sel.gather(1, flat_idx)
    sentinel = T * T
    flat_idx = torch.where(chosen, flat_idx, torch.full_like(flat_idx, sentinel))
    flat_idx, _ = flat_idx.sort(dim=1)
    chosen = flat_idx < sentinel
    values = sim_flat.gather(1, flat_idx.clamp(max=sentinel - 1))
    values = torch.where(chosen, values, neg_inf)
    _, perm = values.sort(dim=1, descending=True, stable=True)
    flat_idx = flat_idx.gather(1, perm)
    chosen = chosen.gather(1, perm)

    pairs = torch.stack([flat_idx // T, flat_idx % T], dim=2)
    pairs = torch.where(chosen.unsqueeze(2), pairs, torch.full_like(pairs, -1))
    out[:, :k_eff] = pairs
    return out


# --------------------------------------------------------------------------------------
# the backend's entry points (see cliptbp_kernels.backends)
# --------------------------------------------------------------------------------------

NAME = "reference"
OPS = None  # no custom ops: autograd differentiates the PyTorch code


def why_not(device: torch.device) -> Optional[str]:
    """The reference runs on any device."""
    return None


class _FirstOrderOnly(torch.autograd.Function):
    """Identity on ``emb`` whose backward cannot be differentiated again: the reference gives
    the same clear error on double backward as the fused backends."""

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


def per_sample(emb: Tensor, labels: Tensor, opts: FusedOptions
               ) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """(L_clip, has L_clip, L_boun, has L_boun) per sample, None for a loss not asked for
    (`opts.want_clip`, `opts.want_boun`); computed in float32 (float64 for float64 input)
    whatever autocast says."""
    emb = _first_order_only(emb)
    labels = labels.to(torch.int64)
    clip = dict(k=opts.k, tau=opts.tau, positives=POSITIVES[opts.positives],
                negatives=NEGATIVES[opts.negatives])
    boun = dict(radius=opts.radius, margin_max=opts.margin_max, margin_base=opts.margin_base,
                margin_scale=opts.margin_scale)
    with torch.autocast(emb.device.type, enabled=False):
        return _losses(emb, labels, clip if opts.want_clip else None,
                       boun if opts.want_boun else None)
