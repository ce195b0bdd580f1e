"""windows_to_labels' baseline rules against the baselines' own foreground.

``tests/fixtures/baseline_foreground.json`` holds, per baseline, data set and rule, a digest
of the foreground that the baseline's own code computes for every query of the real
annotation files (recorded by ``scripts/record_baselines.py`` from checkouts of UniVTG,
FlashVTG, lighthouse, Video Mamba Suite and TD-DETR at the commits of docs/integrations.md).
Here the matching rule runs on the same files in ``../shared/data`` (skipped when absent) and
must give the same digest.
"""

import json
import math

import pytest

from cliptbp_kernels.labels import LABEL_RULES, windows_to_labels
from paths import REPO, script_module, shared_records

FIXTURE = REPO / "tests" / "fixtures" / "baseline_foreground.json"
RECORDS = json.loads(FIXTURE.read_text())["records"]


def _script():
    return script_module("record_baselines")


def test_fixture_covers_every_baseline_rule():
    seen = {(r["baseline"], r["data"], r["rule"], r["clip_len_mode"]) for r in RECORDS}
    assert ("UniVTG", "qvhighlights/highlight_val_release.jsonl", "univtg", "fixed") in seen
    assert ("UniVTG", "tacos/val.jsonl", "univtg", "fixed") in seen
    assert ("FlashVTG", "tacos/val.jsonl", "floor", "duration/n") in seen
    assert ("lighthouse", "tacos/val.jsonl", "floor", "fixed") in seen
    assert ("lighthouse", "tacos/val.jsonl", "floor", "duration/n") in seen
    assert ("Video Mamba Suite", "qvhighlights/highlight_val_release.jsonl", "univtg",
            "fixed") in seen
    assert ("Video Mamba Suite", "tacos/val.jsonl", "univtg", "fixed") in seen
    assert ("TD-DETR", "tacos/val.jsonl", "floor", "pooled:200") in seen
    for r in RECORDS:
        assert r["rule"] in LABEL_RULES
        assert r["queries"] > 1000 and r["foreground_clips"] >= r["queries"]


@pytest.mark.parametrize("rec", RECORDS, ids=lambda r: f"{r['baseline']}-{r['data']}-"
                                                     f"{r['clip_len_mode']}")
def test_rule_reproduces_the_baselines_own_foreground(rec):
    recs = shared_records(rec["data"])
    assert len(recs) == rec["queries"]
    L = rec["clip_len"]
    n = [math.ceil(float(r["duration"]) / L) for r in recs]
    if rec["clip_len_mode"] == "duration/n":
        lengths = [float(r["duration"]) / nb for r, nb in zip(recs, n)]
    elif rec["clip_len_mode"].startswith("pooled:"):
        # TD-DETR: a video of more than max_v_l clips is pooled to max_v_l rows of
        # L * n / max_v_l seconds each
        cap = int(rec["clip_len_mode"].split(":")[1])
        lengths = [L * nb / cap if nb > cap else L for nb in n]
        n = [min(nb, cap) for nb in n]
    else:
        assert rec["clip_len_mode"] == "fixed"
        lengths = L
    labels = windows_to_labels([r["relevant_windows"] for r in recs], n, lengths,
                               rule=rec["rule"])
    items = [(r["qid"], [i for i in range(nb) if lab[i] >= 1])
             for r, nb, lab in zip(recs, n, labels.tolist())]
    for (qid, clips), (want_qid, want) in zip(items, rec["first"]):
        assert qid == want_qid and clips == want, qid
    assert sum(len(c) for _, c in items) == rec["foreground_clips"]
    assert _script().digest(items) == rec["sha256"]
