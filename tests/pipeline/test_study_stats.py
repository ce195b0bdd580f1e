"""The study's statistics and its pre-registered verdict on hand-made numbers."""

import math

import numpy as np
import pytest

from cliptbp_kernels.pipeline.study_stats import (
    DELTA,
    paired_bootstrap,
    paired_t,
    spearman,
    verdict,
)


def test_paired_t_by_hand():
    r = paired_t([1.0, 2.0, 3.0])                  # mean 2, sd 1, t(2) = 4.303
    assert r["mean"] == 2.0 and r["n"] == 3
    assert r["lo"] == pytest.approx(2 - 4.303 / math.sqrt(3))
    assert r["hi"] == pytest.approx(2 + 4.303 / math.sqrt(3))
    assert paired_t([5.0])["lo"] is None and paired_t([])["mean"] is None
    assert paired_t([1.0, None, 3.0])["n"] == 2


def test_paired_bootstrap():
    const = paired_bootstrap(np.full((3, 50), 1.5), resamples=200)
    assert const["mean"] == const["lo"] == const["hi"] == 1.5
    rng = np.random.default_rng(1)
    d = rng.normal(0.5, 2.0, size=(3, 300))
    r = paired_bootstrap(d, resamples=2000, seed=3)
    assert r["lo"] < r["mean"] < r["hi"]
    # about the normal interval of the mean of the per-query means
    se = d.mean(0).std(ddof=1) / math.sqrt(300)
    assert r["hi"] - r["lo"] == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert paired_bootstrap(d, resamples=2000, seed=3) == r          # fixed seed
    with pytest.raises(ValueError, match="seeds, queries"):
        paired_bootstrap(np.zeros(5))


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 25, 100]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833, rel=1e-6)
    assert spearman([1, 1, 1], [1, 2, 3]) is None
    with pytest.raises(ValueError):
        spearman([1], [2])


def _gains(by_setting):
    return {d: {s: dict(zip(("mean", "lo", "hi"), v)) for s, v in by_setting.items()}
            for d in ("nms", "segments")}


DIFF = {d: {"default": 20.0, "noise": 40.0, "combined": 80.0} for d in ("nms", "segments")}
TERMS_OK = {"clip_reduces_distractor_fp": True, "boun_reduces_boundary_error": True,
            "boun_reduces_gap_bridging": True}


def test_verdict_support():
    g = _gains({"default": (0.1, -0.5, 0.7), "noise": (1.0, -0.2, 2.2),
                "combined": (4.0, 2.0, 6.0)})
    v = verdict(g, DIFF, ["combined"], TERMS_OK)
    assert v["outcome"] == "support" and not v["falsified"]


def test_verdict_falsified():
    g = _gains({"default": (0.1, -0.5, 0.7), "noise": (0.0, -1.0, 1.0),
                "combined": (-0.5, -1.5, 0.9)})
    v = verdict(g, DIFF, ["combined"], TERMS_OK)
    assert v["outcome"] == "falsified" and v["conditions"]["lower_bound_above_0_at_admitted"] \
        is False


def test_verdict_inconclusive_and_why():
    # above 0 but not growing with difficulty, and a term check fails
    g = _gains({"default": (3.0, 2.5, 3.5), "noise": (2.0, 1.0, 3.0),
                "combined": (1.0, 0.2, 2.5)})
    v = verdict(g, DIFF, ["combined"], {**TERMS_OK, "boun_reduces_gap_bridging": False})
    assert v["outcome"] == "inconclusive"
    text = " ".join(v["reasons"])
    assert "growing" in text and "default" in text and "term" in text
    assert "falsification" in text
    # nothing admitted: inconclusive by construction
    none = verdict(g, DIFF, [], TERMS_OK)
    assert none["outcome"] == "inconclusive" and "no hard setting" in none["reasons"][0]
    assert DELTA == 2.0
