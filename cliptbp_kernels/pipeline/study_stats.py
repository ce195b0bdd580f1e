"""Statistics of the evidence study (docs/study.md, "Statistics" and "What would count"):
paired differences over seeds with the t interval, the paired bootstrap over validation
queries pooled across seeds, Spearman's rank correlation, and the pre-registered verdict."""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import numpy as np

__all__ = ["T_975", "paired_t", "paired_bootstrap", "spearman", "verdict", "DELTA"]

#: Margin of the criteria, in mAP points (0-100 scale), fixed before any ClipTBP result.
DELTA = 2.0
#: Two-sided 95 % quantiles of Student's t by degrees of freedom (1..30); larger df use 1.96.
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def paired_t(diffs: Sequence[float]) -> Dict[str, Optional[float]]:
    """Mean of paired differences and its 95 % t interval (``None`` bounds for one pair)."""
    d = np.asarray([x for x in diffs if x is not None], dtype=np.float64)
    if d.size == 0:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    mean = float(d.mean())
    if d.size < 2:
        return {"mean": mean, "lo": None, "hi": None, "n": 1}
    df = d.size - 1
    t = T_975[df - 1] if df <= len(T_975) else 1.96
    half = t * float(d.std(ddof=1)) / math.sqrt(d.size)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": int(d.size)}


def paired_bootstrap(per_query_diffs: np.ndarray, resamples: int = 10000, seed: int = 0
                     ) -> Dict[str, float]:
    """95 % percentile interval of the mean paired difference, resampling queries.

    ``per_query_diffs``: ``[S, Q]`` differences (ClipTBP minus baseline) per training seed
    and validation query; a resample draws ``Q`` queries with replacement and keeps each
    query's ``S`` seed pairs together (the statistic is the mean over seeds and queries)."""
    d = np.asarray(per_query_diffs, dtype=np.float64)
    if d.ndim != 2 or d.shape[1] == 0:
        raise ValueError(f"per_query_diffs must be [seeds, queries], got shape {d.shape}")
    per_query = d.mean(axis=0)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, per_query.size, size=(int(resamples), per_query.size))
    means = per_query[idx].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"mean": float(per_query.mean()), "lo": float(lo), "hi": float(hi),
            "resamples": int(resamples)}


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(x.size)
    ranks[order] = np.arange(1, x.size + 1)
    for v in np.unique(x):                       # ties share their mean rank
        sel = x == v
        ranks[sel] = ranks[sel].mean()
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> Optional[float]:
    """Spearman's rank correlation (mean ranks for ties); ``None`` if either is constant."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.size < 2:
        raise ValueError("spearman needs two sequences of the same length >= 2")
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def verdict(gains: Dict[str, Dict[str, Dict]], difficulty: Dict[str, Dict[str, float]],
            admitted: Sequence[str], term_checks: Dict[str, Optional[bool]],
            delta: float = DELTA, decoders: Sequence[str] = ("nms", "segments")) -> Dict:
    """The pre-registered verdict (docs/study.md).

    Args:
        gains: ``gains[decoder][setting]`` = the bootstrap of the mAP gain (``mean``, ``lo``,
            ``hi``).
        difficulty: ``difficulty[decoder][setting]`` = 100 minus the baseline's mAP with the
            NMS decoder (the same for both decoders' correlation).
        admitted: the admitted hard settings.
        term_checks: ``{"clip_reduces_distractor_fp": bool, "boun_reduces_boundary_error":
            bool, "boun_reduces_gap_bridging": bool}`` (``None`` when not measurable).

    Returns a dict with each condition, ``support``, ``falsified`` and ``outcome``
    (``"support"``, ``"falsified"`` or ``"inconclusive"``) and the reasons."""
    reasons: List[str] = []
    conds: Dict[str, object] = {}
    if not admitted:
        reasons.append("no hard setting was admitted")
    lower_above_0 = bool(admitted) and all(gains[d][s]["lo"] > 0 for d in decoders
                                           for s in admitted)
    upper_below_delta = bool(admitted) and all(gains[d][s]["hi"] < delta for d in decoders
                                               for s in admitted)
    conds["lower_bound_above_0_at_admitted"] = lower_above_0
    rho = {}
    for d in decoders:
        settings = list(gains[d])
        rho[d] = spearman([difficulty[d][s] for s in settings],
                          [gains[d][s]["mean"] for s in settings])
    conds["spearman_difficulty_gain"] = rho
    growing = all(r is not None and r > 0 for r in rho.values())
    conds["growing_with_difficulty"] = growing
    about0 = all((gains[d]["default"]["lo"] <= 0 <= gains[d]["default"]["hi"])
                 or abs(gains[d]["default"]["mean"]) < delta for d in decoders)
    conds["about_0_at_default"] = about0
    terms_ok = all(v is True for v in term_checks.values())
    conds["terms_reduce_their_errors"] = dict(term_checks)
    support = lower_above_0 and growing and about0 and terms_ok
    falsified = upper_below_delta
    if support:
        outcome = "support"
    elif falsified:
        outcome = "falsified"
    else:
        outcome = "inconclusive"
        for name, ok in (("lower bound above 0 at every admitted setting", lower_above_0),
                         ("gain growing with difficulty", growing),
                         ("gain about 0 at the default", about0),
                         ("each term reducing its targeted error", terms_ok)):
            if not ok:
                reasons.append(f"not met for support: {name}")
        if admitted and not upper_below_delta:
            reasons.append(f"not met for falsification: upper bound below +{delta} at every "
                           "admitted setting with both decoders")
    return {"conditions": conds, "support": support, "falsified": falsified,
            "outcome": outcome, "reasons": reasons, "delta": delta,
            "admitted": list(admitted)}
