"""What the evidence study measures beyond the QVHighlights metrics: a second decoder, the
error rates that ClipTBP's terms target, and per-query scores for paired statistics.

Definitions (docs/study.md gives them with the study's criteria):

* **Foreground-threshold segments** (`segment_windows`): the maximal runs of consecutive
  clips whose foreground probability is at least ``threshold``, each a window from its first
  clip's start to its last clip's end, scored by the run's mean probability, best first (at
  most 10). A query with no clip above the threshold gets its single most probable clip.
* **Distractor false-positive rate** (`error_rates`, ``distractor_fp``): over the queries
  with at least one distractor window, the fraction whose top-1 predicted window lies at least
  half (by its length) inside the query's distractor windows.
* **Gap-bridging rate** (``gap_bridging``): over the gaps between consecutive answer windows
  of a query, the fraction bridged: one of the query's top-``N`` predicted windows
  (``N`` = its number of answer windows) overlaps both windows around the gap.
* **Boundary error** (``boundary_error_s``): per answer window, the top-``N`` prediction of
  highest IoU with it (the higher ranked on ties), and ``(|start error| + |end error|) / 2``
  in seconds; the mean over answer windows.
* **Window miss rate** (``window_miss``): the fraction of answer windows that no top-``N``
  prediction matches at IoU >= 0.5.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from .eval import MAX_PRED_WINDOWS, MR_IOU_THRESHOLDS, _query_mr_ap, temporal_iou

__all__ = ["segment_windows", "predict_segments", "per_query_scores", "error_rates",
           "windows_per_query_group"]


def segment_windows(fg_prob: Sequence[float], threshold: float, clip_len: float,
                    duration: float, top: int = MAX_PRED_WINDOWS) -> List[List[float]]:
    """The foreground-threshold decoder on one video's clip probabilities ``[n]``: windows
    ``[start, end, score]`` in seconds (cut to ``duration``), best first."""
    if not 0.0 < float(threshold) < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
    p = np.asarray(fg_prob, dtype=np.float64)
    if p.ndim != 1 or p.size == 0:
        raise ValueError(f"fg_prob must be a non-empty 1-D sequence, got shape {p.shape}")
    on = p >= threshold
    runs = []
    i = 0
    while i < p.size:
        if not on[i]:
            i += 1
            continue
        j = i
        while j < p.size and on[j]:
            j += 1
        runs.append((i, j, float(p[i:j].mean())))
        i = j
    if not runs:
        k = int(np.argmax(p))
        runs = [(k, k + 1, float(p[k]))]
    runs.sort(key=lambda r: -r[2])
    out = []
    for st, ed, sc in runs[:top]:
        out.append([round(min(st * clip_len, duration), 4), round(min(ed * clip_len, duration), 4),
                    round(sc, 6)])
    return [w for w in out if w[1] > w[0]] or [[0.0, round(min(clip_len, duration), 4), 0.0]]


@torch.no_grad()
def predict_segments(out: Dict[str, Tensor], num_clips: Tensor, meta: List[dict],
                     threshold: float) -> List[dict]:
    """Submission lines (QVHighlights format) of the foreground-threshold decoder."""
    prob = torch.sigmoid(out["fg_logits"]).float().cpu()
    sal = out["saliency"].float().cpu()
    lines = []
    for b, m in enumerate(meta):
        n = int(num_clips[b])
        lines.append({
            "qid": m["qid"], "query": m.get("query", ""), "vid": m["vid"],
            "pred_relevant_windows": segment_windows(prob[b, :n].tolist(), threshold,
                                                     float(m["clip_len"]), float(m["duration"])),
            "pred_saliency_scores": [round(float(x), 6) for x in sal[b, :n]],
        })
    return lines


def _by_qid(lines: Iterable[dict]) -> Dict[Any, dict]:
    return {d["qid"]: d for d in lines}


def _ranked(pred: dict) -> List[List[float]]:
    wins = [list(map(float, w)) for w in pred["pred_relevant_windows"][:MAX_PRED_WINDOWS]]
    return sorted(wins, key=lambda w: -w[2])


def per_query_scores(submission: Sequence[dict], ground_truth: Sequence[dict]
                     ) -> Dict[Any, Dict[str, float]]:
    """Per query (ground-truth order): ``ap``, the MR mAP of the query (mean over IoU
    0.5:0.95, in percent, as the QVHighlights protocol averages it) and ``iou1``, the top-1
    window's best IoU with the query's windows (R1@t is the mean of ``iou1 >= t``)."""
    sub = _by_qid(submission)
    out: Dict[Any, Dict[str, float]] = {}
    for g in ground_truth:
        gt = [tuple(map(float, w)) for w in g["relevant_windows"]]
        pred = _ranked(sub[g["qid"]])
        ap = _query_mr_ap(gt, [tuple(w) for w in pred], MR_IOU_THRESHOLDS)
        iou1 = float(temporal_iou([pred[0][:2]], gt).max()) if pred and gt else 0.0
        out[g["qid"]] = {"ap": 100.0 * float(ap.mean()), "iou1": iou1}
    return out


def _inter(a: Sequence[float], b: Sequence[float]) -> float:
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))


def error_rates(submission: Sequence[dict], ground_truth: Sequence[dict],
                segments: Sequence[dict], qids: Optional[Iterable] = None) -> Dict[str, Any]:
    """The study's error rates (see the module docstring) of a submission, with the
    ``segments`` lines of the synthetic data set (answer and distractor windows per query);
    ``qids`` restricts them to those queries. Rates are fractions; each comes with the count
    it is over (``*_n``); a rate over nothing is ``None``."""
    sub = _by_qid(submission)
    seg = _by_qid(segments)
    keep = None if qids is None else set(qids)
    fp = fp_n = br = br_n = miss = n_win = 0
    errs: List[float] = []
    for g in ground_truth:
        q = g["qid"]
        if keep is not None and q not in keep:
            continue
        pred = _ranked(sub[q])
        answers = sorted([list(map(float, w)) for w in seg[q]["answer_windows"]])
        distractors = [list(map(float, w)) for w in seg[q]["distractor_windows"]]
        top_n = pred[:max(1, len(answers))]
        if distractors:
            fp_n += 1
            if pred:
                w = pred[0]
                inside = sum(_inter(w, d) for d in distractors)
                fp += int(w[1] > w[0] and inside >= 0.5 * (w[1] - w[0]))
        for a, b in zip(answers, answers[1:]):
            br_n += 1
            br += int(any(_inter(p, a) > 0 and _inter(p, b) > 0 for p in top_n))
        for a in answers:
            n_win += 1
            if not top_n:
                miss += 1
                continue
            ious = temporal_iou([p[:2] for p in top_n], [a])[:, 0]
            best = int(np.argmax(ious))  # first maximum: the higher ranked
            miss += int(ious[best] < 0.5)
            p = top_n[best]
            errs.append((abs(p[0] - a[0]) + abs(p[1] - a[1])) / 2.0)

    def rate(k: int, n: int) -> Optional[float]:
        return None if n == 0 else k / n

    return {"distractor_fp": rate(fp, fp_n), "distractor_fp_n": fp_n,
            "gap_bridging": rate(br, br_n), "gap_bridging_n": br_n,
            "boundary_error_s": float(np.mean(errs)) if errs else None,
            "window_miss": rate(miss, n_win), "windows_n": n_win}


def windows_per_query_group(ground_truth: Sequence[dict]) -> Dict[str, List]:
    """The qids of the queries with 1, 2 and 3 or more answer windows."""
    groups: Dict[str, List] = {"1": [], "2": [], "3+": []}
    for g in ground_truth:
        k = len(g["relevant_windows"])
        groups["1" if k <= 1 else "2" if k == 2 else "3+"].append(g["qid"])
    return groups
