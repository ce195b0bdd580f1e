"""Evaluation of moment retrieval and highlight detection with the QVHighlights protocol.

This module computes the metrics of the standard QVHighlights evaluation (the
``standalone_eval`` protocol of Moment-DETR) on a submission and a ground-truth file,
from Python (:func:`evaluate`) or from the command line::

    cliptbp-eval --submission S.jsonl --gt G.jsonl --out M.json \\
        [--dataset qvhighlights|tacos]

Input format (JSON lines, one query per line)
---------------------------------------------
Submission: ``{"qid", "query", "vid", "pred_relevant_windows": [[start, end, score], ...],
"pred_saliency_scores": [one score per 2 s clip]}`` (``pred_saliency_scores`` optional).

Ground truth: ``{"qid", "query", "duration", "vid", "relevant_windows": [[start, end], ...],
"relevant_clip_ids": [...], "saliency_scores": [[a1, a2, a3], ...]}``; the saliency fields
are optional (TACoS-style ground truth has only ``relevant_windows``). Only ``qid``,
``relevant_windows`` and (for the highlight metrics) ``duration``, ``relevant_clip_ids`` and
``saliency_scores`` are read; the other keys are ignored.

The qids of the two files must be the same set: a submission qid absent from the ground truth
and a ground-truth qid absent from the submission are both errors, as are duplicated qids.

Protocol
--------
Moment retrieval (MR), per length split:

* Only the first ``MAX_PRED_WINDOWS`` (10) windows of ``pred_relevant_windows`` are used, in
  the order of the submission (they are *not* re-sorted before the cut: a submission is
  expected to list its windows by decreasing score).
* **mAP**: for each query and each IoU threshold in 0.5:0.05:0.95, the kept windows are ranked
  by decreasing score and matched greedily to the ground-truth windows: each prediction, in
  rank order, takes the not-yet-matched ground-truth window of highest IoU among those with
  IoU >= threshold (a true positive); otherwise it is a false positive. The average
  precision is the area under the interpolated precision/recall curve (VOC style: the
  precision at recall r is the maximum precision at any recall >= r), with the number of
  ground-truth windows of the query as the number of positives. The AP is averaged over the
  queries for each threshold, then over the thresholds ("average").
* **R1@t**: the first window of ``pred_relevant_windows`` (as listed) is a hit when its
  largest IoU with the ground-truth windows of the query is >= t. Reported for t = 0.3 (the
  TACoS headline metric) and 0.5:0.05:0.95.
* Length splits: ``full`` uses all queries and windows unchanged; ``short``, ``middle`` and
  ``long`` keep, for each query, only the ground-truth windows whose length l satisfies
  0 < l <= 10, 10 < l <= 30 and 30 < l <= 150 seconds, and drop the queries left without any
  window (windows longer than 150 s therefore only count in ``full``).

Highlight detection (HL), only when every submission line has ``pred_saliency_scores``,
every ground-truth line has saliency annotations, and the dataset is not ``tacos``:

* The video has ``int(duration / 2)`` clips of 2 s; clips outside ``relevant_clip_ids`` have
  score 0 for all three annotators. For a level ``HL-min-<name>`` a clip is positive for an
  annotator when that annotator gave it a score >= the minimum score of the level
  (Fair = 2, Good = 3, VeryGood = 4): "min" is this minimum positive score.
* **Hit1**: the clip of largest predicted saliency is a hit when at least one annotator marks
  it positive; averaged over queries.
* **mAP**: for each query and each annotator, the predicted scores (cut, or padded with 0, to
  the number of clips) rank the clips; the AP is the mean, over the distinct recall levels
  reached, of the interpolated precision at that level (0 when the annotator has no positive
  clip, 1 when all clips are positive). Averaged over all (query, annotator) pairs.

All metrics are reported * 100, rounded to 2 decimals.

Deterministic tie rules (the same as the reference implementation's usual behaviour)
--------------------------------------------------------------------------------------
* Predicted windows of equal score keep their submission order (stable sort).
* When a prediction has the same IoU with several ground-truth windows, it tries the one
  listed last in the ground truth first.
* For Hit1, among clips of equal predicted saliency, the first clip is taken.
* For HL mAP, clips of equal predicted saliency form one threshold of the precision/recall
  curve (they enter the ranking together).

Deviations, for inputs on which the reference implementation fails or is ill-defined
---------------------------------------------------------------------------------------
* A query with an empty ``pred_relevant_windows`` counts as AP 0 at every threshold and as a
  miss for R1 (the reference drops it from the mAP average and crashes in R1).
* A length split without any query reports ``None`` for its metrics (the reference crashes).
* Two zero-length windows at the same time have IoU 0 (the reference divides 0 by 0).
* Ground-truth lines with an empty ``relevant_windows`` list, windows with ``end < start``,
  non-finite numbers and clip ids outside the video are rejected with an error.
"""

from __future__ import annotations

import argparse
import json
import math
import numbers
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "CLIP_LENGTH",
    "DATASETS",
    "EvalInputError",
    "HL_MIN_SCORES",
    "LENGTH_RANGES",
    "MAX_PRED_WINDOWS",
    "MR_IOU_THRESHOLDS",
    "R1_IOU_THRESHOLDS",
    "evaluate",
    "load_jsonl",
    "main",
    "save_json",
    "temporal_iou",
]

#: Number of predicted windows per query used by the MR metrics (the first ones listed).
MAX_PRED_WINDOWS = 10
#: IoU thresholds of MR mAP: 0.5, 0.55, ..., 0.95.
MR_IOU_THRESHOLDS: Tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
#: IoU thresholds of R1: 0.3 (TACoS headline metric) and those of mAP.
R1_IOU_THRESHOLDS: Tuple[float, ...] = (0.3,) + MR_IOU_THRESHOLDS
#: Length splits of the ground-truth windows, (min, max] in seconds; None = no filtering.
LENGTH_RANGES: Dict[str, Optional[Tuple[float, float]]] = {
    "full": None,
    "short": (0.0, 10.0),
    "middle": (10.0, 30.0),
    "long": (30.0, 150.0),
}
#: Highlight levels: minimum annotator score (0..4) of a positive clip.
HL_MIN_SCORES: Dict[str, int] = {"Fair": 2, "Good": 3, "VeryGood": 4}
#: Clip length in seconds of the saliency annotations.
CLIP_LENGTH = 2.0
#: Number of annotators per clip in the saliency annotations.
NUM_ANNOTATORS = 3
#: Supported datasets; with "tacos" the HL metrics are never computed.
DATASETS = ("qvhighlights", "tacos")


class EvalInputError(ValueError):
    """Malformed or inconsistent submission / ground-truth data."""


# --------------------------------------------------------------------------------------
# I/O
# --------------------------------------------------------------------------------------


def load_jsonl(path: "str | os.PathLike[str]") -> List[Dict[str, Any]]:
    """Read a JSON-lines file into a list of dicts, one per line.

    Blank lines at the end of the file are ignored; any other blank line, invalid JSON or a
    line that is not a JSON object raises :class:`EvalInputError` naming the file and line,
    so that entry ``i`` of the result is line ``i + 1`` of the file.
    """
    with open(path, "r", encoding="utf-8") as f:
        lines = f.read().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    records = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            raise EvalInputError(f"{path} line {lineno}: blank line")
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise EvalInputError(f"{path} line {lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise EvalInputError(
                f"{path} line {lineno}: expected a JSON object, got {type(obj).__name__}")
        records.append(obj)
    return records


def save_json(obj: Any, path: "str | os.PathLike[str]") -> None:
    """Write ``obj`` as indented JSON to ``path`` (parent folders are created)."""
    parent = os.path.dirname(os.fspath(path))
    if parent:
        os.makedirs(parent, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=4)
        f.write("\n")


# --------------------------------------------------------------------------------------
# IoU
# --------------------------------------------------------------------------------------


def temporal_iou(windows_a, windows_b):
    """Temporal IoU of windows ``[start, end]``.

    With two windows (1-D sequences of length >= 2) returns a float; with arrays of shape
    (N, >=2) and (M, >=2) returns the (N, M) matrix of IoUs. Columns beyond the first two
    (e.g. a score) are ignored. IoU = |intersection| / |union|, and 0 where the union has
    zero length.
    """
    a = np.asarray(windows_a, dtype=np.float64)
    b = np.asarray(windows_b, dtype=np.float64)
    single = a.ndim == 1 and b.ndim == 1
    a2 = a.reshape(-1, a.shape[-1]) if a.size else a.reshape(0, 2)
    b2 = b.reshape(-1, b.shape[-1]) if b.size else b.reshape(0, 2)
    if a2.shape[1] < 2 or b2.shape[1] < 2:
        raise ValueError("windows must have at least 2 columns: [start, end]")
    st_a, ed_a = a2[:, 0:1], a2[:, 1:2]
    st_b, ed_b = b2[:, 0][None, :], b2[:, 1][None, :]
    inter = np.clip(np.minimum(ed_a, ed_b) - np.maximum(st_a, st_b), 0.0, None)
    union = (ed_a - st_a) + (ed_b - st_b) - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    if single:
        return float(iou[0, 0])
    return iou


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _where(name: str, idx: int, qid: Any = None) -> str:
    s = f"{name} line {idx + 1}"
    return s if qid is None else f"{s} (qid {qid!r})"


def _check_qid(d: Dict[str, Any], name: str, idx: int) -> Any:
    if not isinstance(d, dict):
        raise EvalInputError(f"{_where(name, idx)}: expected a dict, got {type(d).__name__}")
    if "qid" not in d:
        raise EvalInputError(f"{_where(name, idx)}: missing key 'qid'")
    qid = d["qid"]
    if isinstance(qid, bool) or not isinstance(qid, (int, str)):
        raise EvalInputError(
            f"{_where(name, idx)}: 'qid' must be an int or a str, got {type(qid).__name__}")
    return qid


def _check_window(w: Any, size: int, key: str, j: int, where: str) -> Tuple[float, ...]:
    what = "[start, end, score]" if size == 3 else "[start, end]"
    if not isinstance(w, (list, tuple)) or len(w) != size:
        raise EvalInputError(f"{where}: '{key}'[{j}] must be a list {what}, got {w!r}")
    if not all(_is_number(x) for x in w):
        raise EvalInputError(f"{where}: '{key}'[{j}] must hold finite numbers, got {w!r}")
    if w[1] < w[0]:
        raise EvalInputError(f"{where}: '{key}'[{j}] has end < start: {w!r}")
    return tuple(float(x) for x in w)


def _check_number_list(v: Any, key: str, where: str) -> None:
    if not isinstance(v, (list, tuple)):
        raise EvalInputError(f"{where}: '{key}' must be a list, got {type(v).__name__}")
    for j, x in enumerate(v):
        if not _is_number(x):
            raise EvalInputError(f"{where}: '{key}'[{j}] must be a finite number, got {x!r}")


def _index_by_qid(records: Sequence[Dict[str, Any]], name: str) -> Dict[Any, int]:
    if not isinstance(records, (list, tuple)):
        raise EvalInputError(f"{name}: expected a list of dicts, got {type(records).__name__}")
    if len(records) == 0:
        raise EvalInputError(f"{name}: no entries")
    qid2idx: Dict[Any, int] = {}
    for idx, d in enumerate(records):
        qid = _check_qid(d, name, idx)
        if qid in qid2idx:
            raise EvalInputError(
                f"{_where(name, idx, qid)}: duplicated qid (first on line {qid2idx[qid] + 1})")
        qid2idx[qid] = idx
    return qid2idx


def _window_list(d: Dict[str, Any], key: str, where: str) -> list:
    """d[key], which must be present and a list."""
    if key not in d:
        raise EvalInputError(f"{where}: missing key '{key}'")
    ws = d[key]
    if not isinstance(ws, (list, tuple)):
        raise EvalInputError(f"{where}: '{key}' must be a list, got {type(ws).__name__}")
    return ws


def _parse_pred_windows(d: Dict[str, Any], where: str) -> List[Tuple[float, float, float]]:
    ws = _window_list(d, "pred_relevant_windows", where)
    return [_check_window(w, 3, "pred_relevant_windows", j, where) for j, w in enumerate(ws)]


def _parse_gt_windows(d: Dict[str, Any], where: str) -> List[Tuple[float, float]]:
    ws = _window_list(d, "relevant_windows", where)
    if len(ws) == 0:
        raise EvalInputError(f"{where}: 'relevant_windows' is empty")
    return [_check_window(w, 2, "relevant_windows", j, where) for j, w in enumerate(ws)]


def _parse_gt_saliency(d: Dict[str, Any], where: str) -> np.ndarray:
    """(num_clips, NUM_ANNOTATORS) array of annotator scores, 0 outside the relevant clips."""
    for key in ("duration", "relevant_clip_ids", "saliency_scores"):
        if key not in d:
            raise EvalInputError(f"{where}: missing key '{key}'")
    duration = d["duration"]
    if not _is_number(duration) or duration <= 0:
        raise EvalInputError(f"{where}: 'duration' must be a positive number, got {duration!r}")
    num_clips = int(duration / CLIP_LENGTH)
    if num_clips == 0:
        raise EvalInputError(f"{where}: 'duration' {duration!r} is shorter than one clip")
    ids, scores = d["relevant_clip_ids"], d["saliency_scores"]
    if not isinstance(ids, (list, tuple)) or not isinstance(scores, (list, tuple)):
        raise EvalInputError(f"{where}: 'relevant_clip_ids' and 'saliency_scores' must be lists")
    if len(ids) != len(scores):
        raise EvalInputError(
            f"{where}: 'relevant_clip_ids' has {len(ids)} entries but 'saliency_scores' "
            f"has {len(scores)}")
    out = np.zeros((num_clips, NUM_ANNOTATORS), dtype=np.float64)
    for j, (cid, row) in enumerate(zip(ids, scores)):
        if isinstance(cid, bool) or not isinstance(cid, numbers.Integral) \
                or not 0 <= cid < num_clips:
            raise EvalInputError(
                f"{where}: 'relevant_clip_ids'[{j}] = {cid!r} is not a clip index in "
                f"[0, {num_clips}) (duration {duration!r}, {CLIP_LENGTH:g} s clips)")
        if not isinstance(row, (list, tuple)) or len(row) != NUM_ANNOTATORS \
                or not all(_is_number(x) for x in row):
            raise EvalInputError(
                f"{where}: 'saliency_scores'[{j}] must be {NUM_ANNOTATORS} numbers, got {row!r}")
        out[int(cid)] = row
    return out


# --------------------------------------------------------------------------------------
# Moment retrieval
# --------------------------------------------------------------------------------------


def _fmt(v: Optional[float]) -> Optional[float]:
    """Metric in [0, 1] -> percentage with 2 decimals (None stays None)."""
    return None if v is None else float(f"{100.0 * float(v):.2f}")


def _voc_ap(tp: np.ndarray, num_gt: int) -> float:
    """Area under the interpolated precision/recall curve of ranked hits ``tp`` (0/1)."""
    cum_tp = np.cumsum(tp)
    precision = cum_tp / np.arange(1, len(tp) + 1)
    recall = cum_tp / num_gt
    mprec = np.concatenate([[0.0], precision, [0.0]])
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mprec = np.maximum.accumulate(mprec[::-1])[::-1]  # max precision at recall >= r
    idx = np.nonzero(mrec[1:] != mrec[:-1])[0] + 1
    return float(np.sum((mrec[idx] - mrec[idx - 1]) * mprec[idx]))


def _query_mr_ap(gt_windows: Sequence[Tuple[float, float]],
                 pred_windows: Sequence[Tuple[float, float, float]],
                 thresholds: Sequence[float]) -> np.ndarray:
    """AP of one query at each IoU threshold (windows already cut to the first 10)."""
    ap = np.zeros(len(thresholds))
    if not pred_windows or not gt_windows:
        return ap
    ranked = sorted(pred_windows, key=lambda w: -w[2])  # stable: ties keep submission order
    ious = temporal_iou([w[:2] for w in ranked], list(gt_windows))  # (P, G)
    num_gt = len(gt_windows)
    # Ground-truth windows each prediction tries, by decreasing IoU; ties: last listed first.
    orders = [sorted(range(num_gt), key=lambda j, r=row: (-r[j], -j)) for row in ious]
    for t, thr in enumerate(thresholds):
        matched = [False] * num_gt
        tp = np.zeros(len(ranked))
        for i, order in enumerate(orders):
            for j in order:
                if ious[i, j] < thr:
                    break
                if matched[j]:
                    continue
                matched[j] = True
                tp[i] = 1.0
                break
        ap[t] = _voc_ap(tp, num_gt)
    return ap


def _eval_mr_split(queries: List[Tuple[List[Tuple[float, float]],
                                       List[Tuple[float, float, float]]]]) -> Dict[str, Any]:
    """MR metrics on (gt_windows, pred_windows) pairs, pred windows as listed (uncut)."""
    out: Dict[str, Any] = {"num_queries": len(queries)}
    if not queries:
        out["MR-mAP"] = {**{str(t): None for t in MR_IOU_THRESHOLDS}, "average": None}
        out["MR-R1"] = {str(t): None for t in R1_IOU_THRESHOLDS}
        return out
    ap = np.stack([_query_mr_ap(gt, pred[:MAX_PRED_WINDOWS], MR_IOU_THRESHOLDS)
                   for gt, pred in queries])  # (Q, T)
    ap_thr = ap.mean(axis=0)
    out["MR-mAP"] = {**{str(t): _fmt(v) for t, v in zip(MR_IOU_THRESHOLDS, ap_thr)},
                     "average": _fmt(ap_thr.mean())}
    top1_iou = np.array([
        float(temporal_iou([pred[0][:2]], list(gt)).max()) if pred else 0.0
        for gt, pred in queries])
    out["MR-R1"] = {str(t): _fmt(np.mean(top1_iou >= t)) for t in R1_IOU_THRESHOLDS}
    return out


def _split_queries(gt_windows: List[List[Tuple[float, float]]],
                   preds: List[List[Tuple[float, float, float]]],
                   length_range: Optional[Tuple[float, float]]):
    if length_range is None:
        return list(zip(gt_windows, preds))
    lo, hi = length_range
    out = []
    for gt, pred in zip(gt_windows, preds):
        kept = [w for w in gt if lo < w[1] - w[0] <= hi]
        if kept:
            out.append((kept, pred))
    return out


# --------------------------------------------------------------------------------------
# Highlight detection
# --------------------------------------------------------------------------------------


def _saliency_ap(positive: np.ndarray, scores: np.ndarray) -> float:
    """AP of clip scores against binary labels: mean, over the distinct recall levels, of
    the interpolated precision (max precision at any recall >= the level). Clips of equal
    score are one threshold. 0 without positives, 1 when every clip is positive."""
    n_pos = int(positive.sum())
    if n_pos == 0:
        return 0.0
    if n_pos == len(positive):
        return 1.0
    order = np.argsort(-scores, kind="stable")
    s, pos = scores[order], positive[order]
    tp = np.cumsum(pos)
    fp = np.cumsum(~pos)
    last_of_group = np.concatenate([s[1:] != s[:-1], [True]])
    tp, fp = tp[last_of_group], fp[last_of_group]  # one point per distinct threshold
    precision = tp / (tp + fp)
    interp = np.maximum.accumulate(precision[::-1])[::-1]
    new_level = np.concatenate([[tp[0] > 0], tp[1:] != tp[:-1]])
    return float(interp[new_level].mean())


def _eval_hl(gt_scores: List[np.ndarray], pred_scores: List[np.ndarray]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for name, min_score in HL_MIN_SCORES.items():
        aps, hits = [], []
        for gt, pred in zip(gt_scores, pred_scores):
            positive = gt >= min_score  # (num_clips, annotators)
            num_clips = positive.shape[0]
            top = int(np.argmax(pred))  # first clip among equal maxima
            hits.append(float(top < num_clips and positive[top].any()))
            if len(pred) >= num_clips:
                p = pred[:num_clips]
            else:
                p = np.concatenate([pred, np.zeros(num_clips - len(pred))])
            aps.extend(_saliency_ap(positive[:, a], p) for a in range(positive.shape[1]))
        out[f"HL-min-{name}"] = {"HL-mAP": _fmt(np.mean(aps)), "HL-Hit1": _fmt(np.mean(hits))}
    return out


# --------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------


def evaluate(submission: List[Dict[str, Any]], ground_truth: List[Dict[str, Any]],
             dataset: str = "qvhighlights", *, submission_name: str = "submission",
             ground_truth_name: str = "ground truth") -> Dict[str, Any]:
    """Evaluate a submission against the ground truth with the QVHighlights protocol.

    Args:
        submission: one dict per query (see the module docstring), e.g. from
            :func:`load_jsonl`.
        ground_truth: one dict per query.
        dataset: ``"qvhighlights"`` or ``"tacos"``; with ``"tacos"`` the HL metrics are never
            computed. Nothing else depends on it.
        submission_name, ground_truth_name: names used in error messages (e.g. file paths).

    Returns:
        ``{"brief": {...}, "full": {...}}``. ``brief`` holds ``MR-full-R1@0.3``,
        ``MR-full-R1@0.5``, ``MR-full-R1@0.7``, ``MR-full-mAP``, ``MR-full-mAP@0.5``,
        ``MR-full-mAP@0.75``, ``MR-long-mAP``, ``MR-middle-mAP``, ``MR-short-mAP`` and, when
        computed, ``HL-min-{Fair,Good,VeryGood}-{mAP,Hit1}``. ``full`` holds, for each split
        ``MR-{full,short,middle,long}``, ``num_queries``, ``MR-mAP`` (per threshold and
        ``average``) and ``MR-R1`` (per threshold), and ``HL-min-*`` with ``HL-mAP`` and
        ``HL-Hit1`` when computed. Values are percentages with 2 decimals; a split without
        queries has ``None`` values.

    Raises:
        EvalInputError: malformed entries, duplicated qids, or qid sets that differ.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    sub_idx = _index_by_qid(submission, submission_name)
    gt_idx = _index_by_qid(ground_truth, ground_truth_name)
    for qid, i in sub_idx.items():
        if qid not in gt_idx:
            raise EvalInputError(
                f"{_where(submission_name, i, qid)}: qid not found in {ground_truth_name}")
    missing = [(qid, i) for qid, i in gt_idx.items() if qid not in sub_idx]
    if missing:
        shown = ", ".join(f"line {i + 1} (qid {q!r})" for q, i in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise EvalInputError(
            f"{len(missing)} {ground_truth_name} qid(s) missing from {submission_name}: "
            f"{shown}{more}")

    # Queries in ground-truth order.
    gt_windows, preds = [], []
    for qid, gi in gt_idx.items():
        si = sub_idx[qid]
        gt_windows.append(_parse_gt_windows(ground_truth[gi], _where(ground_truth_name, gi, qid)))
        preds.append(_parse_pred_windows(submission[si], _where(submission_name, si, qid)))

    full: Dict[str, Any] = {}
    for split, length_range in LENGTH_RANGES.items():
        full[f"MR-{split}"] = _eval_mr_split(_split_queries(gt_windows, preds, length_range))

    brief: Dict[str, Any] = {}
    mr_full = full["MR-full"]
    for t in (0.3, 0.5, 0.7):
        brief[f"MR-full-R1@{t}"] = mr_full["MR-R1"][str(t)]
    brief["MR-full-mAP"] = mr_full["MR-mAP"]["average"]
    brief["MR-full-mAP@0.5"] = mr_full["MR-mAP"]["0.5"]
    brief["MR-full-mAP@0.75"] = mr_full["MR-mAP"]["0.75"]
    for split in ("long", "middle", "short"):
        brief[f"MR-{split}-mAP"] = full[f"MR-{split}"]["MR-mAP"]["average"]

    if dataset != "tacos" and _has_saliency(submission, ground_truth, sub_idx, gt_idx,
                                            submission_name, ground_truth_name):
        gt_scores, pred_scores = [], []
        for qid, gi in gt_idx.items():
            si = sub_idx[qid]
            gt_scores.append(_parse_gt_saliency(ground_truth[gi],
                                                _where(ground_truth_name, gi, qid)))
            where = _where(submission_name, si, qid)
            p = submission[si]["pred_saliency_scores"]
            _check_number_list(p, "pred_saliency_scores", where)
            if len(p) == 0:
                raise EvalInputError(f"{where}: 'pred_saliency_scores' is empty")
            pred_scores.append(np.asarray(p, dtype=np.float64))
        hl = _eval_hl(gt_scores, pred_scores)
        full.update(hl)
        for level, metrics in hl.items():
            brief[f"{level}-mAP"] = metrics["HL-mAP"]
            brief[f"{level}-Hit1"] = metrics["HL-Hit1"]

    return {"brief": brief, "full": full}


def _has_saliency(submission, ground_truth, sub_idx, gt_idx, sub_name, gt_name) -> bool:
    """True when every submission line has pred_saliency_scores and every GT line has
    saliency annotations; a file where only some lines have them is an error."""
    def presence(records, index, keys, name):
        flags = [all(records[i].get(k) is not None for k in keys) for i in index.values()]
        if any(flags) and not all(flags):
            qid, i = next((q, i) for (q, i), f in zip(index.items(), flags) if not f)
            raise EvalInputError(
                f"{_where(name, i, qid)}: missing {' / '.join(repr(k) for k in keys)} while "
                f"other lines have them")
        return all(flags)

    has_sub = presence(submission, sub_idx, ("pred_saliency_scores",), sub_name)
    has_gt = presence(ground_truth, gt_idx, ("relevant_clip_ids", "saliency_scores"), gt_name)
    return has_sub and has_gt


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point: evaluate, write the metrics JSON, print the brief dict."""
    parser = argparse.ArgumentParser(
        prog="cliptbp-eval",
        description="Moment retrieval / highlight detection evaluation (QVHighlights protocol)")
    parser.add_argument("--submission", required=True, help="predictions, JSON lines")
    parser.add_argument("--gt", required=True, help="ground truth, JSON lines")
    parser.add_argument("--out", required=True, help="where to write the metrics JSON")
    parser.add_argument("--dataset", choices=DATASETS, default="qvhighlights",
                        help="with 'tacos', the highlight metrics are never computed")
    args = parser.parse_args(argv)
    try:
        submission = load_jsonl(args.submission)
        ground_truth = load_jsonl(args.gt)
        metrics = evaluate(submission, ground_truth, args.dataset,
                           submission_name=args.submission, ground_truth_name=args.gt)
    except (EvalInputError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    save_json(metrics, args.out)
    print(json.dumps(metrics["brief"], indent=4))
    return 0


if __name__ == "__main__":
    sys.exit(main())
