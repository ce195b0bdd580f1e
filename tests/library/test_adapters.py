"""Adapters from baseline layouts (UniVTG, FlashVTG, DETR-style) to ClipTBPLoss inputs.

Every tensor below is written out by hand in the baseline's own layout (see
docs/integrations.md for the files each layout was read from) and the expected labels and
spans are computed by hand in the comments.
"""

import math

import pytest
import torch

import cliptbp_kernels as ck
from cliptbp_kernels.adapters import (
    MissingOutputError,
    detr_matched_spans,
    flashvtg_inputs,
    inputs_from_windows,
    univtg_inputs,
)

D = 4


def _crit():
    return ck.ClipTBPLoss(w_clip=3.0, w_boun=3.0, w_aux=2.0, k=5)


# --------------------------------------------------------------------------------------------
# UniVTG / Video Mamba Suite
# --------------------------------------------------------------------------------------------

def _univtg_batch():
    """Two samples, clip_len 2 s, padded to T = 8.

    sample 0: n = 8 clips (16 s), window [4 s, 10 s] -> normalised [0.25, 0.625]
        timestamp (i + clip_len / 2) / n = (i + 1) / 8; anchors 0.25 .. 0.625 are clips 1-4,
        so span_labels_nn rows 1-4 hold the window and timestamp_window = 0 1 1 1 1 0 0 0.
    sample 1: n = 5 clips (10 s), windows [0, 2] s and [6, 10] s -> [0, 0.2] and [0.6, 1.0]
        anchors (i + 1) / 5 = 0.2, 0.4, 0.6, 0.8, 1.0: clip 0 in the first, clips 2-4 in the
        second; rows 5-7 are padding (zeros, as pad_sequences_1d pads them).
    """
    B, T = 2, 8
    stamp = torch.zeros(B, T, 2)
    stamp[0] = ((torch.arange(8) + 1.0) / 8).unsqueeze(1).repeat(1, 2)
    stamp[1, :5] = ((torch.arange(5) + 1.0) / 5).unsqueeze(1).repeat(1, 2)
    nn_win = torch.zeros(B, T, 2)
    nn_win[0, 1:5] = torch.tensor([4.0, 10.0]) / 16
    nn_win[1, 0] = torch.tensor([0.0, 2.0]) / 10
    nn_win[1, 2:5] = torch.tensor([6.0, 10.0]) / 10
    targets = {
        "timestamp": stamp,
        "timestamp_mask": torch.tensor([[1.0] * 8, [1.0] * 5 + [0.0] * 3]),
        "timestamp_window": torch.tensor([[0, 1, 1, 1, 1, 0, 0, 0],
                                          [1, 0, 1, 1, 1, 0, 0, 0]], dtype=torch.float32),
        "span_labels_nn": nn_win,
    }
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(B, T, 2, generator=g).requires_grad_()
    # UniVTG: outputs_coord.sigmoid() * (-1, 1)
    pred_spans = raw.sigmoid() * torch.tensor([-1.0, 1.0])
    emb = torch.randn(B, T, D, generator=g).requires_grad_()
    outputs = {"pred_spans": pred_spans, "vid_mem": emb,
               "vid_mem_proj": torch.randn(B, T, D, generator=g),
               "src_vid_mask": targets["timestamp_mask"].clone()}
    return outputs, targets, raw, emb


def test_univtg_labels_spans_and_backward():
    outputs, targets, raw, emb = _univtg_batch()
    out = univtg_inputs(outputs, targets)
    assert set(out) == {"emb", "labels", "pred_spans", "target_spans", "span_mask"}
    assert out["emb"] is emb
    # rule "univtg": UniVTG's own foreground (timestamp_window), ids by window in start order
    assert out["labels"].tolist() == [[0, 1, 1, 1, 1, 0, 0, 0],
                                      [1, 0, 2, 2, 2, -1, -1, -1]]
    assert out["labels"].dtype == torch.long
    # rule "center": clip centres (2i + 1 s): [4, 10) holds clips 2-4; [0, 2) clip 0;
    # [6, 10) clips 3-4
    centre = univtg_inputs(outputs, targets, rule="center")
    assert centre["labels"].tolist() == [[0, 0, 1, 1, 1, 0, 0, 0],
                                         [1, 0, 0, 2, 2, -1, -1, -1]]
    # rule "floor" on the windows in clips: [2, 5) -> clips 2-4, [0, 1) -> 0, [3, 5) -> 3-4
    floor = univtg_inputs(outputs, targets, rule="floor")
    assert floor["labels"].tolist() == centre["labels"].tolist()
    assert torch.equal(out["span_mask"], out["labels"] >= 1)

    m = out["span_mask"]
    # predicted window = UniVTG's own src_spans = timestamp + pred_spans
    src_spans = targets["timestamp"] + outputs["pred_spans"]
    torch.testing.assert_close(out["pred_spans"][m], src_spans[m])
    # target = the clip's window, normalised by the sample's length (n * clip_len)
    tgt = out["target_spans"]
    for i in (1, 2, 3, 4):
        torch.testing.assert_close(tgt[0, i], torch.tensor([0.25, 0.625]))
    torch.testing.assert_close(tgt[1, 0], torch.tensor([0.0, 0.2]))
    for i in (2, 3, 4):
        torch.testing.assert_close(tgt[1, i], torch.tensor([0.6, 1.0]))

    crit = _crit()
    basic = (raw ** 2).mean() * 0.0 + torch.tensor(1.5)   # stands for UniVTG's weighted sum
    res = crit(**out, basic=basic)
    assert {"loss", "loss_clip", "loss_boun", "loss_aux", "loss_basic"} <= set(res)
    assert torch.isfinite(res["loss"])
    res["loss"].backward()
    # L_clip / L_boun reach the embeddings of valid clips, never the padding
    assert emb.grad[0].abs().sum() > 0
    assert torch.all(emb.grad[1, 5:] == 0)
    # L_b_aux reaches the predicted offsets of the clips inside a window, and only those
    assert torch.all(raw.grad[m].abs().sum(-1) > 0)
    assert torch.all(raw.grad[~m] == 0)


def test_univtg_emb_key_and_mask_fallback():
    outputs, targets, raw, emb = _univtg_batch()
    out = univtg_inputs(outputs, targets)
    # the projected input features only when asked for by name
    assert univtg_inputs(outputs, targets, emb_key="vid_mem_proj")["emb"] is \
        outputs["vid_mem_proj"]
    # src_vid_mask stands in for timestamp_mask
    t2 = {k: v for k, v in targets.items() if k != "timestamp_mask"}
    assert univtg_inputs(outputs, t2)["labels"].tolist() == out["labels"].tolist()


def test_univtg_window_boundary_on_a_clip_centre():
    # n = 3 clips of 2 s, window [1 s, 5 s]: clip centres 1, 3, 5 s -> clips 0-1. In float32
    # 1 / 6 * 3 comes back as 0.50000001 clips; the boundary must still hold clip 0's centre.
    win = torch.tensor([1.0, 5.0]) / (3 * 2.0)              # as UniVTG computes it, float32
    stamp = ((torch.arange(3) + 1.0) / 3).unsqueeze(1).repeat(1, 2)[None]
    nn_win = torch.zeros(1, 3, 2)
    nn_win[0, :2] = win
    targets = {"timestamp": stamp, "timestamp_mask": torch.ones(1, 3),
               "timestamp_window": torch.tensor([[1.0, 1.0, 0.0]]), "span_labels_nn": nn_win}
    outputs = {"pred_spans": torch.zeros(1, 3, 2), "vid_mem": torch.randn(1, 3, D)}
    assert univtg_inputs(outputs, targets, rule="center")["labels"].tolist() == [[1, 1, 0]]
    assert univtg_inputs(outputs, targets)["labels"].tolist() == [[1, 1, 0]]


def test_univtg_bad_inputs():
    outputs, targets, _, _ = _univtg_batch()
    for key in ("span_labels_nn", "timestamp_window", "timestamp"):
        t = {k: v for k, v in targets.items() if k != key}
        with pytest.raises(KeyError, match=key):
            univtg_inputs(outputs, t)
    # no silent fallback to the projected input: the error names the model change
    no_mem = {k: v for k, v in outputs.items() if k != "vid_mem"}
    with pytest.raises(MissingOutputError, match=r'out\["vid_mem"\] = vid_mem') as err:
        univtg_inputs(no_mem, targets)
    assert isinstance(err.value, KeyError) and "model/univtg.py" in str(err.value)
    with pytest.raises(KeyError, match="vid_mem_proj"):
        univtg_inputs({k: v for k, v in outputs.items() if k != "vid_mem_proj"}, targets,
                      emb_key="vid_mem_proj")
    with pytest.raises(ValueError, match="rule"):
        univtg_inputs(outputs, targets, rule="centre")
    with pytest.raises(KeyError, match="pred_spans"):
        univtg_inputs({k: v for k, v in outputs.items() if k != "pred_spans"}, targets)
    with pytest.raises(KeyError, match="timestamp_mask"):
        univtg_inputs({k: v for k, v in outputs.items() if k != "src_vid_mask"},
                      {k: v for k, v in targets.items() if k != "timestamp_mask"})
    with pytest.raises(ValueError, match="pred_spans"):
        univtg_inputs({**outputs, "pred_spans": outputs["pred_spans"][:, :7]}, targets)
    with pytest.raises(ValueError, match="span_labels_nn"):
        univtg_inputs(outputs, {**targets, "span_labels_nn": targets["span_labels_nn"][..., :1]})
    with pytest.raises(ValueError, match="timestamp_mask"):
        univtg_inputs(outputs, {**targets, "timestamp_mask": targets["timestamp_mask"][:1]})
    with pytest.raises(TypeError, match="clip_len"):   # one unit: spans are fractions
        univtg_inputs(outputs, targets, clip_len=2.0)


# --------------------------------------------------------------------------------------------
# FlashVTG
# --------------------------------------------------------------------------------------------

def _flashvtg_points():
    """FlashVTG's points for T = 6 and strides (1, 2, 4, 8): the stride-8 level is skipped
    (T < 8); per point (position, reg_min, reg_max, stride), regression ranges (0, 2),
    (2, 4), (4, 8) as PointGenerator derives them from the strides."""
    rows = [[p, 0, 2, 1] for p in range(6)] + [[p, 2, 4, 2] for p in (0, 2, 4)] + [[0, 4, 8, 4]]
    return torch.tensor(rows, dtype=torch.float32)


def _flashvtg_batch():
    """Two samples, clip_len 2 s, T = 6; sample 1 has 4 real clips.

    out_coord holds the pyramid levels with strides 1, 2, 4 (stride 8 > T is skipped):
    6 + 3 + 1 = 10 points; the first 6 are the stride-1 points at positions 0..5.
    """
    B, T = 2, 6
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(B, T, D, generator=g).requires_grad_()
    raw = torch.randn(B, 10, 2, generator=g).requires_grad_()
    outputs = {
        "video_emb_pre_relu": emb,
        "video_emb": emb.detach().relu(),
        "video_msk": torch.tensor([[1] * 6, [1, 1, 1, 1, 0, 0]], dtype=torch.int32),
        "out_coord": raw.exp(),                         # exp(.) * coef, coef = 1 here
        "point": _flashvtg_points(),
    }
    # QVHighlights metadata (relevant_clip_ids present: FlashVTG's clip-id foreground)
    targets = {"label": [{"qid": 1, "relevant_windows": [[4, 10]], "relevant_clip_ids": [2, 3, 4]},
                         {"qid": 2, "relevant_windows": [[2, 6]], "relevant_clip_ids": [1, 2]}],
               "fps": torch.full((256,), 0.5)}
    return outputs, targets, raw, emb


def test_flashvtg_labels_spans_and_backward():
    outputs, targets, raw, emb = _flashvtg_batch()
    out = flashvtg_inputs(outputs, targets, clip_len=2.0)
    # [4, 10) s holds the centres of clips 2-4; [2, 6) those of clips 1-2; clips 4-5 padding
    assert out["labels"].tolist() == [[0, 0, 1, 1, 1, 0], [0, 1, 1, 0, -1, -1]]
    # FlashVTG's own positives (BundleLoss.get_target). Sample 0: window [2, 5] clips, centre
    # 3.5. Stride 1: centre region [2, 5], reach max(p - 2, 5 - p) <= 2 -> p = 3, 4. Stride 2:
    # region [2, 5], reach in [2, 4] -> p = 2, 4 (points 7, 8). Stride 4: p = 0 outside.
    # Sample 1: window [1, 3], centre 2. Stride 1: region [1, 3], reach <= 2 -> p = 1, 2, 3;
    # stride 2: p = 2 has reach 1 < 2; stride 4: p = 0 outside.
    pos = out["span_mask"]
    assert pos.shape == (2, 10)
    assert torch.nonzero(pos[0]).flatten().tolist() == [3, 4, 7, 8]
    assert torch.nonzero(pos[1]).flatten().tolist() == [1, 2, 3]
    # spans in fractions of the video: clips / n (6 and 4 real clips)
    coord, point = outputs["out_coord"], outputs["point"]
    p, s = point[:, 0], point[:, 3]
    n = torch.tensor([6.0, 4.0])[:, None]
    expect = torch.stack(((p - coord[..., 0] * s) / n, (p + coord[..., 1] * s) / n), dim=-1)
    torch.testing.assert_close(out["pred_spans"], expect)
    # FlashVTG's own decoding in seconds is the same window: (point + (-d_s, d_e) * stride) / fps
    flash = (coord * torch.tensor([-1.0, 1.0]) * s[:, None] + p[:, None]) / 0.5
    torch.testing.assert_close(out["pred_spans"] * n[..., None] * 2.0, flash)
    for j in (3, 4, 7, 8):
        torch.testing.assert_close(out["target_spans"][0, j], torch.tensor([2.0, 5.0]) / 6)
    for j in (1, 2, 3):
        torch.testing.assert_close(out["target_spans"][1, j], torch.tensor([1.0, 3.0]) / 4)
    assert torch.all(out["target_spans"][~pos] == 0)

    res = _crit()(**out, basic={"loss_reg": raw.sum() * 0.0 + 0.7})
    assert torch.isfinite(res["loss"]) and "loss_aux" in res and "loss_reg" in res
    res["loss"].backward()
    assert emb.grad.abs().sum() > 0
    assert torch.all(emb.grad[1, 4:] == 0)
    # L_b_aux reaches the regressed points of every level, and only those
    assert torch.all(raw.grad[pos].abs().sum(-1) > 0)
    assert torch.all(raw.grad[~pos] == 0)


def test_flashvtg_positives_take_the_shortest_window():
    # two windows, [0, 8] and [2, 4] clips. Point 3 (stride 1) lies in both centre regions
    # ([2.5, 5.5] and [2, 4]) but reaches 5 clips for the long one, outside its range (0, 2),
    # and 1 for the short one: it regresses the short one. Point 8 (p = 4, stride 2, centre
    # regions [1, 7] and [2, 4]) reaches 4 and 2, both in its range [2, 4]: it takes the
    # shorter window.
    outputs, _, _, _ = _flashvtg_batch()
    targets = {"label": [{"relevant_windows": [[0, 16], [4, 8]], "relevant_clip_ids": []},
                         {"relevant_windows": [], "relevant_clip_ids": []}]}
    out = flashvtg_inputs(outputs, targets, clip_len=2.0)
    pos = out["span_mask"]
    assert not pos[1].any()                                 # no window, no positive
    assert pos[0, 3] and pos[0, 8]
    short = torch.tensor([2.0, 4.0]) / 6
    torch.testing.assert_close(out["target_spans"][0, 3], short)
    torch.testing.assert_close(out["target_spans"][0, 8], short)


def test_flashvtg_floor_rule_on_charades_tacos_metadata():
    # TACoS-style metadata (no relevant_clip_ids): FlashVTG's floor rule with its per-sample
    # clip length duration / n. Sample 0: 12.6 s over 6 clips = 2.1 s, [4, 10] -> clips
    # int(4 / 2.1) = 1 to min(int(10 / 2.1), 6) - 1 = 3. Sample 1: 7 s over 4 clips = 1.75 s,
    # [2, 6] -> clips 1 to min(3, 4) - 1 = 2.
    outputs, _, _, _ = _flashvtg_batch()
    targets = {"label": [{"relevant_windows": [[4.0, 10.0]], "duration": 12.6},
                         {"relevant_windows": [[2.0, 6.0]], "duration": 7.0}]}
    out = flashvtg_inputs(outputs, targets, clip_len=2.0)
    assert out["labels"].tolist() == [[0, 1, 1, 1, 0, 0], [0, 1, 1, 0, -1, -1]]
    # the spans follow FlashVTG's regression, windows * fps in clips of --clip_length, as
    # fractions of the video: the same positives as with QVHighlights metadata
    torch.testing.assert_close(out["target_spans"][0, 3], torch.tensor([2.0, 5.0]) / 6)
    torch.testing.assert_close(out["target_spans"][1, 2], torch.tensor([1.0, 3.0]) / 4)
    qvh = flashvtg_inputs(*_flashvtg_batch()[:2], clip_len=2.0)
    assert torch.equal(out["span_mask"], qvh["span_mask"])
    # an explicit rule uses clip_len for the labels as well
    centre = flashvtg_inputs(outputs, targets, clip_len=2.0, rule="center")
    assert centre["labels"].tolist() == [[0, 0, 1, 1, 1, 0], [0, 1, 1, 0, -1, -1]]
    with pytest.raises(KeyError, match="duration"):
        flashvtg_inputs(outputs, {"label": [{"relevant_windows": [[4.0, 10.0]]}] * 2},
                        clip_len=2.0)
    with pytest.raises(ValueError, match="duration"):
        flashvtg_inputs(outputs, {"label": [{"relevant_windows": [[4, 10]], "duration": 0}] * 2},
                        clip_len=2.0)


def test_flashvtg_no_silent_fallback_to_the_rectified_tokens():
    outputs, targets, _, emb = _flashvtg_batch()
    no_pre = {k: v for k, v in outputs.items() if k != "video_emb_pre_relu"}
    with pytest.raises(MissingOutputError, match="video_emb_pre_relu = video_emb.clone()") as err:
        flashvtg_inputs(no_pre, targets, clip_len=2.0)
    assert "FlashVTG/model.py" in str(err.value)
    assert flashvtg_inputs(outputs, targets, clip_len=2.0)["emb"] is emb
    chosen = flashvtg_inputs(no_pre, targets, clip_len=2.0, emb_key="video_emb")
    assert chosen["emb"] is outputs["video_emb"]
    with pytest.raises(ValueError, match="rule"):
        flashvtg_inputs(outputs, targets, clip_len=2.0, rule="ceil")


def test_flashvtg_bad_inputs():
    outputs, targets, _, _ = _flashvtg_batch()
    for key in ("video_emb_pre_relu", "video_msk", "out_coord", "point"):
        with pytest.raises(KeyError, match=key):
            flashvtg_inputs({k: v for k, v in outputs.items() if k != key}, targets, clip_len=2.0)
    with pytest.raises(ValueError, match="out_coord"):
        flashvtg_inputs({**outputs, "out_coord": outputs["out_coord"][:, :5]}, targets,
                        clip_len=2.0)
    with pytest.raises(ValueError, match="out_coord"):
        flashvtg_inputs({**outputs, "out_coord": None}, targets, clip_len=2.0)
    with pytest.raises(KeyError, match="label"):
        flashvtg_inputs(outputs, {"fps": targets["fps"]}, clip_len=2.0)
    with pytest.raises(KeyError, match="relevant_windows"):
        flashvtg_inputs(outputs, {"label": [{"qid": 1}, {"qid": 2}]}, clip_len=2.0)
    with pytest.raises(ValueError, match="one entry per sample"):
        flashvtg_inputs(outputs, {"label": targets["label"][:1]}, clip_len=2.0)
    with pytest.raises(ValueError, match="video_msk"):
        flashvtg_inputs({**outputs, "video_msk": outputs["video_msk"][:, :5]}, targets,
                        clip_len=2.0)
    with pytest.raises(ValueError, match="clip_len"):
        flashvtg_inputs(outputs, targets, clip_len=-1.0)
    with pytest.raises(ValueError, match="point"):
        flashvtg_inputs({**outputs, "point": outputs["point"][:9]}, targets, clip_len=2.0)


# --------------------------------------------------------------------------------------------
# generic + DETR-style (Moment-DETR, TD-DETR)
# --------------------------------------------------------------------------------------------

def test_inputs_from_windows_detr_style():
    # encoder memory split back into video tokens: vid_mem = memory[:, :L_vid]
    g = torch.Generator().manual_seed(2)
    vid_mem = torch.randn(2, 5, D, generator=g).requires_grad_()
    src_vid_mask = torch.tensor([[1.0] * 5, [1.0, 1.0, 1.0, 0.0, 0.0]])
    meta = [{"relevant_windows": [[2, 8]]}, {"relevant_windows": [[0, 4], [3.9, 4.0]]}]
    out = inputs_from_windows(vid_mem, src_vid_mask, [m["relevant_windows"] for m in meta], 2.0)
    assert set(out) == {"emb", "labels"}                       # no offsets, no span keys
    # [2, 8) holds clips 1-3; [0, 4) clips 0-1 and the overlapping [3.9, 4.0] merges into it
    assert out["labels"].tolist() == [[0, 1, 1, 1, 0], [1, 1, 0, -1, -1]]

    # Hungarian-matched spans as Moment-DETR's loss_spans picks them (normalised cxw)
    pred_cxw = torch.tensor([[[0.5, 0.2], [0.35, 0.3], [0.9, 0.1]],
                             [[0.2, 0.2], [0.6, 0.4], [0.45, 0.5]]]).requires_grad_()
    span_labels = [{"spans": torch.tensor([[0.5, 0.6]])},
                   {"spans": torch.tensor([[0.2, 0.4], [0.4, 0.2]])}]
    indices = [(torch.tensor([1]), torch.tensor([0])),
               (torch.tensor([2, 0]), torch.tensor([1, 0]))]
    p, t = detr_matched_spans(pred_cxw, span_labels, indices)
    torch.testing.assert_close(p, torch.tensor([[0.2, 0.5], [0.2, 0.7], [0.1, 0.3]]))
    torch.testing.assert_close(t, torch.tensor([[0.2, 0.8], [0.3, 0.5], [0.0, 0.4]]))

    res = _crit()(**out, pred_spans=p, target_spans=t, basic=torch.tensor(2.0))
    res["loss"].backward()
    assert vid_mem.grad.abs().sum() > 0 and torch.all(vid_mem.grad[1, 3:] == 0)
    assert pred_cxw.grad[0, 1].abs().sum() > 0 and torch.all(pred_cxw.grad[0, 0] == 0)


def test_inputs_from_windows_units_anchor_and_padding_rows():
    emb = torch.randn(1, 6, D)
    windows = torch.tensor([[[4.0, 10.0], [math.inf, math.inf]]])   # FlashVTG-style padding row
    offs = torch.full((1, 6, 2), 0.5)
    out = inputs_from_windows(emb, None, windows, 2.0, offs, "seconds", anchor=0.5)
    assert out["labels"].tolist() == [[0, 0, 1, 1, 1, 0]]
    # anchor at the clip centre (i + 0.5) * 2 s, +- 0.5 s
    torch.testing.assert_close(out["pred_spans"][0, 2], torch.tensor([4.5, 5.5]))
    torch.testing.assert_close(out["target_spans"][0, 4], torch.tensor([4.0, 10.0]))
    assert torch.all(out["target_spans"][0, :2] == 0)
    nrm = inputs_from_windows(emb, torch.ones(1, 6), windows, 2.0, offs, "normalized")
    torch.testing.assert_close(nrm["target_spans"][0, 3], torch.tensor([4.0, 10.0]) / 12)
    torch.testing.assert_close(nrm["pred_spans"][0, 3], torch.tensor([3 / 6 - 0.5, 3 / 6 + 0.5]))
    # a tensor anchor is taken as is
    a = torch.arange(6.0) * 10
    out = inputs_from_windows(emb, None, [[[0, 2]]], 2.0, offs, "clips", anchor=a)
    torch.testing.assert_close(out["pred_spans"][0, 1], torch.tensor([9.5, 10.5]))
    # empty batch
    e = inputs_from_windows(torch.zeros(0, 3, D), None, [], 2.0, torch.zeros(0, 3, 2),
                            "normalized")
    assert e["labels"].shape == (0, 3) and e["target_spans"].shape == (0, 3, 2)


def test_inputs_from_windows_per_sample_clip_lengths_and_rules():
    # TD-DETR pools a long video to n clips of duration / n seconds: one length per sample
    emb = torch.randn(2, 6, D)
    windows = [[[4.0, 10.0]], [[4.0, 10.0]]]
    offs = torch.zeros(2, 6, 2)
    out = inputs_from_windows(emb, None, windows, [2.0, 4.0], offs, "seconds", anchor=0.5)
    # 2 s clips: centres 1, 3, 5, ... -> clips 2-4; 4 s clips: centres 2, 6, 10 -> clip 1
    assert out["labels"].tolist() == [[0, 0, 1, 1, 1, 0], [0, 1, 0, 0, 0, 0]]
    torch.testing.assert_close(out["pred_spans"][1, 1], torch.tensor([6.0, 6.0]))
    torch.testing.assert_close(out["target_spans"][1, 1], torch.tensor([4.0, 10.0]))
    clips = inputs_from_windows(emb, None, windows, torch.tensor([2.0, 4.0]), offs, "clips")
    torch.testing.assert_close(clips["target_spans"][1, 1], torch.tensor([1.0, 2.5]))
    # the baselines' rules: UniVTG's anchors (i + 1) * 2 s in [4, 10] -> clips 1-4
    uni = inputs_from_windows(emb, None, windows, 2.0, rule="univtg")
    assert uni["labels"][0].tolist() == [0, 1, 1, 1, 1, 0]
    flo = inputs_from_windows(emb, None, [[[4.5, 9.9]], []], 2.0, rule="floor")
    assert flo["labels"].tolist() == [[0, 0, 1, 1, 0, 0], [0] * 6]
    with pytest.raises(ValueError, match="clip_len"):
        inputs_from_windows(emb, None, windows, [2.0], offs)
    with pytest.raises(ValueError, match=r"clip_len\[1\]"):
        inputs_from_windows(emb, None, windows, [2.0, 0.0], offs)
    with pytest.raises(ValueError, match="rule"):
        inputs_from_windows(emb, None, windows, 2.0, rule="end")


def test_inputs_from_windows_bad_inputs():
    emb = torch.randn(2, 5, D)
    w = [[[0, 2]], []]
    with pytest.raises(TypeError, match="emb"):
        inputs_from_windows(emb.numpy(), None, w, 2.0)
    with pytest.raises(ValueError, match="emb"):
        inputs_from_windows(emb[0], None, w, 2.0)
    with pytest.raises(ValueError, match="video_mask"):
        inputs_from_windows(emb, torch.ones(2, 4), w, 2.0)
    with pytest.raises(ValueError, match="one entry per sample"):
        inputs_from_windows(emb, None, w[:1], 2.0)
    with pytest.raises(TypeError, match="windows_sec"):
        inputs_from_windows(emb, None, "0 2", 2.0)
    with pytest.raises(ValueError, match="ends before it starts"):
        inputs_from_windows(emb, None, [[[4, 2]], []], 2.0)
    with pytest.raises(ValueError, match="clip_len"):
        inputs_from_windows(emb, None, w, 0.0)
    with pytest.raises(ValueError, match="pred_offsets"):
        inputs_from_windows(emb, None, w, 2.0, torch.zeros(2, 5, 3))
    with pytest.raises(TypeError, match="pred_offsets"):
        inputs_from_windows(emb, None, w, 2.0, torch.zeros(2, 5, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="offset_unit"):
        inputs_from_windows(emb, None, w, 2.0, torch.zeros(2, 5, 2), "frames")
    with pytest.raises(ValueError, match="anchor"):
        inputs_from_windows(emb, None, w, 2.0, torch.zeros(2, 5, 2), "normalized",
                            anchor=torch.zeros(3))
    # no default unit for offsets: a unit mix-up must not pass silently
    with pytest.raises(ValueError, match="offset_unit is required"):
        inputs_from_windows(emb, None, w, 2.0, torch.zeros(2, 5, 2))
    with pytest.raises(KeyError, match="spans"):
        detr_matched_spans(torch.zeros(1, 2, 2), [{"boxes": torch.zeros(1, 2)}],
                           [(torch.tensor([0]), torch.tensor([0]))])
    with pytest.raises(ValueError, match="one entry per sample"):
        detr_matched_spans(torch.zeros(2, 2, 2), [{"spans": torch.zeros(1, 2)}], [])
