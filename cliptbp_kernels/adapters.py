"""Adapters: turn a baseline's own outputs and targets into the inputs of `ClipTBPLoss`.

Each function returns a dict that goes straight into the criterion::

    from cliptbp_kernels.adapters import univtg_inputs

    crit = ck.ClipTBPLoss(w_clip=3, w_boun=3, w_aux=2)
    ck_in = univtg_inputs(outputs, targets)
    out = crit(**ck_in, basic=losses)        # losses: the baseline's weighted total
    out["loss"].backward()

* :func:`inputs_from_windows` is the generic form: per-clip embeddings, a validity mask and
  the ground-truth windows in seconds give the labels; per-clip (start, end) distances
  predicted from an anchor point of every clip give the spans of the auxiliary loss.
* :func:`univtg_inputs` reads the UniVTG / Video Mamba Suite layout, :func:`flashvtg_inputs`
  the FlashVTG layout; both call :func:`inputs_from_windows`.
* Query-based models (Moment-DETR, TD-DETR, ...) call :func:`inputs_from_windows` with the
  encoder's video memory and no offsets, and take the auxiliary loss on their
  Hungarian-matched spans, see :func:`detr_matched_spans`.

The layouts were read from the baselines' own code; ``docs/integrations.md`` names the files
and lines. Labels follow ``windows_to_labels``; each baseline adapter defaults to the label rule
of its baseline (``rule=``), so that ClipTBP's foreground is the baseline's own. A missing
output that the recipe's model change exports raises :class:`MissingOutputError`, which names
the change.
"""

from __future__ import annotations

import math
import numbers
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .labels import (
    _clip_lengths,
    as_positive_real,
    check_rule,
    merge_windows,
    merged_window_id,
    to_python,
    windows_to_labels,
)

__all__ = [
    "MissingOutputError",
    "RECIPE_AUX_BETA",
    "detr_matched_spans",
    "flashvtg_inputs",
    "inputs_from_windows",
    "univtg_inputs",
]

OFFSET_UNITS = ("clips", "seconds", "normalized")

#: The SmoothL1 threshold of ``L_b_aux`` that the recipes pass (``ClipTBPLoss(aux_beta=...)``),
#: in the adapters' unit, fractions of the video: 0.01 is about one clip of a QVHighlights
#: video (2 s of 150 s). Errors above it get the constant gradient of L1, smaller ones the
#: shrinking one of L2; with the function's own default ``beta=1.0`` every error on this
#: scale would sit deep in the quadratic zone and the term would fade as training goes on.
RECIPE_AUX_BETA = 0.01


class MissingOutputError(KeyError):
    """A tensor the adapter needs is not in the baseline's ``outputs``: the model change of
    the recipe (docs/integrations.md) is missing. The message names the change."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


# --------------------------------------------------------------------------------------------
# small checks
# --------------------------------------------------------------------------------------------

def _require(mapping: object, key: str, where: str) -> object:
    if not isinstance(mapping, Mapping):
        raise TypeError(f"{where} must be a dict; got {type(mapping).__name__}")
    if key not in mapping:
        raise KeyError(f"{where}[{key!r}] is missing")
    value = mapping[key]
    if value is None:
        raise ValueError(f"{where}[{key!r}] is None")
    return value


def _tensor(value: object, name: str, *, floating: bool = False) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(value).__name__}")
    if floating and not value.is_floating_point():
        raise TypeError(f"{name} must be a floating point tensor; got {value.dtype}")
    return value


def _check_shape(t: Tensor, name: str, shape: Tuple[int, ...], layout: str) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {layout} = {tuple(shape)}; got {tuple(t.shape)}")


def _check_device(t: Tensor, name: str, device: torch.device) -> None:
    if t.device != device:
        raise ValueError(f"{name} must be on the device of emb ({device}); got {t.device}")


def _model_output(outputs: object, key: str, default_key: str, missing: str) -> Tensor:
    """``outputs[key]`` as a floating ``[B, T, D]`` tensor. A missing ``default_key`` raises
    :class:`MissingOutputError` with ``missing``, the model change that exports it."""
    if not isinstance(outputs, Mapping):
        raise TypeError(f"outputs must be a dict; got {type(outputs).__name__}")
    if not isinstance(key, str):
        raise TypeError(f"emb_key must be a str; got {type(key).__name__}")
    if key not in outputs:
        if key == default_key:
            raise MissingOutputError(missing)
        raise MissingOutputError(f"outputs[{key!r}] is missing (emb_key={key!r})")
    emb = _tensor(_require(outputs, key, "outputs"), f"outputs[{key!r}]", floating=True)
    if emb.dim() != 3:
        raise ValueError(f"outputs[{key!r}] must have shape [B, T, D]; got {tuple(emb.shape)}")
    return emb


def _is_padding(window: object) -> bool:
    """``[inf, inf]``: the padding row of FlashVTG's ``extract_relevant_windows``."""
    window = to_python(window)
    if not isinstance(window, (list, tuple)) or len(window) != 2:
        return False
    try:
        return all(float(v) == math.inf for v in window)
    except (TypeError, ValueError):
        return False


def _without_padding(windows: Sequence) -> list:
    """Each sample's windows without FlashVTG's ``[inf, inf]`` padding rows (anything else is
    left as it is, for ``windows_to_labels`` to check)."""
    samples = []
    for sample in windows:
        sample = to_python(sample)
        if isinstance(sample, (list, tuple)):
            sample = [w for w in sample if not _is_padding(w)]
        samples.append(sample)
    return samples


def _snap_half(x: float) -> float:
    """Snap to the nearest multiple of 1/2 when float32 round-off is the only difference.

    Window boundaries recovered from float32 normalised values (UniVTG's ``span_labels_nn``)
    are off by ~1e-7 relative; a boundary on a clip centre (a half-integer in clip units)
    would then fall on the wrong side of the centre test.
    """
    r = round(2.0 * x)
    if abs(2.0 * x - r) <= 1e-6 * max(1.0, abs(2.0 * x)):
        return r / 2.0
    return x


# --------------------------------------------------------------------------------------------
# generic
# --------------------------------------------------------------------------------------------

def inputs_from_windows(
    emb: Tensor,
    video_mask: Optional[Tensor],
    windows_sec: Sequence,
    clip_len: Union[float, Sequence[float], Tensor],
    pred_offsets: Optional[Tensor] = None,
    offset_unit: Optional[str] = None,
    *,
    anchor: Union[float, Tensor] = 0.0,
    rule: str = "center",
) -> Dict[str, Tensor]:
    """`ClipTBPLoss` inputs from per-clip embeddings and ground-truth windows in seconds.

    Args:
        emb: ``[B, T, D]`` floating, one embedding per clip: the video tokens after the
            multimodal encoder (returned as is; the gradient of ``L_clip`` / ``L_boun`` flows
            into it).
        video_mask: ``[B, T]`` (bool, int or float; nonzero = a real clip, 0 = padding) on the
            device of ``emb``, or ``None`` when every clip is real. Padding may sit anywhere.
        windows_sec: one entry per sample, each a (possibly empty) list of ``[start, end]``
            pairs in seconds (lists, tuples, NumPy arrays or tensors, e.g. the dataset's
            ``relevant_windows``). Rows ``[inf, inf]`` (FlashVTG's padding) are dropped.
        clip_len: clip length in seconds; clip ``i`` (row ``i`` of ``emb``) covers
            ``[i * clip_len, (i + 1) * clip_len)``. One number, or one per sample (a sequence
            or 1-D tensor) where a data set pools long videos to a fixed number of clips
            (TD-DETR: ``clip_len * n / max_v_l`` for a video of ``n > max_v_l`` clips,
            the length its data set returns per sample).
        pred_offsets: optional ``[B, T, 2]`` floating, on the device of ``emb``: per clip the
            predicted distances ``(d_start, d_end) >= 0`` from the clip's anchor point to the
            predicted start and end, in ``offset_unit``; the predicted window of clip ``i``
            is ``[a_i - d_start, a_i + d_end]``. The gradient of ``L_b_aux`` flows into it.
        offset_unit: unit of ``pred_offsets``, of a tensor ``anchor`` and of the returned
            spans, required with ``pred_offsets`` (there is no default: offsets in another
            unit would give a silently wrong auxiliary loss): ``"normalized"`` (fraction of
            the sample's video length ``n_b * clip_len``, ``n_b`` = its number of real clips;
            the unit of every adapter, in which the recipes' ``aux_beta`` is chosen),
            ``"clips"`` (clip lengths) or ``"seconds"``.
        anchor: the anchor ``a_i`` of clip ``i``. A number ``c`` puts it at ``i + c`` clips
            (``0.0``: the clip's start, as FlashVTG; ``0.5``: its centre). A tensor
            broadcastable to ``[B, T]`` gives it directly, in ``offset_unit``.
        rule: the label rule of ``windows_to_labels``: ``"center"`` (default, the
            specification's; QVHighlights' ``relevant_clip_ids``), ``"univtg"`` or ``"floor"``
            (the baselines' own foreground, see docs/losses.md, section 6).

    Returns:
        A dict for ``ClipTBPLoss.forward``:

        * ``"emb"``: ``emb`` itself.
        * ``"labels"``: LongTensor ``[B, T]`` on the device of ``emb``, from
          ``windows_to_labels(windows_sec, T, clip_len, rule=rule)``: ``0`` background,
          ``w >= 1`` the ``w``-th merged window (start order), ``-1`` where ``video_mask``
          is 0.
        * only when ``pred_offsets`` is given:
          ``"pred_spans"`` ``[B, T, 2]`` = ``(a_i - d_start, a_i + d_end)``;
          ``"target_spans"`` ``[B, T, 2]`` = the (merged) window of the clip's label, both as
          absolute ``(start, end)`` in ``offset_unit`` with the dtype of ``pred_offsets``
          (0 where no window); ``"span_mask"`` ``[B, T]`` bool = ``labels >= 1``.

        Without ``pred_offsets`` (query-based models) pass your matched spans yourself:
        ``crit(**out, pred_spans=p, target_spans=t)``, see :func:`detr_matched_spans`.

    Builds the labels on the CPU: a few small host-device copies (``video_mask``, labels).
    """
    return _from_windows(emb, video_mask, windows_sec, clip_len, pred_offsets, offset_unit,
                         anchor, rule, None)


def _from_windows(emb, video_mask, windows_sec, clip_len, pred_offsets, offset_unit, anchor,
                  rule, label_clip_len) -> Dict[str, Tensor]:
    """:func:`inputs_from_windows`; ``label_clip_len`` (one per sample), when given, is the
    clip length of the labels only (FlashVTG labels with ``duration / n`` and regresses with
    its fixed clip length)."""
    emb = _tensor(emb, "emb", floating=True)
    if emb.dim() != 3:
        raise ValueError(f"emb must have shape [B, T, D]; got {tuple(emb.shape)}")
    B, T = int(emb.shape[0]), int(emb.shape[1])
    device = emb.device

    if video_mask is None:
        valid = torch.ones((B, T), dtype=torch.bool, device=device)
    else:
        video_mask = _tensor(video_mask, "video_mask")
        _check_shape(video_mask, "video_mask", (B, T), "[B, T] (emb.shape[:2])")
        _check_device(video_mask, "video_mask", device)
        valid = video_mask != 0

    lengths = _clip_lengths(clip_len, B)
    check_rule(rule)

    windows_sec = to_python(windows_sec)
    if isinstance(windows_sec, (str, bytes)) or not isinstance(windows_sec, (list, tuple)):
        raise TypeError(
            "windows_sec must be a list with one list of [start, end] pairs (seconds) per "
            f"sample; got {type(windows_sec).__name__}"
        )
    if len(windows_sec) != B:
        raise ValueError(
            f"windows_sec must have one entry per sample ({B}); got {len(windows_sec)}"
        )
    samples = _without_padding(windows_sec)

    if B:
        labels = windows_to_labels(samples, T, lengths if label_clip_len is None
                                   else label_clip_len, rule=rule)   # validates the windows
    else:
        labels = torch.empty((0, T), dtype=torch.long)
    return _build(emb, valid, samples, lengths, labels, pred_offsets, offset_unit, anchor)


def _build(emb: Tensor, valid: Tensor, samples: Sequence, lengths: Sequence[float],
           labels: Tensor, pred_offsets: Optional[Tensor], offset_unit: str,
           anchor: Union[float, Tensor]) -> Dict[str, Tensor]:
    """The adapters' common tail: ``labels`` (CPU, ``[B, T]``, windows numbered in start
    order) masked by ``valid``, and the spans of ``L_b_aux`` from the windows in seconds."""
    B, T = int(emb.shape[0]), int(emb.shape[1])
    device = emb.device
    labels = labels.to(device).masked_fill(~valid, -1)
    out: Dict[str, Tensor] = {"emb": emb, "labels": labels}
    if pred_offsets is None:
        return out

    pred_offsets = _tensor(pred_offsets, "pred_offsets", floating=True)
    _check_shape(pred_offsets, "pred_offsets", (B, T, 2), "[B, T, 2] (d_start, d_end)")
    _check_device(pred_offsets, "pred_offsets", device)
    if offset_unit is None:
        raise ValueError(
            "offset_unit is required with pred_offsets: the unit of the predicted distances, "
            f"one of {', '.join(repr(u) for u in OFFSET_UNITS)} ('normalized', fractions of "
            "the video, is the unit of the adapters and of RECIPE_AUX_BETA)"
        )
    if not isinstance(offset_unit, str) or offset_unit not in OFFSET_UNITS:
        raise ValueError(
            f"offset_unit must be one of {', '.join(repr(u) for u in OFFSET_UNITS)}; "
            f"got {offset_unit!r}"
        )
    dtype = pred_offsets.dtype

    # scale[b]: one clip length in offset_unit
    if offset_unit == "clips":
        scale = torch.ones(B, dtype=torch.float64)
    elif offset_unit == "seconds":
        scale = torch.tensor(list(lengths), dtype=torch.float64).reshape(B)
    else:
        n_valid = valid.sum(dim=1).cpu().to(torch.float64)
        scale = 1.0 / n_valid.clamp(min=1.0)

    if isinstance(anchor, Tensor):
        if not anchor.is_floating_point():
            anchor = anchor.to(dtype)
        try:
            a = torch.broadcast_to(anchor, (B, T))
        except RuntimeError:
            raise ValueError(
                f"anchor must be broadcastable to [B, T] = {(B, T)}; got {tuple(anchor.shape)}"
            ) from None
        _check_device(a, "anchor", device)
        a = a.to(dtype)
    elif isinstance(anchor, numbers.Real) and not isinstance(anchor, bool):
        if not math.isfinite(float(anchor)):
            raise ValueError(f"anchor must be finite; got {anchor}")
        pos = torch.arange(T, dtype=torch.float64) + float(anchor)
        a = (pos[None, :] * scale[:, None]).to(device=device, dtype=dtype)
    else:
        raise TypeError(f"anchor must be a real number or a tensor; got {type(anchor).__name__}")

    pred_spans = torch.stack((a - pred_offsets[..., 0], a + pred_offsets[..., 1]), dim=-1)

    # table[b, w] = merged window w (w >= 1) of sample b, in offset_unit; row 0 unused
    merged = [merge_windows([(float(st), float(ed)) for st, ed in (to_python(w) for w in s)])
              for s in samples]
    width = max((len(m) for m in merged), default=0) + 1
    table = torch.zeros((B, width, 2), dtype=torch.float64)
    for b, m in enumerate(merged):
        if m:
            table[b, 1:len(m) + 1] = torch.tensor(m, dtype=torch.float64) / lengths[b] * scale[b]
    ids = labels.clamp(min=0).cpu()
    target = torch.gather(table, 1, ids.unsqueeze(-1).expand(B, T, 2))
    out["pred_spans"] = pred_spans
    out["target_spans"] = target.to(device=device, dtype=dtype)
    out["span_mask"] = labels >= 1
    return out


# --------------------------------------------------------------------------------------------
# UniVTG / Video Mamba Suite
# --------------------------------------------------------------------------------------------

def univtg_inputs(
    outputs: Mapping[str, Tensor],
    targets: Mapping[str, Tensor],
    *,
    emb_key: str = "vid_mem",
    rule: str = "univtg",
) -> Dict[str, Tensor]:
    """`ClipTBPLoss` inputs from UniVTG's (and Video Mamba Suite's) ``outputs`` / ``targets``.

    The dicts that UniVTG's ``SetCriterion.forward(outputs, targets)`` receives
    (``model/univtg.py``; targets from ``main/dataset.py: prepare_batch_inputs_mr``):

    * ``outputs["vid_mem"]`` ``[B, T, D]``: the encoder's video tokens. UniVTG does not return
      them: the recipe's one-line model change adds ``out["vid_mem"] = vid_mem`` in
      ``Model.forward`` (docs/integrations.md). Without it this function raises
      :class:`MissingOutputError`. UniVTG's ``outputs["vid_mem_proj"]`` is the projected
      *input* ``src_vid`` (before the encoder); ``emb_key="vid_mem_proj"`` uses it on purpose.
    * ``outputs["pred_spans"]`` ``[B, T, 2]``: per clip ``sigmoid(.) * (-1, +1)``, i.e.
      ``(-d_start, +d_end)`` in units of the video length; UniVTG's own span loss compares
      ``targets["timestamp"] + outputs["pred_spans"]`` with ``targets["span_labels_nn"]``.
    * ``targets["timestamp"]`` ``[B, T, 2]``: the anchor of clip ``i``, both columns
      ``(i + clip_len / 2) / n`` (``n`` = the sample's number of clips; for ``clip_len = 2``
      this is the clip's *end*, not its centre).
    * ``targets["span_labels_nn"]`` ``[B, T, 2]``: per clip the GT window containing its
      anchor as ``(start, end) / (n * clip_len)`` (normalised ``xx``, not ``cxw``); 0 rows
      elsewhere and on padding.
    * ``targets["timestamp_window"]`` ``[B, T]``: UniVTG's foreground, 1 where the anchor lies
      in a GT window.
    * ``targets["timestamp_mask"]`` ``[B, T]``: 1 on real clips, 0 on padding
      (``outputs["src_vid_mask"]`` is the same and is used when the former is absent).

    The GT windows are the distinct ``span_labels_nn`` rows of the clips with
    ``timestamp_window = 1``, taken back to clip units (``x n``), numbered in start order
    (overlapping ones merged).

    Args:
        outputs, targets: as above.
        emb_key: the key of ``outputs`` used as ``emb`` (default ``"vid_mem"``).
        rule: ``"univtg"`` (default): the labels' foreground is UniVTG's own
            ``timestamp_window`` (a window ``[4 s, 10 s]`` with 2 s clips: clips 1-4, the
            anchors 4, 6, 8, 10 s); each foreground clip takes the id of its
            ``span_labels_nn`` window. ``"center"`` or ``"floor"``: the windows are labelled
            again with that rule of ``windows_to_labels`` (``"center"``: clips 2-4).

    Returns:
        ``dict(emb, labels, pred_spans, target_spans, span_mask)`` as
        :func:`inputs_from_windows`; ``pred_spans`` = ``timestamp + pred_spans`` (UniVTG's own
        ``src_spans``), ``target_spans`` = the clip's GT window, ``span_mask`` = ``labels >= 1``;
        spans in fractions of the video (UniVTG's own unit, and that of every adapter).
    """
    emb = _model_output(
        outputs, emb_key, "vid_mem",
        "outputs['vid_mem'] is missing: UniVTG's Model.forward does not return the encoder's "
        "video tokens. Add `out[\"vid_mem\"] = vid_mem` after the line "
        "`out = {'pred_logits': ..., 'src_vid_mask': src_vid_mask}` of Model.forward "
        "(model/univtg.py; model/univtg_mamba.py in Video Mamba Suite), see "
        "docs/integrations.md. emb_key='vid_mem_proj' uses the projected input features "
        "instead (before the encoder).")
    check_rule(rule)
    B, T = int(emb.shape[0]), int(emb.shape[1])
    pred = _tensor(_require(outputs, "pred_spans", "outputs"), "outputs['pred_spans']",
                   floating=True)
    _check_shape(pred, "outputs['pred_spans']", (B, T, 2), "[B, T, 2]")
    if isinstance(targets, Mapping) and "timestamp_mask" in targets:
        mask_name, mask = "targets['timestamp_mask']", targets["timestamp_mask"]
    elif "src_vid_mask" in outputs:
        mask_name, mask = "outputs['src_vid_mask']", outputs["src_vid_mask"]
    else:
        _require(targets, "timestamp_mask", "targets")  # raises a TypeError for a non-dict
        raise KeyError("targets['timestamp_mask'] (or outputs['src_vid_mask']) is missing")
    mask = _tensor(mask, mask_name)
    _check_shape(mask, mask_name, (B, T), "[B, T]")
    nn_win = _tensor(_require(targets, "span_labels_nn", "targets"), "targets['span_labels_nn']",
                     floating=True)
    _check_shape(nn_win, "targets['span_labels_nn']", (B, T, 2), "[B, T, 2] (start, end)")
    fg = _tensor(_require(targets, "timestamp_window", "targets"), "targets['timestamp_window']")
    _check_shape(fg, "targets['timestamp_window']", (B, T), "[B, T]")
    stamp = _tensor(_require(targets, "timestamp", "targets"), "targets['timestamp']",
                    floating=True)
    _check_shape(stamp, "targets['timestamp']", (B, T, 2), "[B, T, 2]")
    for t, name in ((pred, "outputs['pred_spans']"), (mask, mask_name),
                    (stamp, "targets['timestamp']")):
        _check_device(t, name, emb.device)

    valid = mask != 0
    n_valid = valid.sum(dim=1).cpu().tolist()
    rows_fg = ((fg != 0) & valid).cpu()
    nn_cpu = nn_win.detach().cpu().to(torch.float64)
    windows_clips = []               # per sample: distinct windows, clip units
    own = torch.zeros((B, T), dtype=torch.long)   # rule "univtg": UniVTG's own foreground
    for b in range(B):
        clip_ids = torch.nonzero(rows_fg[b]).flatten().tolist()
        per_clip = {}
        for i in clip_ids:
            st, ed = nn_cpu[b, i].tolist()
            if st == 0.0 and ed == 0.0:
                continue            # UniVTG's "no window" row
            per_clip[i] = (_snap_half(st * n_valid[b]), _snap_half(ed * n_valid[b]))
        sample = sorted(set(per_clip.values()))
        windows_clips.append([list(w) for w in sample])
        merged = merge_windows(sample)
        for i, (st, ed) in per_clip.items():
            own[b, i] = merged_window_id(merged, st, ed)

    if rule == "univtg":
        labels = own
    else:
        labels = windows_to_labels(windows_clips, T, 1.0, rule=rule) if B else own

    offsets = torch.stack((-pred[..., 0], pred[..., 1]), dim=-1)     # (d_start, d_end)
    # clip units as "seconds" with a clip length of 1: windows / n == normalised units
    return _build(emb, valid, windows_clips, [1.0] * B, labels, offsets, "normalized",
                  stamp[..., 0])


# --------------------------------------------------------------------------------------------
# FlashVTG
# --------------------------------------------------------------------------------------------

def flashvtg_inputs(
    outputs: Mapping[str, Tensor],
    targets: Mapping[str, object],
    *,
    clip_len: float,
    emb_key: str = "video_emb_pre_relu",
    rule: str = "auto",
) -> Dict[str, Tensor]:
    """`ClipTBPLoss` inputs from FlashVTG's training-mode ``outputs`` and ``targets``.

    Layout (``FlashVTG/model.py``, ``blocks/generator.py``, ``blocks/loss.py``,
    ``FlashVTG/train.py``):

    * ``outputs["video_emb_pre_relu"]`` ``[B, T, D]``: the transformer's video tokens. FlashVTG
      returns ``outputs["video_emb"]``, but its pyramid's stride-1 level applies an in-place
      ReLU to that very tensor, so ``video_emb`` is ``relu(tokens)`` (about half zeros, every
      cosine similarity ``>= 0``). The recipe's model change (docs/integrations.md) keeps a
      copy before the pyramid and exports it; without it this function raises
      :class:`MissingOutputError`. ``emb_key="video_emb"`` uses the rectified tokens on
      purpose.
    * ``outputs["video_msk"]`` ``[B, T]`` int: 1 on real clips.
    * ``outputs["out_coord"]`` ``[B, N, 2]``: the pyramid levels concatenated (strides
      ``(1, 2, 4, 8)``: ``N = T + T/2 + ...``); per point the distances
      ``(d_start, d_end) > 0`` (``exp(.) * coef``) in units of the level's stride, measured
      from the point's position ``p`` = its first clip (``PointGenerator`` without offset):
      the predicted window is ``[p - d_start * stride, p + d_end * stride]`` clips.
    * ``outputs["point"]`` ``[N, 4]``: per point its position, regression range and stride
      (``blocks/generator.py``), exported in training mode.
    * ``targets["label"]``: the batch's metadata list (``targets["label"] = batch[0]`` in
      ``train.py``), each with ``"relevant_windows"`` in seconds (and ``"duration"``);
      FlashVTG turns them into clips with ``targets["fps"] = 1 / clip_length``.

    Args:
        outputs, targets: as above (``video_msk`` and ``out_coord`` exist only in training
            mode).
        clip_len: the clip length in seconds (FlashVTG's ``--clip_length``).
        emb_key: the key of ``outputs`` used as ``emb`` (default ``"video_emb_pre_relu"``).
        rule: the labels' rule. ``"auto"`` (default) follows FlashVTG's own foreground
            (``saliency_all_labels``, ``start_end_dataset.py``): QVHighlights' clip ids, i.e.
            ``"center"``, when every sample's metadata has ``"relevant_clip_ids"``; else the
            floor rule of its Charades-STA / TACoS branch with FlashVTG's per-sample clip
            length ``duration / n`` (``n`` = the sample's real clips). ``"center"``,
            ``"univtg"``, ``"floor"``: that rule with ``clip_len``.

    Returns:
        ``dict(emb, labels, pred_spans, target_spans, span_mask)``; ``emb`` and ``labels`` as
        :func:`inputs_from_windows` (labels on the stride-1 clips). The spans cover every
        point of every pyramid level (``[B, N, 2]``, ``span_mask`` ``[B, N]``) and follow
        FlashVTG's own regression (``BundleLoss.get_target``): a point counts where FlashVTG
        regresses it (centre sampling with radius ``1.5 * stride``, the level's regression
        range, the shortest window when several qualify), its predicted window is
        ``[p - d_start * stride, p + d_end * stride]`` and its target the window it is
        assigned, both divided by the sample's number of real clips: **fractions of the
        video**, the unit of every adapter (docs/integrations.md, "One unit").
    """
    emb = _model_output(
        outputs, emb_key, "video_emb_pre_relu",
        "outputs['video_emb_pre_relu'] is missing: FlashVTG's outputs['video_emb'] is "
        "rectified in place by its pyramid (relu(tokens)). In FlashVTG/model.py, "
        "Model.forward, add `video_emb_pre_relu = video_emb.clone()` after "
        "`video_msk = (~video_msk).int()` (before `self.pyramid(...)`) and "
        "`output[\"video_emb_pre_relu\"] = video_emb_pre_relu` after "
        "`output[\"video_emb\"] = video_emb`, see docs/integrations.md. "
        "emb_key='video_emb' uses the rectified tokens instead.")
    check_rule(rule, extra=("auto",))
    clip_len = as_positive_real(clip_len, "clip_len")   # one number: FlashVTG's --clip_length
    B, T = int(emb.shape[0]), int(emb.shape[1])
    msk = _tensor(_require(outputs, "video_msk", "outputs"), "outputs['video_msk']")
    _check_shape(msk, "outputs['video_msk']", (B, T), "[B, T]")
    coord = _tensor(_require(outputs, "out_coord", "outputs"), "outputs['out_coord']",
                    floating=True)
    if coord.dim() != 3 or coord.shape[0] != B or coord.shape[2] != 2 or coord.shape[1] < T:
        raise ValueError(
            "outputs['out_coord'] must have shape [B, N, 2] with N >= T (the stride-1 level "
            f"first); got {tuple(coord.shape)} for B = {B}, T = {T}"
        )
    meta = _require(targets, "label", "targets")
    if isinstance(meta, (str, bytes, Mapping)) or not isinstance(meta, Sequence):
        raise TypeError("targets['label'] must be the list of per-sample metadata dicts; got "
                        f"{type(meta).__name__}")
    if len(meta) != B:
        raise ValueError(f"targets['label'] must have one entry per sample ({B}); got {len(meta)}")
    windows = [_require(m, "relevant_windows", f"targets['label'][{b}]")
               for b, m in enumerate(meta)]
    point = _tensor(_require(outputs, "point", "outputs"), "outputs['point']", floating=True)
    if point.dim() != 2 or point.shape[1] != 4 or point.shape[0] != coord.shape[1]:
        raise ValueError(
            "outputs['point'] must have shape [N, 4] (position, reg_min, reg_max, stride) with "
            f"N = out_coord.shape[1] = {coord.shape[1]}; got {tuple(point.shape)}")
    _check_device(msk, "outputs['video_msk']", emb.device)
    valid = msk != 0
    n_valid = valid.sum(dim=1).cpu().tolist()
    label_lengths = None
    if rule == "auto":
        if all("relevant_clip_ids" in m for m in meta):
            rule = "center"
        else:
            # FlashVTG's Charades-STA / TACoS branch: the floor rule with duration / n
            rule, label_lengths = "floor", []
            for b, (m, n) in enumerate(zip(meta, n_valid)):
                d = as_positive_real(_require(m, "duration", f"targets['label'][{b}]"),
                                     f"targets['label'][{b}]['duration'] (seconds)")
                label_lengths.append(d / max(n, 1))
    out = _from_windows(emb, msk, windows, clip_len, None, "clips", 0.0, rule, label_lengths)
    pred, target, positive = _flashvtg_spans(point, coord, _without_padding(windows), clip_len,
                                             n_valid)
    out.update(pred_spans=pred, target_spans=target, span_mask=positive)
    return out


def _flashvtg_spans(point: Tensor, coord: Tensor, windows: Sequence, clip_len: float,
                    n_valid: Sequence[int], radius: float = 1.5
                    ) -> Tuple[Tensor, Tensor, Tensor]:
    """FlashVTG's own positive points and regression targets (``BundleLoss.get_target``), as
    spans in fractions of the video.

    Point ``j`` (position ``p``, regression range ``[lo, hi]``, stride ``s``) is a positive of
    GT window ``[st, ed]`` (clips: seconds / ``clip_len``, in float32 as FlashVTG computes
    them) when ``p`` lies in the window's centre region ``[max(c - 1.5 s, st), min(c + 1.5 s,
    ed)]`` and ``max(p - st, ed - p)`` lies in ``[lo, hi]``; of several such windows it takes
    the shortest (the first on ties). Its predicted window is ``[p - d_start s, p + d_end s]``
    clips. Both are divided by the sample's number of real clips.
    """
    B, N = int(coord.shape[0]), int(coord.shape[1])
    device = coord.device
    pt = point.detach().to(device=device, dtype=torch.float32)
    pos, lo, hi, stride = pt[:, 0], pt[:, 1], pt[:, 2], pt[:, 3]
    fps = torch.tensor(1.0 / clip_len, dtype=torch.float32)
    target = torch.zeros((B, N, 2), dtype=torch.float32, device=device)
    positive = torch.zeros((B, N), dtype=torch.bool, device=device)
    for b, sample in enumerate(windows):
        if not sample:
            continue
        gt = (torch.tensor([[float(st), float(ed)] for st, ed in sample], dtype=torch.float32)
              * fps).to(device)
        st, ed = gt[:, 0][None], gt[:, 1][None]
        c = (st + ed) / 2
        t_min = c - stride[:, None] * radius
        t_max = c + stride[:, None] * radius
        in_centre = ((pos[:, None] - torch.maximum(t_min, st)) >= 0) & \
                    ((torch.minimum(t_max, ed) - pos[:, None]) >= 0)
        reach = torch.maximum(pos[:, None] - st, ed - pos[:, None])
        in_range = (reach >= lo[:, None]) & (reach <= hi[:, None])
        lens = (ed - st).expand(N, -1).masked_fill(~(in_centre & in_range), math.inf)
        min_len, idx = lens.min(dim=1)
        positive[b] = torch.isfinite(min_len)
        target[b] = gt[idx]
    scale = 1.0 / torch.tensor([max(n, 1) for n in n_valid], dtype=torch.float32, device=device)
    p = pos.to(coord.dtype)[None, :]
    s = stride.to(coord.dtype)[None, :]
    pred = torch.stack((p - coord[..., 0] * s, p + coord[..., 1] * s), dim=-1)
    pred = pred * scale.to(coord.dtype)[:, None, None]
    target = (target * scale[:, None, None]).to(coord.dtype)
    return pred, target.masked_fill(~positive[..., None], 0.0), positive


# --------------------------------------------------------------------------------------------
# query-based models
# --------------------------------------------------------------------------------------------

def detr_matched_spans(
    pred_spans: Tensor,
    span_labels: Sequence[Mapping[str, Tensor]],
    indices: Sequence[Tuple[Tensor, Tensor]],
) -> Tuple[Tensor, Tensor]:
    """The Hungarian-matched (prediction, target) pairs of a DETR-style criterion, as ``xx``.

    Args:
        pred_spans: ``outputs["pred_spans"]`` ``[B, Q, 2]``, normalised ``(center, width)``
            (Moment-DETR / TD-DETR with ``span_loss_type="l1"``).
        span_labels: ``targets["span_labels"]``, one ``dict(spans=[n_b, 2])`` per sample in
            the same normalised ``(center, width)``.
        indices: the matcher's output, one ``(query_idx, target_idx)`` pair per sample
            (``criterion.matcher(outputs_without_aux, targets)``).

    Returns:
        ``(pred, target)``, each ``[N, 2]`` as normalised ``(start, end)``, ``N`` = number of
        matched pairs; pass them as ``pred_spans`` / ``target_spans`` (no ``span_mask``).
    """
    pred_spans = _tensor(pred_spans, "pred_spans", floating=True)
    if pred_spans.dim() != 3 or pred_spans.shape[2] != 2:
        raise ValueError("pred_spans must have shape [B, Q, 2] (center, width); got "
                         f"{tuple(pred_spans.shape)}")
    B = int(pred_spans.shape[0])
    if len(span_labels) != B or len(indices) != B:
        raise ValueError(f"span_labels and indices must have one entry per sample ({B}); got "
                         f"{len(span_labels)} and {len(indices)}")
    src, tgt = [], []
    for b, ((qi, ti), lab) in enumerate(zip(indices, span_labels)):
        spans = _tensor(_require(lab, "spans", f"span_labels[{b}]"), f"span_labels[{b}]['spans']")
        qi = torch.as_tensor(qi, dtype=torch.long, device=pred_spans.device)
        ti = torch.as_tensor(ti, dtype=torch.long, device=spans.device)
        src.append(pred_spans[b, qi])
        tgt.append(spans[ti].to(device=pred_spans.device, dtype=pred_spans.dtype))
    if src:
        src_t, tgt_t = torch.cat(src), torch.cat(tgt)
    else:
        src_t = pred_spans.new_zeros((0, 2))
        tgt_t = pred_spans.new_zeros((0, 2))

    def xx(s: Tensor) -> Tensor:
        return torch.stack((s[:, 0] - 0.5 * s[:, 1], s[:, 0] + 0.5 * s[:, 1]), dim=-1)

    return xx(src_t), xx(tgt_t)
