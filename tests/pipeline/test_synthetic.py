"""Synthetic data sets (cliptbp_kernels.pipeline.synthetic): reproducibility, idempotence,
layout and statistics."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cliptbp_kernels.pipeline.data import load_qvhighlights, load_tacos, read_annotations
from cliptbp_kernels.pipeline.synthetic import generate, main
from paths import REPO

ROOT = REPO


def tree(root):
    root = Path(root)
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def segments(root, split):
    return [json.loads(line) for line in (Path(root) / "segments" / f"{split}.jsonl").open()]


@pytest.fixture(scope="module")
def qvh(tmp_path_factory):
    root = tmp_path_factory.mktemp("qvh")
    summary = generate(root, "qvh", seed=3, train=240, val=60)
    return root, summary


@pytest.fixture(scope="module")
def tacos(tmp_path_factory):
    root = tmp_path_factory.mktemp("tacos")
    summary = generate(root, "tacos", seed=3, train=80, val=30)
    return root, summary


# ------------------------------------------------------------- reproducibility, idempotence


@pytest.mark.parametrize("variant", ["qvh", "tacos"])
def test_same_seed_same_bytes(tmp_path, variant):
    a = generate(tmp_path / "a", variant, seed=5, train=12, val=5)
    b = generate(tmp_path / "b", variant, seed=5, train=12, val=5)
    assert a["generated"] and b["generated"]
    ta, tb = tree(tmp_path / "a"), tree(tmp_path / "b")
    assert ta.keys() == tb.keys() and ta == tb
    c = generate(tmp_path / "c", variant, seed=6, train=12, val=5)
    assert c["generated"] and tree(tmp_path / "c") != ta


def test_idempotent_and_regenerates_on_new_parameters(tmp_path):
    out = tmp_path / "d"
    first = generate(out, "qvh", train=10, val=4)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = generate(out, "qvh", train=10, val=4)
    assert first["generated"] and not again["generated"]
    assert again["splits"] == first["splits"] and again["params"] == first["params"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps
    # other parameters: regenerated, no stale files left
    new = generate(out, "qvh", train=6, val=3, text_dim=8)
    assert new["generated"] and new["params"]["text_dim"] == 8
    texts = list((out / "features" / "clip_text_features").iterdir())
    assert len(texts) == 9
    assert np.load(texts[0])["last_hidden_state"].shape[1] == 8
    assert json.loads((out / "MANIFEST.json").read_text())["params"]["train"] == 6


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["--out", str(out), "--variant", "tacos", "--train", "3", "--val", "2",
                 "--video-dims", "16,8", "--text-dim", "4", "--seed", "1"]) == 0
    assert "wrote" in capsys.readouterr().out
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert manifest["params"] == {"format": 1, "variant": "tacos", "seed": 1, "train": 3,
                                  "val": 2, "video_dims": [16, 8], "text_dim": 4}
    assert main(["--out", str(out), "--variant", "tacos", "--train", "3", "--val", "2",
                 "--video-dims", "16,8", "--text-dim", "4", "--seed", "1"]) == 0
    assert "already up to date" in capsys.readouterr().out
    assert load_tacos(out, "val")[0]["video"].shape[1] == 24
    with pytest.raises(SystemExit):
        main(["--out", str(out), "--video-dims", "16"])
    # as a module
    r = subprocess.run([sys.executable, "-m", "cliptbp_kernels.pipeline.synthetic",
                        "--out", str(out), "--variant", "tacos", "--train", "3", "--val", "2",
                        "--video-dims", "16,8", "--text-dim", "4", "--seed", "1"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "already up to date" in r.stdout, r.stderr


# -------------------------------------------------------------------------------- layout


def test_qvh_layout_matches_the_loaders(qvh):
    root, summary = qvh
    assert (root / "annotations" / "highlight_train_release.jsonl").is_file()
    assert (root / "annotations" / "highlight_val_release.jsonl").is_file()
    for d in ("slowfast_features", "clip_features", "clip_text_features"):
        assert (root / "features" / d).is_dir()
    assert summary["splits"]["train"]["queries"] == 240
    train, val = load_qvhighlights(root, "train"), load_qvhighlights(root, "val")
    assert len(train) == 240 and len(val) == 60
    it = val[0]
    assert it["video"].shape[1] == 96 and it["text"].shape[1] == 32 and it["has_saliency"]
    sf = np.load(root / "features" / "slowfast_features" / f"{it['vid']}.npz")
    assert sf.files == ["features"] and sf["features"].shape == (it["video"].shape[0], 64)
    assert sf["features"].dtype == np.float32
    cl = np.load(root / "features" / "clip_features" / f"{it['vid']}.npz")
    assert cl.files == ["pooler_output"] and cl["pooler_output"].shape[1] == 32
    tx = np.load(root / "features" / "clip_text_features" / f"qid{it['qid']}.npz")
    assert tx.files == ["last_hidden_state"]
    # QVHighlights line format, key order included
    line = json.loads((root / "annotations" / "highlight_val_release.jsonl").open().readline())
    assert list(line) == ["qid", "query", "duration", "vid", "relevant_clip_ids",
                          "saliency_scores", "relevant_windows"]
    assert isinstance(line["qid"], int) and isinstance(line["duration"], int)
    # qids unique across splits, query text mentions object and action
    ann_t = read_annotations(train.annotation_file)
    ann_v = read_annotations(val.annotation_file)
    assert len({a["qid"] for a in ann_t + ann_v}) == 300
    assert not {a["vid"] for a in ann_t} & {a["vid"] for a in ann_v}
    for a, s in zip(ann_v, segments(root, "val")):
        assert a["qid"] == s["qid"] and s["object"] in a["query"] and s["action"] in a["query"]


def test_tacos_layout_matches_the_loaders(tacos):
    root, summary = tacos
    assert (root / "annotations" / "train.jsonl").is_file()
    assert (root / "annotations" / "val.jsonl").is_file()
    train, val = load_tacos(root, "train"), load_tacos(root, "val")
    assert len(train) == 80 and len(val) == 30
    line = json.loads((root / "annotations" / "val.jsonl").open().readline())
    assert list(line) == ["qid", "query", "duration", "vid", "relevant_windows"]
    assert isinstance(line["qid"], str) and isinstance(line["duration"], float)
    assert line["qid"].startswith(line["vid"] + "_")


# ---------------------------------------------------------------------------- statistics


def _clip_sets(windows, n):
    c = (np.arange(n) + 0.5) * 2.0
    out = np.zeros(n, dtype=bool)
    for st, ed in windows:
        out |= (c >= st) & (c < ed)
    return out


def test_qvh_statistics(qvh):
    root, _ = qvh
    ann = read_annotations(root / "annotations" / "highlight_train_release.jsonl")
    n_win = [len(a["windows"]) for a in ann]
    assert min(n_win) >= 1 and max(n_win) <= 3 and 1.3 <= np.mean(n_win) <= 2.1
    lengths = [(ed - st) / 2 for a in ann for st, ed in a["windows"]]
    assert 6 <= np.median(lengths) <= 10 and 1 in lengths
    durations = [a["duration"] for a in ann]
    assert np.mean(np.array(durations) == 150) > 0.85 and min(durations) >= 120
    gt = [sum(ed - st for st, ed in a["windows"]) / a["duration"] for a in ann]
    assert 0.1 <= np.median(gt) <= 0.3
    per_video = {}
    for a in ann:
        per_video.setdefault(a["vid"], []).append(a)
        ws = sorted(a["windows"])
        assert all(w[0] % 2 == 0 and w[1] % 2 == 0 for w in ws)
        assert all(ws[i][1] < ws[i + 1][0] for i in range(len(ws) - 1))  # never touch
        # relevant_clip_ids are the clips of the windows; 3 annotators, scores 0..4
        n = int(a["duration"] // 2)
        assert a["relevant_clip_ids"] == np.flatnonzero(_clip_sets(ws, n)).tolist()
        assert all(len(r) == 3 and all(0 <= x <= 4 and x == int(x) for x in r)
                   for r in a["saliency_scores"])
    assert 2.0 <= len(ann) / len(per_video) <= 3.0


def test_qvh_saliency_is_graded(qvh):
    root, _ = qvh
    centre, edge = [], []
    for a in read_annotations(root / "annotations" / "highlight_train_release.jsonl"):
        sal = dict(zip(a["relevant_clip_ids"], np.mean(a["saliency_scores"], axis=1)))
        for st, ed in a["windows"]:
            i, j = int(st // 2), int(ed // 2)
            if j - i >= 5:
                centre.append(sal[(i + j) // 2])
                edge.append((sal[i] + sal[j - 1]) / 2)
    assert np.mean(centre) > np.mean(edge) + 1.0 and np.mean(centre) > 3.0


def _feature_similarities(ds, segs):
    """Per query: mean cosine answer-distractor and answer-background clip features."""
    ans_dis, ans_bg = [], []
    for i, s in enumerate(segs):
        x = ds[i]["video"].numpy()
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        ans = _clip_sets(s["answer_windows"], len(x))
        dis = _clip_sets(s["distractor_windows"], len(x)) & ~ans
        bg = ~ans & ~dis
        if ans.any() and dis.any() and bg.any():
            ans_dis.append((x[ans] @ x[dis].T).mean())
            ans_bg.append((x[ans] @ x[bg].T).mean())
    return np.array(ans_dis), np.array(ans_bg)


def test_qvh_distractors(qvh):
    root, _ = qvh
    segs = segments(root, "val")
    assert np.mean([len(s["distractor_windows"]) > 0 for s in segs]) > 0.8
    for s in segs:  # distractors never overlap or touch the answer
        for a in s["answer_windows"]:
            for d in s["distractor_windows"]:
                assert d[1] < a[0] or a[1] < d[0]
    ans_dis, ans_bg = _feature_similarities(load_qvhighlights(root, "val"), segs)
    assert len(ans_dis) > 40
    assert np.mean(ans_dis > ans_bg) > 0.95 and ans_dis.mean() > ans_bg.mean() + 0.15


def test_tacos_statistics(tacos):
    root, summary = tacos
    ds = load_tacos(root, "train")
    ann = ds.annotations + read_annotations(root / "annotations" / "val.jsonl")
    assert all(len(a["windows"]) == 1 for a in ann)
    vids = {a["vid"]: a["duration"] for a in ann}
    assert len(vids) < len(ann) / 5  # few, long videos
    for vid, dur in vids.items():
        n = np.load(root / "features" / "slowfast_features" / f"{vid}.npz")["features"].shape[0]
        assert 200 <= n <= 700 and n == math.ceil(dur / 2.0)
    frac = [(a["windows"][0][1] - a["windows"][0][0]) / a["duration"] for a in ann]
    assert 0.03 <= np.median(frac) <= 0.08
    assert any(a["windows"][0][1] - a["windows"][0][0] < 2.0 for a in ann)
    assert all(0 <= a["windows"][0][0] < a["windows"][0][1] <= a["duration"] for a in ann)
    assert summary["splits"]["train"]["clips_min"] >= 200
    segs = segments(root, "train")
    assert np.mean([len(s["distractor_windows"]) > 0 for s in segs]) > 0.8
    ans_dis, ans_bg = _feature_similarities(ds, segs)
    assert np.mean(ans_dis > ans_bg) > 0.9 and ans_dis.mean() > ans_bg.mean() + 0.15
