"""windows_to_labels (docs/losses.md, section 6), by hand and on the real datasets."""

import math

import numpy as np
import pytest
import torch

from cliptbp_kernels.labels import windows_to_labels
from paths import shared_records


def one(windows, n, clip_len=2.0, rule="center"):
    out = windows_to_labels([windows], [n], clip_len, rule=rule)
    assert out.shape == (1, n) and out.dtype == torch.long
    return out[0].tolist()


def test_basic_window():
    # clip i covers [2i, 2i + 2), centre 2i + 1: [0, 4) holds the centres 1 and 3
    assert one([[0, 4]], 5) == [1, 1, 0, 0, 0]
    assert one([[2, 8]], 5) == [0, 1, 1, 1, 0]
    # the end is exclusive, the start inclusive
    assert one([[1, 5]], 4) == [1, 1, 0, 0]
    assert one([[1.0001, 5]], 4) == [0, 1, 0, 0]
    assert one([[0, 4.9999]], 4) == [1, 1, 0, 0]
    assert one([[0, 5.0001]], 4) == [1, 1, 1, 0]


def test_ids_follow_start_order_not_input_order():
    assert one([[10, 14], [0, 4]], 8) == [1, 1, 0, 0, 0, 2, 2, 0]
    assert one([[12, 16], [0, 2], [4, 8]], 8) == [1, 0, 2, 2, 0, 0, 3, 3]


def test_merging_overlapping_windows():
    assert one([[2, 6], [4, 10]], 6) == [0, 1, 1, 1, 1, 0]
    assert one([[4, 10], [2, 6], [12, 14]], 8) == [0, 1, 1, 1, 1, 0, 2, 0]
    # contained window
    assert one([[0, 12], [2, 4]], 7) == [1, 1, 1, 1, 1, 1, 0]
    # chain merge: the second extends the first, the third overlaps the extension
    assert one([[0, 4], [3, 8], [7, 10], [14, 16]], 9) == [1, 1, 1, 1, 1, 0, 0, 2, 0]


def test_touching_windows_stay_apart():
    assert one([[2, 6], [6, 10]], 6) == [0, 1, 1, 2, 2, 0]


def test_short_window_marks_the_clip_holding_its_midpoint():
    # [3.2, 3.8) holds no centre (1, 3, 5 ...); its midpoint 3.5 lies in clip 1 = [2, 4)
    assert one([[3.2, 3.8]], 4) == [0, 1, 0, 0]
    # zero-length window at 4.0: clip 2 = [4, 6) holds it
    assert one([[4, 4]], 4) == [0, 0, 1, 0]
    # a short window that does hold a centre is an ordinary window
    assert one([[4.5, 5.5]], 4) == [0, 0, 1, 0]
    # other clip lengths
    assert one([[0.1, 0.4]], 3, clip_len=1.0) == [1, 0, 0]
    assert one([[3.0, 3.2]], 3, clip_len=1.5) == [0, 0, 1]


def test_midpoint_marking_never_overwrites():
    # [0, 3.1) takes clips 0 and 1; [3.2, 3.8) has its midpoint in clip 1: already taken
    assert one([[0, 3.1], [3.2, 3.8]], 4) == [1, 1, 0, 0]
    # two short windows in one clip: the first in window order marks it
    assert one([[2.5, 2.9], [2.1, 2.3]], 3) == [0, 1, 0]
    # a short window before a long one whose centres it does not touch
    assert one([[2.1, 2.3], [4, 8]], 5) == [0, 1, 2, 2, 0]


def test_windows_past_the_end():
    assert one([[4, 10]], 3) == [0, 0, 1]
    assert one([[8, 12]], 3) == [0, 0, 0]
    assert one([[7.1, 7.5]], 3) == [0, 0, 0]  # midpoint in clip 3, which does not exist
    assert one([[-3, 1.5]], 2) == [1, 0]  # a start before 0 is fine
    assert one([[-3, -1]], 2) == [0, 0]


def test_batch_padding_and_broadcast_num_clips():
    out = windows_to_labels([[[0, 4]], [], [[2, 4], [6, 8]]], [3, 5, 4])
    assert out.tolist() == [[1, 1, 0, -1, -1], [0, 0, 0, 0, 0], [0, 1, 0, 2, -1]]
    out = windows_to_labels([[[0, 2]], [[2, 4]]], 3)
    assert out.tolist() == [[1, 0, 0], [0, 1, 0]]
    out = windows_to_labels([[[0, 2]], []], [0, 2])
    assert out.tolist() == [[-1, -1], [0, 0]]
    assert windows_to_labels([], []).shape == (0, 0)
    assert windows_to_labels([], 5).shape == (0, 0)
    assert windows_to_labels([[], []], 0).shape == (2, 0)


def test_accepts_arrays_and_tensors():
    a = windows_to_labels([np.array([[0.0, 4.0]]), torch.tensor([[2.0, 6.0]])], np.array([3, 4]))
    assert a.tolist() == [[1, 1, 0, -1], [0, 1, 1, 0]]
    b = windows_to_labels([[(0, 4)], [(2, 6)]], (3, 4), clip_len=2)
    assert torch.equal(a, b)


def test_random_disjoint_windows_brute_force():
    """Random disjoint windows (merging is a no-op), checked clip by clip."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 30))
        L = float(rng.choice([1.0, 2.0, 1.5]))
        m = int(rng.integers(0, 6))
        cuts = np.sort(rng.uniform(-2, n * L + 2, size=2 * m))
        windows = [[float(cuts[2 * w]), float(cuts[2 * w + 1])] for w in range(m)]
        expected = [0] * n
        for w, (st, ed) in enumerate(windows):
            for i in range(n):
                if st <= (i + 0.5) * L < ed:
                    expected[i] = w + 1
        for w, (st, ed) in enumerate(windows):
            if any(st <= (j + 0.5) * L < ed for j in range(0, n + int(ed / L) + 3)):
                continue
            i = math.floor((st + ed) / 2 / L)
            if 0 <= i < n and expected[i] == 0:
                expected[i] = w + 1
        perm = rng.permutation(m)  # input order does not matter
        assert one([windows[p] for p in perm], n, L) == expected


# --------------------------------------------------------------------------------------
# the baselines' own rules
# --------------------------------------------------------------------------------------


def test_univtg_rule_anchors_at_i_plus_half_a_clip_length():
    # 2 s clips: anchor (i + 1) * 2 s, the clip's end, both window ends inclusive
    assert one([[4, 10]], 6, rule="univtg") == [0, 1, 1, 1, 1, 0]
    assert one([[0, 4]], 4, rule="univtg") == [1, 1, 0, 0]
    # 1 s clips: anchor (i + 0.5) s, the centre; the end is inclusive (centre rule: exclusive)
    assert one([[0.5, 2.5]], 4, 1.0, rule="univtg") == [1, 1, 1, 0]
    assert one([[0.5, 2.5]], 4, 1.0) == [1, 1, 0, 0]
    # 3 s clips: anchor (i + 1.5) * 3 s = 4.5, 7.5, 10.5, ...
    assert one([[4, 8]], 4, 3.0, rule="univtg") == [1, 1, 0, 0]


def test_univtg_rule_touching_windows_and_fallback():
    # the anchor 6 s lies in both touching windows: the later window in input order takes it
    assert one([[2, 6], [6, 10]], 6, rule="univtg") == [1, 1, 2, 2, 2, 0]
    assert one([[6, 10], [2, 6]], 6, rule="univtg") == [1, 1, 1, 2, 2, 0]
    # no anchor inside any window: clip int(start / L) of the first window in input order
    assert one([[3.2, 3.8]], 4, rule="univtg") == [0, 1, 0, 0]
    assert one([[9.1, 9.5], [3.2, 3.8]], 4, rule="univtg") == [0, 0, 0, 2]
    assert one([[1, 1.5]], 0, rule="univtg") == []
    assert one([], 3, rule="univtg") == [0, 0, 0]


def test_floor_rule():
    # clips int(st / L) .. min(int(ed / L), n) - 1
    assert one([[4.5, 9.9]], 6, rule="floor") == [0, 0, 1, 1, 0, 0]
    assert one([[4, 10]], 6, rule="floor") == [0, 0, 1, 1, 1, 0]
    # at least one clip: a short window inside clip 3 marks clip 2 (first moved down to last)
    assert one([[7.5, 7.9]], 6, rule="floor") == [0, 0, 1, 0, 0, 0]
    assert one([[0, 1.5]], 3, rule="floor") == [1, 0, 0]
    # past the end: clamped to the last clip
    assert one([[20, 30]], 6, rule="floor") == [0, 0, 0, 0, 0, 1]
    # several windows: ids of the merged windows, a clip keeps its first id
    assert one([[8, 12], [0, 4]], 7, rule="floor") == [1, 1, 0, 0, 2, 2, 0]


def test_rules_with_per_sample_clip_lengths():
    out = windows_to_labels([[[4, 10]], [[4, 10]]], [6, 6], [2.0, 4.0], rule="floor")
    # 4 s clips: int(1) = 1 .. int(2.5) - 1 = 1
    assert out.tolist() == [[0, 0, 1, 1, 1, 0], [0, 1, 0, 0, 0, 0]]
    out = windows_to_labels([[[4, 10]], [[4, 10]]], 6, torch.tensor([2.0, 4.0]))
    assert out.tolist() == [[0, 0, 1, 1, 1, 0], [0, 1, 0, 0, 0, 0]]
    with pytest.raises(ValueError, match="clip_len"):
        windows_to_labels([[[4, 10]], [[4, 10]]], 6, [2.0])
    with pytest.raises(ValueError, match=r"clip_len\[1\]"):
        windows_to_labels([[[4, 10]], [[4, 10]]], 6, [2.0, -1.0])
    with pytest.raises(TypeError, match=r"clip_len\[0\]"):
        windows_to_labels([[[4, 10]], [[4, 10]]], 6, ["2", 1.0])
    with pytest.raises(ValueError, match="rule"):
        windows_to_labels([[[4, 10]]], 6, rule="centre")


@pytest.mark.parametrize(
    "args,exc,name",
    [
        (("not a list", [3]), TypeError, "windows"),
        (([[[0, 2]]], [3, 4]), ValueError, "num_clips"),
        (([[[0, 2]]], [-1]), ValueError, "num_clips"),
        (([[[0, 2]]], -1), ValueError, "num_clips"),
        (([[[0, 2]]], [2.5]), TypeError, "num_clips"),
        (([[[0, 2]]], [True]), TypeError, "num_clips"),
        (([[[0, 2]]], [3], 0.0), ValueError, "clip_len"),
        (([[[0, 2]]], [3], -2.0), ValueError, "clip_len"),
        (([[[0, 2]]], [3], float("nan")), ValueError, "clip_len"),
        (([[[0, 2]]], [3], "2"), TypeError, "clip_len"),
        (([[[4, 2]]], [3]), ValueError, "windows"),
        (([[[0, float("nan")]]], [3]), ValueError, "windows"),
        (([[[float("-inf"), 2]]], [3]), ValueError, "windows"),
        (([[[0, 2, 4]]], [3]), ValueError, "windows"),
        (([[[0]]], [3]), ValueError, "windows"),
        (([[0, 2]], [3]), TypeError, "windows"),
        (([[["a", 2]]], [3]), TypeError, "windows"),
        (([None], [3]), TypeError, "windows"),
    ],
)
def test_bad_inputs(args, exc, name):
    with pytest.raises(exc, match=name):
        windows_to_labels(*args)


# --------------------------------------------------------------------------------------
# the real annotations (skipped when the shared data folder is absent)
# --------------------------------------------------------------------------------------


def _labelled(relpath, *rules):
    """The records of a shared annotation file, each query's number of 2-s clips
    (``ceil(duration / 2)``) and its labels under each of ``rules``."""
    recs = shared_records(relpath)
    windows = [r["relevant_windows"] for r in recs]
    n = [math.ceil(r["duration"] / 2) for r in recs]
    return recs, n, [windows_to_labels(windows, n, 2.0, rule=rule) for rule in rules]


@pytest.mark.parametrize("split", ["train", "val"])
def test_qvhighlights_reproduces_relevant_clip_ids(split):
    recs, counts, (labels,) = _labelled(f"qvhighlights/highlight_{split}_release.jsonl",
                                         "center")
    assert len(recs) > 1000
    mismatches = []
    for r, lab, n in zip(recs, labels.tolist(), counts):
        got = [i for i in range(n) if lab[i] >= 1]
        if got != sorted(r["relevant_clip_ids"]) or any(v != -1 for v in lab[n:]):
            mismatches.append(r["qid"])
    assert not mismatches, f"{len(mismatches)} queries differ, e.g. {mismatches[:5]}"


def test_tacos_every_query_has_a_gt_clip():
    recs, _, (labels,) = _labelled("tacos/train.jsonl", "center")
    assert len(recs) > 1000
    n_gt = (labels >= 1).sum(dim=1)
    assert (n_gt >= 1).all(), f"{int((n_gt == 0).sum())} queries without a GT clip"
    # exactly one window per query: only id 1 appears
    assert int(labels.max()) == 1


def test_qvhighlights_univtg_rule_adds_the_clip_before_each_window():
    """On the 2-second grid the anchor of clip i is its end (i + 1) * 2 s, so UniVTG's own
    foreground is the centre rule's plus the clip just before each window that does not start
    at 0 s (that clip ends exactly on the window's start)."""
    recs, n, (centre, uni) = _labelled("qvhighlights/highlight_val_release.jsonl", "center",
                                       "univtg")
    differs = 0
    for r, c, u, nb in zip(recs, centre.tolist(), uni.tolist(), n):
        expected = set(i for i in range(nb) if c[i] >= 1)
        expected |= {int(st) // 2 - 1 for st, _ in r["relevant_windows"] if st > 0}
        got = set(i for i in range(nb) if u[i] >= 1)
        assert got == expected, r["qid"]
        differs += got != set(i for i in range(nb) if c[i] >= 1)
    assert differs > len(recs) // 2          # most queries have a window after 0 s


def test_tacos_floor_rule_against_the_centre_rule():
    """TACoS windows are unaligned floats: the floor rule covers int(st / L) .. int(ed / L) - 1
    and the centre rule round(st / L) .. round(ed / L) - 1 (a centre (i + 0.5) L in [st, ed)),
    so the two differ by at most one clip at each edge, never more."""
    _, n, (centre, floor) = _labelled("tacos/val.jsonl", "center", "floor")
    edge_diffs = 0
    for c, f, nb in zip(centre.tolist(), floor.tolist(), n):
        cs = [i for i in range(nb) if c[i] >= 1]
        fs = [i for i in range(nb) if f[i] >= 1]
        assert fs and cs and fs == list(range(fs[0], fs[-1] + 1))
        assert abs(fs[0] - cs[0]) <= 1 and abs(fs[-1] - cs[-1]) <= 1
        edge_diffs += fs != cs
    assert edge_diffs > 0
