"""A compact snippet-level moment retrieval model (UniVTG / FlashVTG-like) and its losses.

Video clip features and query token features are projected to one width, encoded jointly by
a small transformer encoder, and every clip predicts

* a foreground logit (is the clip inside an answer window?),
* the distances, in clips, from its centre to the start and to the end of its window,
* a saliency score (how well it matches the query).

The encoded video tokens are the `emb` of the ClipTBP losses. `basic_losses` gives the
model's own training losses; `predict_windows` turns the outputs into ranked windows.
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..distributed import global_means
from ..labels import merge_windows


def sinusoidal_positions(T: int, dim: int, device=None) -> Tensor:
    """[T, dim] fixed sinusoidal position encodings (any length)."""
    pos = torch.arange(T, dtype=torch.float32, device=device)[:, None]
    i = torch.arange(0, dim, 2, dtype=torch.float32, device=device)
    freq = torch.exp(-math.log(10000.0) * i / dim)
    pe = torch.zeros(T, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return pe


OFFSET_HEADS = ("mlp", "tcn")


class TemporalConvHead(nn.Module):
    """Per-clip outputs from dilated 1-D convolutions over the clips (kernel 3, dilations 1,
    2, 4, 8, 16, residual, GELU; receptive field 63 clips), padding clips zeroed before each
    layer. A clip's distance to its window's edges is where the content changes along time,
    which attention (softmax-normalised: it cannot count clips) finds hard to read."""

    def __init__(self, hidden: int, out: int, dilations: Sequence[int] = (1, 2, 4, 8, 16)
                 ) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(hidden, hidden, 3, padding=d, dilation=d)
                                   for d in dilations)
        self.out = nn.Linear(hidden, out)

    def forward(self, h: Tensor, mask: Tensor) -> Tensor:
        m = mask.unsqueeze(1).to(h.dtype)          # [B, 1, T]
        x = h.transpose(1, 2) * m
        for conv in self.convs:
            x = (x + F.gelu(conv(x))) * m
        return self.out(x.transpose(1, 2))


class MomentModel(nn.Module):
    """Joint video-text transformer encoder with per-clip heads.

    Args:
        video_dim, text_dim: input feature widths.
        hidden: model width; layers, heads: encoder depth and attention heads.
        offset_scale: the offsets are ``offset_scale * softplus(head)`` clips. Adam moves a
            weight by at most about the learning rate per step, so an output that must reach
            tens of clips from a unit-scale head takes many steps; a scale near a typical
            half-window puts the head's unit scale where the targets are.
        offset_head: ``"mlp"`` (per clip) or ``"tcn"`` (dilated temporal convolutions over
            the encoded clips, receptive field 63 clips, see :class:`TemporalConvHead`).
    """

    def __init__(self, video_dim: int, text_dim: int, hidden: int = 128, layers: int = 2,
                 heads: int = 4, dropout: float = 0.1, offset_scale: float = 1.0,
                 offset_head: str = "mlp") -> None:
        super().__init__()
        if isinstance(offset_scale, bool) or not isinstance(offset_scale, (int, float)) \
                or not offset_scale > 0:
            raise ValueError(f"offset_scale must be a number > 0, got {offset_scale!r}")
        self.hidden = hidden
        self.offset_scale = float(offset_scale)
        self.video_proj = nn.Sequential(nn.LayerNorm(video_dim), nn.Linear(video_dim, hidden),
                                        nn.GELU(), nn.Dropout(dropout))
        self.text_proj = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, hidden),
                                       nn.GELU(), nn.Dropout(dropout))
        self.type_emb = nn.Embedding(2, hidden)
        layer = nn.TransformerEncoderLayer(hidden, heads, 4 * hidden, dropout, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)
        self.fg_head = nn.Linear(hidden, 1)
        if offset_head not in OFFSET_HEADS:
            raise ValueError(f"offset_head must be one of {OFFSET_HEADS}, got {offset_head!r}")
        if offset_head == "tcn":
            self.offset_head = TemporalConvHead(hidden, 2)
        else:
            self.offset_head = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(),
                                             nn.Linear(hidden, 2))
        self.saliency_head = nn.Linear(hidden, 1)

    def forward(self, video: Tensor, video_mask: Tensor, text: Tensor,
                text_mask: Tensor) -> Dict[str, Tensor]:
        B, T, _ = video.shape
        v = self.video_proj(video) + sinusoidal_positions(T, self.hidden, video.device)
        v = v + self.type_emb.weight[0]
        t = self.text_proj(text) + self.type_emb.weight[1]
        x = torch.cat([v, t], dim=1)
        pad = ~torch.cat([video_mask, text_mask], dim=1)
        h = self.norm(self.encoder(x, src_key_padding_mask=pad))
        hv = h[:, :T]
        return {
            "video_emb": hv,
            "fg_logits": self.fg_head(hv).squeeze(-1),
            # (to start, to end), in clips, >= 0
            "offsets": self.offset_scale * F.softplus(
                self.offset_head(hv, video_mask) if isinstance(self.offset_head,
                                                               TemporalConvHead)
                else self.offset_head(hv)),
            "saliency": self.saliency_head(hv).squeeze(-1),
        }


def clip_spans(offsets: Tensor) -> Tensor:
    """Per-clip predicted (start, end) in clip units: centre -+ the offsets. [B, T, 2]."""
    T = offsets.shape[1]
    centre = torch.arange(T, device=offsets.device, dtype=offsets.dtype) + 0.5
    return torch.stack([centre - offsets[..., 0], centre + offsets[..., 1]], dim=-1)


def target_spans(labels: Tensor, windows: List[List[List[float]]], clip_len: float) -> Tensor:
    """(start, end) in clip units of the window of every GT clip ([B, T, 2], 0 elsewhere).

    Labels number the merged windows 1, 2, ... in start order (windows_to_labels), so the span
    of window w is the extent of the clips labelled w, widened to the window's seconds.
    """
    B, T = labels.shape
    out = torch.zeros(B, T, 2)
    for b in range(B):
        merged = merge_windows([(float(st), float(ed)) for st, ed in windows[b]])
        for w, (st, ed) in enumerate(merged, start=1):
            sel = labels[b] == w
            if sel.any():
                out[b, sel, 0] = st / clip_len
                out[b, sel, 1] = ed / clip_len
    return out.to(labels.device)


def span_iou(a: Tensor, b: Tensor) -> Tensor:
    inter = (torch.minimum(a[..., 1], b[..., 1]) - torch.maximum(a[..., 0], b[..., 0])).clamp_min(0)
    union = (a[..., 1] - a[..., 0]) + (b[..., 1] - b[..., 0]) - inter
    return inter / union.clamp_min(1e-6)


def normalized_spans(spans: Tensor, num_clips: Tensor) -> Tensor:
    """Spans in clip units divided by each video's length: fractions of the video, the unit
    of the span losses (so long and short videos weigh alike)."""
    return spans / num_clips.to(spans.dtype).clamp_min(1).view(-1, 1, 1)


SPAN_UNITS = ("normalized", "clips")


def basic_losses(out: Dict[str, Tensor], labels: Tensor, spans_target: Tensor,
                 saliency: Tensor, span_unit: str = "normalized", w_span: float = 1.0,
                 w_iou: float = 1.0, process_group=None) -> Dict[str, Tensor]:
    """The model's own losses: foreground BCE, span L1 + IoU on foreground clips, and a
    saliency ranking loss (answer clips above the other valid clips).

    `spans_target` (clip units) and the spans derived from the offsets are compared in
    `span_unit`: ``"normalized"`` (fractions of the video) or ``"clips"``. `loss_span` and
    `loss_iou` come out multiplied by `w_span` and `w_iou` (the dict is the model's own,
    weighted loss). Each term is a mean (over valid clips, foreground clips, saliency pairs);
    with `process_group`, the mean over every rank's batch, from one all-reduce, with the
    gradient scaled for DDP's average (cliptbp_kernels.distributed.global_means)."""
    if span_unit not in SPAN_UNITS:
        raise ValueError(f"span_unit must be one of {SPAN_UNITS}, got {span_unit!r}")
    valid = labels >= 0
    fg = labels >= 1
    vf = valid.float()
    bce = F.binary_cross_entropy_with_logits(out["fg_logits"], fg.float(), reduction="none")

    num_clips = valid.sum(1)
    spans = clip_spans(out["offsets"])
    if span_unit == "normalized":
        spans = normalized_spans(spans, num_clips)
        spans_target = normalized_spans(spans_target, num_clips)
    fgf = fg.float()
    l1 = (spans - spans_target).abs().sum(-1)

    # saliency: every (answer clip, other valid clip) pair of a sample, softplus margin
    sal = out["saliency"]
    neg = valid & ~fg
    diff = sal.unsqueeze(2) - sal.unsqueeze(1)  # [B, T(pos), T(neg)]
    pair = fg.unsqueeze(2) & neg.unsqueeze(1)
    terms = {"loss_fg": ((bce * vf).sum(), vf.sum()),
             "loss_span": (w_span * (l1 * fgf).sum(), fgf.sum()),
             "loss_iou": (w_iou * ((1 - span_iou(spans, spans_target)) * fgf).sum(), fgf.sum()),
             "loss_saliency": ((F.softplus(0.2 - diff) * pair).sum(), pair.sum())}
    if process_group is not None:
        means = global_means([s for s, _ in terms.values()], [c for _, c in terms.values()],
                             process_group)
        return dict(zip(terms, means))
    return {k: s / c.clamp_min(1) for k, (s, c) in terms.items()}


@torch.no_grad()
def predict_windows(out: Dict[str, Tensor], num_clips: Tensor, meta: List[dict], top: int = 10,
                    nms_iou: float = 0.7) -> List[dict]:
    """Submission lines (QVHighlights format) from the model outputs: each valid clip proposes
    its window, scored by its foreground probability; greedy NMS keeps the top `top`."""
    spans = clip_spans(out["offsets"]).float().cpu()
    scores = torch.sigmoid(out["fg_logits"]).float().cpu()
    sal = out["saliency"].float().cpu()
    lines = []
    for b, m in enumerate(meta):
        n = int(num_clips[b])
        L = float(m["clip_len"])
        dur = float(m["duration"])
        win = (spans[b, :n] * L).clamp(0.0, dur)
        sc = scores[b, :n]
        order = torch.argsort(sc, descending=True, stable=True)
        keep: List[int] = []
        for i in order.tolist():
            if win[i, 1] - win[i, 0] <= 0:
                continue
            if keep and span_iou(win[i].expand(len(keep), 2), win[keep]).max() > nms_iou:
                continue
            keep.append(i)
            if len(keep) == top:
                break
        lines.append({
            "qid": m["qid"], "query": m.get("query", ""), "vid": m["vid"],
            "pred_relevant_windows": [[round(float(win[i, 0]), 4), round(float(win[i, 1]), 4),
                                       round(float(sc[i]), 6)] for i in keep],
            "pred_saliency_scores": [round(float(x), 6) for x in sal[b, :n]],
        })
    return lines
