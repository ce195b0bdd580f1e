"""Tests of cliptbp_kernels.pipeline.eval (QVHighlights evaluation protocol) on hand-computed
cases."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from cliptbp_kernels.pipeline.eval import (
    EvalInputError,
    evaluate,
    load_jsonl,
    main,
    save_json,
    temporal_iou,
)
from paths import REPO, SHARED_DATA

DATA = SHARED_DATA
THRESHOLDS = ["0.5", "0.55", "0.6", "0.65", "0.7", "0.75", "0.8", "0.85", "0.9", "0.95"]


def gt(qid, windows, **extra):
    return {"qid": qid, "query": f"q{qid}", "vid": f"v{qid}", "duration": 150,
            "relevant_windows": windows, **extra}


def pred(qid, windows, **extra):
    return {"qid": qid, "query": f"q{qid}", "vid": f"v{qid}", "pred_relevant_windows": windows,
            **extra}


def brief(sub, ground_truth, **kw):
    return evaluate(sub, ground_truth, **kw)["brief"]


# ------------------------------------------------------------------------------------------
# temporal_iou
# ------------------------------------------------------------------------------------------


def test_temporal_iou():
    assert temporal_iou([0, 10], [5, 15]) == pytest.approx(5 / 15)
    assert temporal_iou([0, 10], [10, 20]) == 0.0  # touching: no intersection
    assert temporal_iou([3, 3], [3, 3]) == 0.0  # zero-length union
    assert temporal_iou([0, 10, 0.9], [0, 10]) == 1.0  # a score column is ignored
    m = temporal_iou([[0, 10], [2, 4]], [[0, 5], [0, 10], [20, 30]])
    assert m.shape == (2, 3)
    np.testing.assert_allclose(m, [[0.5, 1.0, 0.0], [0.4, 0.2, 0.0]])


# ------------------------------------------------------------------------------------------
# Moment retrieval
# ------------------------------------------------------------------------------------------


def test_exact_matches_give_100():
    # One query per length split (lengths 8, 20, 60), plus one with two short GT windows;
    # predictions are the GT windows themselves: IoU 1 everywhere. (A query with windows in
    # two splits would not give 100 in each: its predictions are not filtered by length, see
    # test_length_splits.)
    ground_truth = [gt(1, [[0, 8]]), gt(2, [[10, 30]]), gt(3, [[40, 100]]),
                    gt(4, [[0, 4], [50, 58]])]
    sub = [pred(d["qid"], [w + [1.0 - 0.1 * i] for i, w in enumerate(d["relevant_windows"])])
           for d in ground_truth]
    m = evaluate(sub, ground_truth)
    assert set(m) == {"brief", "full"}
    assert list(m["brief"]) == [
        "MR-full-R1@0.3", "MR-full-R1@0.5", "MR-full-R1@0.7", "MR-full-mAP",
        "MR-full-mAP@0.5", "MR-full-mAP@0.75", "MR-long-mAP", "MR-middle-mAP", "MR-short-mAP"]
    assert all(v == 100.0 for v in m["brief"].values())
    for split in ("full", "short", "middle", "long"):
        d = m["full"][f"MR-{split}"]
        assert list(d["MR-mAP"]) == THRESHOLDS + ["average"]
        assert all(v == 100.0 for v in d["MR-mAP"].values())
        assert all(v == 100.0 for v in d["MR-R1"].values())
    assert m["full"]["MR-full"]["num_queries"] == 4
    assert m["full"]["MR-short"]["num_queries"] == 2  # q1 (8 s) and q4 (4 s, 8 s)
    assert m["full"]["MR-middle"]["num_queries"] == 1  # q2 (20 s)
    assert m["full"]["MR-long"]["num_queries"] == 1  # q3 (60 s)


def test_shifted_windows_around_05_and_07():
    # GT [0, 10] for all; one prediction each, IoU = length / 10:
    #   q1 [0, 5.1] -> 0.51: >= 0.5 only             -> AP 1 at 1 threshold of 10
    #   q2 [0, 4.9] -> 0.49: none (but >= 0.3)       -> AP 0 everywhere
    #   q3 [0, 7.1] -> 0.71: 0.5, .55, .6, .65, .7   -> 5 thresholds
    #   q4 [0, 6.9] -> 0.69: 0.5, .55, .6, .65       -> 4 thresholds
    #   q5 [2, 12]  -> 8 / 12 = 0.667: 4 thresholds, a pure shift
    ends = {1: 5.1, 2: 4.9, 3: 7.1, 4: 6.9}
    ground_truth = [gt(q, [[0, 10]]) for q in range(1, 6)]
    sub = [pred(q, [[0, e, 0.9]]) for q, e in ends.items()] + [pred(5, [[2, 12, 0.9]])]
    b = brief(sub, ground_truth)
    assert b["MR-full-R1@0.3"] == 100.0  # all IoUs >= 0.49
    assert b["MR-full-R1@0.5"] == 80.0  # q1, q3, q4, q5: 4 / 5
    assert b["MR-full-R1@0.7"] == 20.0  # q3: 1 / 5
    assert b["MR-full-mAP@0.5"] == 80.0
    assert b["MR-full-mAP@0.75"] == 0.0
    assert b["MR-full-mAP"] == 28.0  # (1 + 0 + 5 + 4 + 4) / (5 * 10) = 0.28
    d = evaluate(sub, ground_truth)["full"]["MR-full"]["MR-mAP"]
    assert [d[t] for t in THRESHOLDS] == [80.0, 60.0, 60.0, 60.0, 20.0] + [0.0] * 5


def test_iou_exactly_at_threshold_counts():
    # [0, 5] vs [0, 10] -> IoU 0.5 exactly; [0, 7] vs [0, 10] -> 0.7 exactly (>= is a hit).
    b = brief([pred(1, [[0, 5, 1.0]]), pred(2, [[0, 7, 1.0]])],
              [gt(1, [[0, 10]]), gt(2, [[0, 10]])])
    assert b["MR-full-R1@0.5"] == 100.0
    assert b["MR-full-R1@0.7"] == 50.0
    assert b["MR-full-mAP@0.5"] == 100.0
    assert b["MR-full-mAP"] == 30.0  # (1 + 5) / 20


def test_multiple_gt_windows_and_greedy_matching():
    # GT [[0, 10], [20, 30]]; ranked predictions:
    #   [20, 30] .9 -> matches GT2 (TP); R1 uses the max IoU over GT windows -> hit
    #   [0, 9]   .8 -> IoU .9 with GT1 -> TP at thresholds <= .9, FP at .95
    #   [0, 10]  .7 -> GT1 already taken at thresholds <= .9 -> FP there; TP at .95
    # thresholds .5 .. .9 (9 of them): tp = [1, 1, 0] -> recall reaches 1 at rank 2 -> AP 1
    # threshold .95: tp = [1, 0, 1] -> precision [1, 1/2, 2/3], recall [.5, .5, 1]
    #   interpolated AP = .5 * 1 + .5 * 2/3 = 0.8333
    # mAP = (9 * 1 + 0.8333) / 10 = 0.98333 -> 98.33
    sub = [pred(1, [[20, 30, 0.9], [0, 9, 0.8], [0, 10, 0.7]])]
    m = evaluate(sub, [gt(1, [[0, 10], [20, 30]])])
    assert m["brief"]["MR-full-R1@0.7"] == 100.0
    assert m["full"]["MR-full"]["MR-mAP"]["0.9"] == 100.0
    assert m["full"]["MR-full"]["MR-mAP"]["0.95"] == 83.33
    assert m["brief"]["MR-full-mAP"] == 98.33

    # A false positive between the two hits: tp = [1, 0, 1] at all thresholds -> 83.33
    sub = [pred(1, [[20, 30, 0.9], [50, 60, 0.8], [0, 10, 0.7]])]
    assert brief(sub, [gt(1, [[0, 10], [20, 30]])])["MR-full-mAP"] == 83.33

    # Two predictions on the same GT window: the second is a FP.
    # tp = [1, 0, 1] again (same GT twice, then GT2) -> 83.33
    sub = [pred(1, [[0, 10, 0.9], [0, 10, 0.8], [20, 30, 0.7]])]
    assert brief(sub, [gt(1, [[0, 10], [20, 30]])])["MR-full-mAP"] == 83.33


def test_gt_iou_tie_takes_last_listed_gt_first():
    # GT1 [0, 10], GT2 [2, 12]; p1 [1, 11] (.9) has IoU 9/11 = .818 with both;
    # p2 [0, 10] (.8) has IoU 1 with GT1 and 8/12 = .667 with GT2.
    # Rule: p1 takes GT2 (last listed among equal IoU), so p2 gets GT1:
    #   thresholds .5 .. .8 (7): tp = [1, 1] -> AP 1
    #   thresholds .85, .9, .95: p1 below -> FP, p2 -> GT1 TP: tp = [0, 1]
    #     precision [0, .5], recall [0, .5] -> AP = .5 * .5 = .25
    # mAP = (7 + 3 * .25) / 10 = 77.5   (taking GT1 first would give 62.5)
    sub = [pred(1, [[1, 11, 0.9], [0, 10, 0.8]])]
    m = evaluate(sub, [gt(1, [[0, 10], [2, 12]])])
    assert m["brief"]["MR-full-mAP"] == 77.5
    assert m["brief"]["MR-full-mAP@0.75"] == 100.0
    assert m["full"]["MR-full"]["MR-mAP"]["0.85"] == 25.0


def test_only_first_10_predictions_count():
    ground_truth = [gt(1, [[0, 10]])]
    wrong = [[50 + 2 * i, 51 + 2 * i, 0.9 - 0.01 * i] for i in range(10)]
    # 11th listed is the only correct one (even with the highest score): cut -> AP 0, R1 0.
    b = brief([pred(1, wrong + [[0, 10, 1.0]])], ground_truth)
    assert b["MR-full-mAP"] == 0.0 and b["MR-full-R1@0.3"] == 0.0
    # 10th listed with the lowest score: ranked 10th -> precision 1/10 at recall 1 -> AP .1
    b = brief([pred(1, wrong[:9] + [[0, 10, 0.1]])], ground_truth)
    assert b["MR-full-mAP"] == 10.0
    # 10th listed with the highest score: ranked first -> AP 1; but R1 takes the first
    # *listed* window (the submission is expected to be sorted), which is wrong -> 0.
    b = brief([pred(1, wrong[:9] + [[0, 10, 1.0]])], ground_truth)
    assert b["MR-full-mAP"] == 100.0 and b["MR-full-R1@0.5"] == 0.0


def test_score_ties_keep_submission_order_and_are_deterministic():
    ground_truth = [gt(1, [[0, 10]])]
    # Equal scores: the wrong window is listed first -> ranked first: tp = [0, 1]
    #   precision [0, .5], recall [0, 1] -> AP .5
    sub = [pred(1, [[50, 60, 0.5], [0, 10, 0.5]])]
    m1 = evaluate(sub, ground_truth)
    assert m1["brief"]["MR-full-mAP"] == 50.0
    assert m1 == evaluate(sub, ground_truth)  # two runs, same metrics
    # Listed the other way round: correct one ranked first -> AP 1.
    sub = [pred(1, [[0, 10, 0.5], [50, 60, 0.5]])]
    assert brief(sub, ground_truth)["MR-full-mAP"] == 100.0


def test_empty_prediction_list_counts_as_zero():
    # q1 exact (AP 1, R1 hit), q2 no prediction (AP 0, R1 miss) -> 50 everywhere.
    b = brief([pred(1, [[0, 10, 1.0]]), pred(2, [])], [gt(1, [[0, 10]]), gt(2, [[0, 10]])])
    assert b["MR-full-mAP"] == 50.0
    assert b["MR-full-R1@0.5"] == 50.0


def test_length_splits():
    # q1 GT [0, 10]  (10 s: short, upper bound included)   pred exact         -> AP 1
    # q2 GT [0, 30]  (30 s: middle)                       pred [0, 12]: IoU .4 -> AP 0
    # q3 GT [0, 150] (150 s: long)                        pred exact         -> AP 1
    # q4 GT [[0, 5], [20, 60]] (short and long); ranked preds [20, 60] .9, [0, 5] .8
    #    full: tp [1, 1] -> AP 1; short (GT [0, 5] only): tp [0, 1] -> AP .5;
    #    long (GT [20, 60] only): tp [1, 0] -> AP 1
    ground_truth = [gt(1, [[0, 10]]), gt(2, [[0, 30]]), gt(3, [[0, 150]]),
                    gt(4, [[0, 5], [20, 60]])]
    sub = [pred(1, [[0, 10, 1.0]]), pred(2, [[0, 12, 1.0]]), pred(3, [[0, 150, 1.0]]),
           pred(4, [[20, 60, 0.9], [0, 5, 0.8]])]
    m = evaluate(sub, ground_truth)
    b = m["brief"]
    assert b["MR-full-mAP"] == 75.0  # (1 + 0 + 1 + 1) / 4
    assert b["MR-full-R1@0.3"] == 100.0  # q2 IoU .4 >= .3
    assert b["MR-full-R1@0.5"] == 75.0
    assert b["MR-short-mAP"] == 75.0  # q1 1, q4 .5
    assert b["MR-middle-mAP"] == 0.0  # q2
    assert b["MR-long-mAP"] == 100.0  # q3 1, q4 1
    assert [m["full"][f"MR-{s}"]["num_queries"] for s in ("short", "middle", "long")] == [2, 1, 2]
    # q4's first window [20, 60] has IoU 0 with its only short GT window -> R1 1/2
    assert m["full"]["MR-short"]["MR-R1"]["0.5"] == 50.0


def test_windows_longer_than_150s_only_in_full_and_empty_splits_are_none():
    m = evaluate([pred("a", [[0, 200, 1.0]])], [gt("a", [[0, 200]])], dataset="tacos")
    assert m["brief"]["MR-full-mAP"] == 100.0
    for s in ("short", "middle", "long"):
        assert m["brief"][f"MR-{s}-mAP"] is None
        assert m["full"][f"MR-{s}"]["num_queries"] == 0
    json.dumps(m)  # None -> null: still valid JSON


# ------------------------------------------------------------------------------------------
# Highlight detection
# ------------------------------------------------------------------------------------------


def hl_case():
    # q1: duration 10 -> 5 clips; annotator scores (A, B, C) per clip:
    #   clip0 [0,0,0]  clip1 [4,2,0]  clip2 [2,3,1]  clip3 [1,4,4]  clip4 [0,0,0]
    #   pred (4 scores, padded with 0 for clip4): .1 .9 .5 .7 -> ranking 1, 3, 2, 0, 4
    # q2: duration 6 -> 3 clips; clip0 [3,3,3], others 0.
    #   pred .2 .8 .8 5.0: the 4th score is past the video: Hit1 takes argmax = index 3 -> miss;
    #   AP uses the first 3 scores: clips 1, 2 tie at .8 (one threshold), then clip0.
    ground_truth = [
        gt(1, [[2, 8]], duration=10, relevant_clip_ids=[1, 2, 3],
           saliency_scores=[[4, 2, 0], [2, 3, 1], [1, 4, 4]]),
        gt(2, [[0, 2]], duration=6, relevant_clip_ids=[0], saliency_scores=[[3, 3, 3]]),
    ]
    sub = [pred(1, [[2, 8, 1.0]], pred_saliency_scores=[0.1, 0.9, 0.5, 0.7]),
           pred(2, [[0, 2, 1.0]], pred_saliency_scores=[0.2, 0.8, 0.8, 5.0])]
    return sub, ground_truth


def test_highlight_metrics_hand_case():
    # Hit1: q1's top clip1 = [4,2,0] is positive for A at every level (4 >= 2, 3, 4) -> hit;
    #   q2 -> miss. Hit1 = 50 at every level.
    # AP per annotator (interpolated precision averaged over the distinct recall levels):
    # Fair (>= 2):
    #   q1 A pos {1,2}: labels in rank order 1,0,1,0,0 -> levels .5: 1, 1: 2/3 -> .8333
    #   q1 B pos {1,2,3}: 1,1,1,0,0 -> 1;   q1 C pos {3}: 0,1,0,0,0 -> .5
    #   q2 A=B=C pos {0}: threshold .8 gives tp 0 / fp 2, threshold .2 gives 1/3 -> 1/3
    #   mAP = (.8333 + 1 + .5 + 3 * 1/3) / 6 = 3.3333 / 6 = .5556
    # Good (>= 3):
    #   q1 A {1} -> 1;  B {2,3}: 0,1,1,0,0 -> precisions 1/2, 2/3, interpolated 2/3, 2/3 -> 2/3
    #   q1 C {3} -> .5;  q2 -> 1/3 each
    #   mAP = (1 + 2/3 + .5 + 1) / 6 = 3.1667 / 6 = .5278
    # VeryGood (>= 4):
    #   q1 A {1} -> 1; B {3} -> .5; C {3} -> .5; q2 no positive -> 0 each
    #   mAP = 2 / 6 = .3333
    sub, ground_truth = hl_case()
    m = evaluate(sub, ground_truth)
    b = m["brief"]
    assert b["HL-min-Fair-mAP"] == 55.56
    assert b["HL-min-Good-mAP"] == 52.78
    assert b["HL-min-VeryGood-mAP"] == 33.33
    assert b["HL-min-Fair-Hit1"] == b["HL-min-Good-Hit1"] == b["HL-min-VeryGood-Hit1"] == 50.0
    assert list(b)[-6:] == ["HL-min-Fair-mAP", "HL-min-Fair-Hit1", "HL-min-Good-mAP",
                            "HL-min-Good-Hit1", "HL-min-VeryGood-mAP", "HL-min-VeryGood-Hit1"]
    assert m["full"]["HL-min-Good"] == {"HL-mAP": 52.78, "HL-Hit1": 50.0}
    assert b["MR-full-mAP"] == 100.0


def test_highlight_hit1_tie_takes_first_clip():
    ground_truth = [gt(1, [[0, 2]], duration=6, relevant_clip_ids=[0, 2],
                       saliency_scores=[[4, 4, 4], [0, 0, 0]])]
    # argmax of [.5, .5, .1] is clip0 (positive) -> hit
    b = brief([pred(1, [[0, 2, 1.0]], pred_saliency_scores=[0.5, 0.5, 0.1])], ground_truth)
    assert b["HL-min-Fair-Hit1"] == 100.0
    # argmax of [.1, .5, .5] is clip1 (negative) -> miss
    b = brief([pred(1, [[0, 2, 1.0]], pred_saliency_scores=[0.1, 0.5, 0.5])], ground_truth)
    assert b["HL-min-Fair-Hit1"] == 0.0


def test_highlight_skipped_for_tacos_or_without_saliency():
    sub, ground_truth = hl_case()
    assert not any(k.startswith("HL") for k in brief(sub, ground_truth, dataset="tacos"))
    plain_gt = [{k: v for k, v in d.items() if k not in ("relevant_clip_ids", "saliency_scores")}
                for d in ground_truth]
    assert not any(k.startswith("HL") for k in brief(sub, plain_gt))
    plain_sub = [{k: v for k, v in d.items() if k != "pred_saliency_scores"} for d in sub]
    m = evaluate(plain_sub, ground_truth)
    assert not any(k.startswith("HL") for k in m["brief"]) and "HL-min-Fair" not in m["full"]


# ------------------------------------------------------------------------------------------
# Malformed input
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sub, ground_truth, message", [
    ([{"pred_relevant_windows": []}], [gt(1, [[0, 1]])], r"submission line 1: missing key 'qid'"),
    ([pred(1, [[0, 1, 1]]), {"qid": 2}], [gt(1, [[0, 1]]), gt(2, [[0, 1]])],
     r"submission line 2 \(qid 2\): missing key 'pred_relevant_windows'"),
    ([pred(1, [[0, 1]])], [gt(1, [[0, 1]])], r"'pred_relevant_windows'\[0\] must be a list"),
    ([pred(1, [[2, 1, 0.5]])], [gt(1, [[0, 1]])], r"end < start"),
    ([pred(1, [[0, float("nan"), 0.5]])], [gt(1, [[0, 1]])], r"finite numbers"),
    ([pred(1, [[0, 1, 1]]), pred(3, [[0, 1, 1]])], [gt(1, [[0, 1]]), gt(2, [[0, 1]])],
     r"submission line 2 \(qid 3\): qid not found in ground truth"),
    ([pred(1, [[0, 1, 1]])], [gt(1, [[0, 1]]), gt(2, [[0, 1]])],
     r"1 ground truth qid\(s\) missing from submission: line 2 \(qid 2\)"),
    ([pred(1, [[0, 1, 1]]), pred(1, [[0, 1, 1]])], [gt(1, [[0, 1]])],
     r"submission line 2 \(qid 1\): duplicated qid \(first on line 1\)"),
    ([pred(1, [[0, 1, 1]])], [{"qid": 1}],
     r"ground truth line 1 \(qid 1\): missing key 'relevant_windows'"),
    ([pred(1, [[0, 1, 1]])], [gt(1, [])], r"'relevant_windows' is empty"),
    ([pred(1, [[0, 1, 1]], pred_saliency_scores=[1.0]), pred(2, [[0, 1, 1]])],
     [gt(1, [[0, 1]]), gt(2, [[0, 1]])],
     r"submission line 2 \(qid 2\): missing 'pred_saliency_scores'"),
    ([pred(1, [[0, 1, 1]], pred_saliency_scores=[1.0])],
     [gt(1, [[0, 1]], duration=4, relevant_clip_ids=[2], saliency_scores=[[1, 1, 1]])],
     r"'relevant_clip_ids'\[0\] = 2 is not a clip index in \[0, 2\)"),
    ([pred(1, [[0, 1, 1]], pred_saliency_scores=[1.0])],
     [gt(1, [[0, 1]], duration=4, relevant_clip_ids=[0], saliency_scores=[[1, 1]])],
     r"'saliency_scores'\[0\] must be 3 numbers"),
    ([], [gt(1, [[0, 1]])], r"submission: no entries"),
])
def test_malformed_input_raises(sub, ground_truth, message):
    with pytest.raises(EvalInputError, match=message):
        evaluate(sub, ground_truth)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset"):
        evaluate([pred(1, [[0, 1, 1]])], [gt(1, [[0, 1]])], dataset="charades")


def test_load_jsonl_errors_name_file_and_line(tmp_path):
    p = tmp_path / "sub.jsonl"
    ep = re.escape(str(p))
    p.write_text('{"qid": 1}\n{"qid": 2,\n')
    with pytest.raises(EvalInputError, match=rf"{ep} line 2: invalid JSON"):
        load_jsonl(p)
    p.write_text('{"qid": 1}\n[1, 2]\n')
    with pytest.raises(EvalInputError, match=rf"{ep} line 2: expected a JSON object"):
        load_jsonl(p)
    p.write_text('{"qid": 1}\n\n{"qid": 2}\n')
    with pytest.raises(EvalInputError, match=rf"{ep} line 2: blank line"):
        load_jsonl(p)
    p.write_text('{"qid": 1}\n{"qid": 2}\n\n')  # trailing blank lines are fine
    assert load_jsonl(p) == [{"qid": 1}, {"qid": 2}]


# ------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_cli_end_to_end(tmp_path):
    sub, ground_truth = hl_case()
    write_jsonl(tmp_path / "sub.jsonl", sub)
    write_jsonl(tmp_path / "gt.jsonl", ground_truth)
    out = tmp_path / "res" / "metrics.json"
    r = subprocess.run(
        [sys.executable, "-m", "cliptbp_kernels.pipeline.eval",
         "--submission", str(tmp_path / "sub.jsonl"), "--gt", str(tmp_path / "gt.jsonl"),
         "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    metrics = json.loads(out.read_text())
    assert metrics == evaluate(sub, ground_truth)
    assert json.loads(r.stdout) == metrics["brief"]  # the brief dict is printed
    assert metrics["brief"]["HL-min-Fair-mAP"] == 55.56

    # --dataset tacos: same MR metrics, no HL (in-process this time).
    assert main(["--submission", str(tmp_path / "sub.jsonl"), "--gt", str(tmp_path / "gt.jsonl"),
                 "--out", str(out), "--dataset", "tacos"]) == 0
    tacos = json.loads(out.read_text())
    assert tacos["brief"] == {k: v for k, v in metrics["brief"].items() if k.startswith("MR")}


def test_cli_reports_malformed_input(tmp_path, capsys):
    write_jsonl(tmp_path / "sub.jsonl", [pred(1, [[0, 1, 1]]), pred(7, [[0, 1, 1]])])
    write_jsonl(tmp_path / "gt.jsonl", [gt(1, [[0, 1]])])
    rc = main(["--submission", str(tmp_path / "sub.jsonl"), "--gt", str(tmp_path / "gt.jsonl"),
               "--out", str(tmp_path / "m.json")])
    assert rc == 2
    err = capsys.readouterr().err
    sub_path, gt_path = tmp_path / "sub.jsonl", tmp_path / "gt.jsonl"
    assert f"{sub_path} line 2 (qid 7): qid not found in {gt_path}" in err
    assert not (tmp_path / "m.json").exists()


def test_save_json_roundtrip(tmp_path):
    save_json({"a": [1, None]}, tmp_path / "x" / "y.json")
    assert json.loads((tmp_path / "x" / "y.json").read_text()) == {"a": [1, None]}


# ------------------------------------------------------------------------------------------
# Real ground truth (skipped when the shared data folder is absent)
# ------------------------------------------------------------------------------------------


@pytest.mark.skipif(not (DATA / "qvhighlights" / "highlight_val_release.jsonl").is_file(),
                    reason="shared QVHighlights data not available")
def test_gt_as_predictions_on_qvhighlights_val():
    ground_truth = load_jsonl(DATA / "qvhighlights" / "highlight_val_release.jsonl")
    sub = [pred(d["qid"], [w + [1.0] for w in d["relevant_windows"]]) for d in ground_truth]
    b = brief(sub, ground_truth)
    assert b["MR-full-R1@0.3"] == b["MR-full-R1@0.5"] == b["MR-full-R1@0.7"] == 100.0
    # Queries with more than 10 GT windows (13 in val) can recall only 10 of their n
    # windows (10 predictions at most): AP = 10 / n at every threshold, so the full mAP is
    # mean(min(1, 10 / n)) < 100.
    n = np.array([len(d["relevant_windows"]) for d in ground_truth])
    expected = float(f"{100 * np.mean(np.minimum(1.0, 10.0 / n)):.2f}")
    assert b["MR-full-mAP"] == b["MR-full-mAP@0.5"] == b["MR-full-mAP@0.75"] == expected
    # Without those queries, every MR-full metric is 100.
    keep = {d["qid"] for d in ground_truth if len(d["relevant_windows"]) <= 10}
    b = brief([s for s in sub if s["qid"] in keep], [d for d in ground_truth if d["qid"] in keep])
    assert all(v == 100.0 for k, v in b.items() if k.startswith("MR-full"))


@pytest.mark.skipif(not (DATA / "tacos" / "val.jsonl").is_file(),
                    reason="shared TACoS data not available")
def test_gt_as_predictions_on_tacos_val():
    ground_truth = load_jsonl(DATA / "tacos" / "val.jsonl")[:500]
    sub = [pred(d["qid"], [w + [1.0] for w in d["relevant_windows"]]) for d in ground_truth]
    b = brief(sub, ground_truth, dataset="tacos")
    assert all(v == 100.0 for k, v in b.items() if k.startswith("MR-full"))
    assert not any(k.startswith("HL") for k in b)
