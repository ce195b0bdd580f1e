"""The study's decoder and error rates (cliptbp_kernels.pipeline.diagnostics) on small,
hand-checked cases, and per-query scores against the QVHighlights evaluation."""

import numpy as np
import pytest
import torch

from cliptbp_kernels.pipeline.diagnostics import (
    error_rates,
    per_query_scores,
    predict_segments,
    segment_windows,
    windows_per_query_group,
)
from cliptbp_kernels.pipeline.eval import evaluate


def test_segment_windows_runs_of_clips_above_the_threshold():
    p = [0.1, 0.6, 0.7, 0.2, 0.9, 0.95]
    assert segment_windows(p, 0.5, 2.0, 12.0) == [[8.0, 12.0, 0.925], [2.0, 6.0, 0.65]]
    # cut to the duration; the threshold itself counts as foreground
    assert segment_windows([0.5, 0.4], 0.5, 2.0, 1.5) == [[0.0, 1.5, 0.5]]


def test_segment_windows_without_foreground_gives_the_most_probable_clip():
    assert segment_windows([0.1, 0.3, 0.2], 0.5, 2.0, 6.0) == [[2.0, 4.0, 0.3]]


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.2, 2])
def test_segment_windows_checks_the_threshold(bad):
    with pytest.raises(ValueError, match="threshold"):
        segment_windows([0.5], bad, 2.0, 2.0)


def test_segment_windows_checks_the_probabilities():
    with pytest.raises(ValueError, match="fg_prob"):
        segment_windows([], 0.5, 2.0, 2.0)


def test_predict_segments_lines():
    out = {"fg_logits": torch.logit(torch.tensor([[0.2, 0.8, 0.9, 0.1], [0.7, 0.1, 0.1, 0.1]])),
           "saliency": torch.zeros(2, 4)}
    meta = [{"qid": 1, "vid": "a", "duration": 8.0, "clip_len": 2.0},
            {"qid": 2, "vid": "b", "duration": 4.0, "clip_len": 2.0}]
    lines = predict_segments(out, torch.tensor([4, 2]), meta, 0.5)
    assert lines[0]["pred_relevant_windows"] == [[2.0, 6.0, 0.85]]
    assert lines[1]["pred_relevant_windows"] == [[0.0, 2.0, 0.7]]
    assert len(lines[1]["pred_saliency_scores"]) == 2


def _sub(qid, windows):
    return {"qid": qid, "pred_relevant_windows": windows}


def test_error_rates_by_hand():
    gt = [{"qid": 1, "relevant_windows": [[10, 20], [24, 30]]},
          {"qid": 2, "relevant_windows": [[0, 10]]},
          {"qid": 3, "relevant_windows": [[40, 50]]}]
    segs = [{"qid": 1, "answer_windows": [[24, 30], [10, 20]], "distractor_windows": [[50, 60]]},
            {"qid": 2, "answer_windows": [[0, 10]], "distractor_windows": [[30, 40]]},
            {"qid": 3, "answer_windows": [[40, 50]], "distractor_windows": []}]
    sub = [_sub(1, [[12, 28, 0.9], [50, 60, 0.5]]),      # bridges the gap 20-24
           _sub(2, [[28, 38, 0.8], [0, 9, 0.7]]),        # top-1 inside the distractor
           _sub(3, [[41, 50, 0.9]])]
    r = error_rates(sub, gt, segs)
    assert r["distractor_fp_n"] == 2 and r["distractor_fp"] == pytest.approx(0.5)
    assert r["gap_bridging_n"] == 1 and r["gap_bridging"] == 1.0
    # windows: q1 [10,20] best top-2 is [12,28] (IoU 8/18), error (2+8)/2 = 5;
    # [24,30] best [12,28] (IoU 4/18), error (12+2)/2 = 7; q2: top-1 only (N=1): [28,38],
    # IoU 0, error (28+28)/2 = 28; q3: [41,50], error 0.5
    assert r["boundary_error_s"] == pytest.approx((5 + 7 + 28 + 0.5) / 4)
    assert r["windows_n"] == 4 and r["window_miss"] == pytest.approx(3 / 4)
    only = error_rates(sub, gt, segs, qids=[3])
    assert only["distractor_fp"] is None and only["gap_bridging"] is None
    assert only["window_miss"] == 0.0


def test_per_query_scores_average_to_the_evaluation():
    rng = np.random.default_rng(0)
    gt, sub = [], []
    for q in range(40):
        wins = sorted(rng.choice(np.arange(0, 140, 2), size=rng.integers(1, 4), replace=False))
        gt.append({"qid": q, "duration": 150, "relevant_windows":
                   [[float(s), float(s) + float(rng.integers(2, 10))] for s in wins]})
        preds = []
        for _ in range(rng.integers(1, 12)):
            s = float(rng.uniform(0, 140))
            preds.append([round(s, 2), round(s + float(rng.uniform(1, 20)), 2),
                          round(float(rng.uniform()), 4)])
        sub.append({"qid": q, "pred_relevant_windows": preds})
    scores = per_query_scores(sub, gt)
    brief = evaluate(sub, gt)["brief"]
    assert np.mean([s["ap"] for s in scores.values()]) == pytest.approx(brief["MR-full-mAP"],
                                                                         abs=0.006)
    # R1 takes the first listed window; per_query_scores the best scored: list them sorted
    for line in sub:
        line["pred_relevant_windows"].sort(key=lambda w: -w[2])
    brief = evaluate(sub, gt)["brief"]
    for t in (0.5, 0.7):
        r1 = 100 * np.mean([s["iou1"] >= t for s in scores.values()])
        assert r1 == pytest.approx(brief[f"MR-full-R1@{t}"], abs=0.006)


def test_windows_per_query_group():
    gt = [{"qid": i, "relevant_windows": [[0, 1]] * k} for i, k in enumerate([1, 2, 3, 4, 1])]
    assert windows_per_query_group(gt) == {"1": [0, 4], "2": [1], "3+": [2, 3]}
