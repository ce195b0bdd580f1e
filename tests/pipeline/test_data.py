"""Data loaders (cliptbp_kernels.pipeline.data): items, collate, truncation, errors, real
annotations."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cliptbp_kernels.labels import windows_to_labels
from cliptbp_kernels.pipeline.data import (
    QVH_VIDEO,
    DataError,
    FeatureSpec,
    MomentDataset,
    collate,
    load_qvhighlights,
    load_tacos,
    read_annotations,
)
from cliptbp_kernels.pipeline.synthetic import generate
from paths import SHARED_DATA

DATA = SHARED_DATA


# ----------------------------------------------------------------------------- helpers


def write_set(root, lines, videos, texts, name="ann.jsonl", raw_lines=None):
    """An annotation file and features under root/features. videos: {vid: (slowfast, clip)}
    arrays (or {vid: {dir: (key, array)}}); texts: {qid: array}."""
    root = Path(root)
    feat = root / "features"
    for d in ("slowfast_features", "clip_features", "clip_text_features"):
        (feat / d).mkdir(parents=True, exist_ok=True)
    for vid, arrays in videos.items():
        if isinstance(arrays, dict):
            for d, (key, x) in arrays.items():
                np.savez(feat / d / f"{vid}.npz", **{key: x})
        else:
            sf, cl = arrays
            np.savez(feat / "slowfast_features" / f"{vid}.npz", features=sf)
            np.savez(feat / "clip_features" / f"{vid}.npz", pooler_output=cl)
    for qid, x in texts.items():
        np.savez(feat / "clip_text_features" / f"qid{qid}.npz", last_hidden_state=x)
    ann = root / name
    text = raw_lines if raw_lines is not None else [json.dumps(line) for line in lines]
    ann.write_text("\n".join(text) + "\n")
    return ann, feat


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def qvh_line(qid, vid, windows, ids=None, scores=None, duration=20):
    line = {"qid": qid, "query": f"query {qid}", "duration": duration, "vid": vid,
            "relevant_windows": windows}
    if ids is not None:
        line["relevant_clip_ids"] = ids
        line["saliency_scores"] = scores
    return line


@pytest.fixture
def small(tmp_path):
    """Three videos of 10, 8 and 6 clips (slowfast [n, 6], clip [n, 4]), four queries."""
    videos = {"va": (rand(10, 6, seed=1), rand(10, 4, seed=2)),
              "vb": (rand(8, 6, seed=3), rand(9, 4, seed=4)),  # clip dir one clip longer
              "vc": (rand(6, 6, seed=5), rand(6, 4, seed=6))}
    lines = [qvh_line(0, "va", [[2, 6], [12, 16]], [1, 2, 6, 7], [[1, 2, 3], [4, 4, 4],
                                                                 [0, 0, 3], [2, 2, 2]]),
             qvh_line(1, "vb", [[0, 4]]),
             qvh_line(2, "vc", [[3.2, 3.8], [6, 12]], [3], [[4, 3, 2]]),
             qvh_line(3, "va", [[14, 20]], [7, 8, 9], [[1, 1, 1], [2, 2, 2], [3, 3, 3]])]
    texts = {0: rand(5, 3, seed=7), 1: rand(40, 3, seed=8), 2: rand(1, 3, seed=9),
             3: rand(3, 3, seed=10)}
    ann, feat = write_set(tmp_path, lines, videos, texts)
    return ann, feat, videos, texts, lines


def l2n(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# --------------------------------------------------------------------------------- items


def test_item_fields_and_normalised_concatenation(small):
    ann, feat, videos, texts, lines = small
    ds = MomentDataset(ann, feat)
    assert len(ds) == 4 and ds.annotation_file == ann
    it = ds[0]
    assert set(it) == {"qid", "query", "vid", "duration", "clip_len", "video", "text",
                       "windows", "saliency", "has_saliency"}
    assert it["qid"] == 0 and it["vid"] == "va" and it["query"] == "query 0"
    assert isinstance(it["duration"], float) and it["duration"] == 20.0 and it["clip_len"] == 2.0
    assert it["video"].dtype == torch.float32 and it["video"].shape == (10, 10)
    assert it["text"].dtype == torch.float32 and it["text"].shape == (5, 3)
    sf, cl = videos["va"]
    np.testing.assert_allclose(it["video"][:, :6].numpy(), l2n(sf), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(it["video"][:, 6:].numpy(), l2n(cl), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(it["video"][:, :6].norm(dim=1).numpy(), 1.0, rtol=1e-5)
    np.testing.assert_allclose(it["video"][:, 6:].norm(dim=1).numpy(), 1.0, rtol=1e-5)
    np.testing.assert_allclose(it["text"].numpy(), l2n(texts[0]), rtol=1e-5, atol=1e-6)
    assert it["windows"] == [[2.0, 6.0], [12.0, 16.0]]
    assert it["has_saliency"] is True

    raw = MomentDataset(ann, feat, normalize=False)[0]
    np.testing.assert_array_equal(raw["video"].numpy(), np.concatenate([sf, cl], axis=1))
    np.testing.assert_array_equal(raw["text"].numpy(), texts[0])


def test_cache_gives_the_same_items_and_reads_each_file_once(small, monkeypatch):
    from cliptbp_kernels.pipeline import data

    ann, feat, videos, texts, lines = small
    plain = MomentDataset(ann, feat)
    want = [plain[i] for i in range(len(plain))]
    reads = []
    real = data.load_feature
    monkeypatch.setattr(data, "load_feature", lambda path, key: reads.append(path) or
                        real(path, key))
    cached = MomentDataset(ann, feat, cache=True)
    for _ in range(3):  # three epochs
        for i in range(len(cached)):
            got = cached[i]
            assert torch.equal(got["video"], want[i]["video"])
            assert torch.equal(got["text"], want[i]["text"])
            got["video"].fill_(7.0)  # a caller's in-place change never reaches the cache
    assert len(reads) == len(set(reads)) == 2 * len(videos) + len(texts)


def test_dir_order_and_single_dir(small):
    ann, feat, videos, _, _ = small
    rev = MomentDataset(ann, feat, video_features=QVH_VIDEO[::-1], normalize=False)[0]
    sf, cl = videos["va"]
    np.testing.assert_array_equal(rev["video"].numpy(), np.concatenate([cl, sf], axis=1))
    one = MomentDataset(ann, feat, video_features=FeatureSpec("clip_features", "pooler_output"))
    assert one[0]["video"].shape == (10, 4)


def test_truncation_to_shortest_dir_and_text_len(small):
    ann, feat, videos, texts, _ = small
    ds = MomentDataset(ann, feat, max_text_len=32, normalize=False)
    it = ds[1]  # slowfast 8 clips, clip 9 clips
    assert it["video"].shape == (8, 10)
    np.testing.assert_array_equal(it["video"][:, 6:].numpy(), videos["vb"][1][:8])
    assert it["text"].shape == (32, 3)
    np.testing.assert_array_equal(it["text"].numpy(), texts[1][:32])
    assert MomentDataset(ann, feat, max_text_len=4)[1]["text"].shape == (4, 3)


def test_saliency_placement(small):
    ann, feat, *_ = small
    ds = MomentDataset(ann, feat)
    sal = ds[0]["saliency"]
    assert sal.dtype == torch.float32 and sal.shape == (10,)
    expect = torch.zeros(10)
    expect[1], expect[2], expect[6], expect[7] = 2.0, 4.0, 1.0, 2.0
    torch.testing.assert_close(sal, expect)
    it = ds[1]  # no saliency in the line
    assert it["has_saliency"] is False and torch.equal(it["saliency"], torch.zeros(8))


def test_max_clips_truncates_video_windows_and_saliency(small):
    ann, feat, videos, _, _ = small
    ds = MomentDataset(ann, feat, max_clips=5)
    assert len(ds) == 4  # queries whose windows vanish are kept
    it = ds[0]
    assert it["video"].shape == (5, 10)
    assert it["windows"] == [[2.0, 6.0]]  # [12, 16] starts past 10 s
    assert it["saliency"].shape == (5,) and it["saliency"][1:3].tolist() == [2.0, 4.0]
    gone = ds[3]  # [14, 20] lies past the 5 kept clips
    assert gone["windows"] == [] and gone["saliency"].sum() == 0
    cut = ds[2]  # 6 clips -> 5; [6, 12] cut to [6, 10]
    assert cut["windows"] == [[3.2, 3.8], [6.0, 10.0]]
    batch = collate([gone, cut])
    assert batch["labels"][0].tolist() == [0] * 5
    assert batch["labels"][1].tolist() == [0, 1, 0, 2, 2]
    # max_clips=None keeps every clip
    assert MomentDataset(ann, feat, max_clips=None)[0]["video"].shape == (10, 10)
    with pytest.raises(ValueError, match="max_clips"):
        MomentDataset(ann, feat, max_clips=0)


def test_windows_cut_to_the_feature_span(tmp_path):
    # features shorter than the annotated duration: windows are cut to n * clip_len
    ann, feat = write_set(tmp_path, [qvh_line(0, "v", [[4, 10], [12, 20]], duration=20)],
                          {"v": (rand(5, 6), rand(5, 4))}, {0: rand(2, 3)})
    it = MomentDataset(ann, feat)[0]
    assert it["windows"] == [[4.0, 10.0]] and it["duration"] == 20.0


def test_empty_windows_allowed(tmp_path):
    ann, feat = write_set(tmp_path, [qvh_line(0, "v", [])], {"v": (rand(4, 6), rand(4, 4))},
                          {0: rand(2, 3)})
    it = MomentDataset(ann, feat)[0]
    assert it["windows"] == [] and collate([it])["labels"].tolist() == [[0, 0, 0, 0]]


# -------------------------------------------------------------------------------- collate


def test_collate_shapes_padding_and_labels(small):
    ann, feat, *_ = small
    ds = MomentDataset(ann, feat)
    items = [ds[i] for i in range(4)]
    b = collate(items)
    n = [10, 8, 6, 10]
    L = [5, 32, 1, 3]
    assert b["video"].shape == (4, 10, 10) and b["video_mask"].dtype == torch.bool
    assert b["text"].shape == (4, 32, 3) and b["text_mask"].dtype == torch.bool
    assert b["num_clips"].dtype == torch.long and b["num_clips"].tolist() == n
    assert b["video_mask"].sum(1).tolist() == n and b["text_mask"].sum(1).tolist() == L
    for i, it in enumerate(items):
        assert torch.equal(b["video"][i, :n[i]], it["video"])
        assert (b["video"][i, n[i]:] == 0).all() and (b["text"][i, L[i]:] == 0).all()
        assert torch.equal(b["text"][i, :L[i]], it["text"])
        assert torch.equal(b["saliency"][i, :n[i]], it["saliency"])
        assert (b["saliency"][i, n[i]:] == 0).all()
    expect = windows_to_labels([it["windows"] for it in items], n, 2.0)
    assert torch.equal(b["labels"], expect)
    assert ((b["labels"] == -1) == ~b["video_mask"]).all()
    assert b["labels"][0].tolist() == [0, 1, 1, 0, 0, 0, 2, 2, 0, 0]
    assert b["labels"][2, :6].tolist() == [0, 1, 0, 2, 2, 2]  # short window -> midpoint clip
    assert b["windows"] == [it["windows"] for it in items]
    assert b["has_saliency"].tolist() == [True, False, True, True]
    assert b["meta"][2] == {"qid": 2, "query": "query 2", "vid": "vc", "duration": 20.0,
                            "clip_len": 2.0}


def test_collate_checks(small):
    ann, feat, *_ = small
    a = MomentDataset(ann, feat)[0]
    c = MomentDataset(ann, feat, clip_len=1.0)[0]
    with pytest.raises(ValueError, match="clip_len"):
        collate([a, c])
    with pytest.raises(ValueError):
        collate([])


def test_dataloader_roundtrip(small):
    ann, feat, *_ = small
    loader = torch.utils.data.DataLoader(MomentDataset(ann, feat), batch_size=3,
                                         collate_fn=collate)
    sizes = [b["video"].shape[0] for b in loader]
    assert sizes == [3, 1]


# ------------------------------------------------------------------ synthetic layout


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    base = tmp_path_factory.mktemp("synth")
    generate(base / "qvh", "qvh", train=8, val=4)
    generate(base / "tacos", "tacos", train=4, val=3)
    return base


def test_load_synthetic_qvh(synth):
    ds = load_qvhighlights(synth / "qvh", "val")
    assert len(ds) == 4 and ds.annotation_file.name == "highlight_val_release.jsonl"
    it = ds[0]
    assert it["video"].shape[1] == 64 + 32 and it["text"].shape[1] == 32
    assert 60 <= it["video"].shape[0] <= 75 and it["has_saliency"]
    assert ds[0]["windows"] == read_annotations(ds.annotation_file)[0]["windows"]
    # feature_root given explicitly, max_clips
    ds2 = load_qvhighlights(synth / "qvh", "train", feature_root=synth / "qvh" / "features",
                            max_clips=20)
    assert len(ds2) == 8 and all(ds2[i]["video"].shape[0] == 20 for i in range(len(ds2)))


def test_load_synthetic_tacos_keeps_long_videos(synth):
    ds = load_tacos(synth / "tacos", "train")
    assert ds.annotation_file.name == "train.jsonl" and len(ds) == 4
    for i in range(len(ds)):
        it = ds[i]
        n = it["video"].shape[0]
        assert 200 <= n <= 700 and n == math.ceil(it["duration"] / 2.0)
        assert isinstance(it["qid"], str) and len(it["windows"]) == 1
        assert it["has_saliency"] is False


# ---------------------------------------------------------------------------- errors


def test_missing_annotation_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        MomentDataset(tmp_path / "nope.jsonl", tmp_path)
    with pytest.raises(FileNotFoundError, match="highlight_val_release.jsonl"):
        load_qvhighlights(tmp_path, "val")
    with pytest.raises(FileNotFoundError, match="test.jsonl"):
        load_tacos(tmp_path, "test")


def test_bad_json_line(tmp_path):
    ok = json.dumps(qvh_line(0, "v", []))
    ann, feat = write_set(tmp_path, None, {}, {}, name="bad.jsonl",
                          raw_lines=[ok, '{"qid": 1, "query": '])
    with pytest.raises(DataError, match=r"bad\.jsonl.*bad JSON at line 2"):
        MomentDataset(ann, feat)


@pytest.mark.parametrize("drop", ["qid", "query", "duration", "vid"])
def test_missing_key(tmp_path, drop):
    line = qvh_line(0, "v", [[0, 2]])
    del line[drop]
    ann, feat = write_set(tmp_path, [qvh_line(1, "v", []), line], {}, {}, name="keys.jsonl")
    with pytest.raises(DataError, match=rf"keys\.jsonl, line 2: missing key '{drop}'"):
        MomentDataset(ann, feat)


@pytest.mark.parametrize("patch, msg", [
    ({"relevant_windows": [[4, 2]]}, "relevant_windows"),
    ({"relevant_windows": [[1, 2, 3]]}, "relevant_windows"),
    ({"relevant_windows": "0-2"}, "relevant_windows"),
    ({"duration": -1}, "duration"),
    ({"qid": 1.5}, "qid"),
    ({"relevant_clip_ids": [1]}, "saliency_scores"),
    ({"relevant_clip_ids": [1, 2], "saliency_scores": [[1, 1, 1]]}, "saliency_scores"),
])
def test_malformed_values(tmp_path, patch, msg):
    line = {**qvh_line(0, "v", [[0, 2]]), **patch}
    ann, feat = write_set(tmp_path, [line], {}, {}, name="vals.jsonl")
    with pytest.raises(DataError, match=rf"vals\.jsonl, line 1: .*{msg}"):
        MomentDataset(ann, feat)


def test_missing_video_feature(tmp_path):
    lines = [qvh_line(0, "va", []), qvh_line(1, "vmissing", [])]
    ann, feat = write_set(tmp_path, lines, {"va": (rand(3, 6), rand(3, 4))},
                          {0: rand(2, 3), 1: rand(2, 3)})
    with pytest.raises(FileNotFoundError,
                       match=r"vid 'vmissing' in dir 'slowfast_features'.*vmissing\.npz"):
        MomentDataset(ann, feat)
    np.savez(feat / "slowfast_features" / "vmissing.npz", features=rand(3, 6))
    with pytest.raises(FileNotFoundError, match=r"vid 'vmissing' in dir 'clip_features'"):
        MomentDataset(ann, feat)
    with pytest.raises(FileNotFoundError, match="video feature dir 'i3d'"):
        MomentDataset(ann, feat, video_features=(FeatureSpec("i3d", "features"),))
    with pytest.raises(FileNotFoundError, match="feature root"):
        MomentDataset(ann, tmp_path / "elsewhere")


def test_missing_text_feature(tmp_path):
    lines = [qvh_line(0, "va", []), qvh_line(7, "va", [])]
    ann, feat = write_set(tmp_path, lines, {"va": (rand(3, 6), rand(3, 4))}, {0: rand(2, 3)})
    with pytest.raises(FileNotFoundError, match=r"text feature missing for qid 7.*qid7\.npz"):
        MomentDataset(ann, feat)


def test_npz_without_key_wrong_rank_and_garbage(tmp_path):
    ann, feat = write_set(tmp_path, [qvh_line(0, "va", [])],
                          {"va": {"slowfast_features": ("feats", rand(3, 6)),
                                  "clip_features": ("pooler_output", rand(3, 4))}},
                          {0: rand(2, 3)})
    ds = MomentDataset(ann, feat)  # content is read lazily
    with pytest.raises(DataError, match=r"va\.npz.*no key 'features'.*feats"):
        ds[0]
    np.savez(feat / "slowfast_features" / "va.npz", features=rand(3, 2, 6))
    with pytest.raises(DataError, match=r"slowfast_features.va\.npz.*rank 2.*\(3, 2, 6\)"):
        ds[0]
    np.savez(feat / "slowfast_features" / "va.npz", features=rand(3, 6))
    np.savez(feat / "clip_text_features" / "qid0.npz", last_hidden_state=rand(3))
    with pytest.raises(DataError, match=r"qid0\.npz.*rank 2"):
        ds[0]
    np.savez(feat / "clip_text_features" / "qid0.npz", last_hidden_state=rand(0, 3))
    with pytest.raises(DataError, match=r"qid0\.npz.*no tokens"):
        ds[0]
    (feat / "clip_text_features" / "qid0.npz").write_bytes(b"not a zip file")
    with pytest.raises(DataError, match=r"qid0\.npz"):
        ds[0]


# ------------------------------------------------------------------- real annotations


def _fake_features(root, anns, video_len):
    feat = Path(root) / "features"
    for d in ("slowfast_features", "clip_features", "clip_text_features"):
        (feat / d).mkdir(parents=True, exist_ok=True)
    for a in anns:
        n = video_len(a)
        np.savez(feat / "slowfast_features" / f"{a['vid']}.npz", features=rand(n, 8))
        np.savez(feat / "clip_features" / f"{a['vid']}.npz", pooler_output=rand(n, 4))
        np.savez(feat / "clip_text_features" / f"qid{a['qid']}.npz", last_hidden_state=rand(6, 4))
    return feat


@pytest.mark.skipif(not DATA.is_dir(), reason="shared annotation data not available")
def test_real_qvhighlights_annotations(tmp_path):
    src = DATA / "qvhighlights" / "highlight_val_release.jsonl"
    parsed = read_annotations(src)
    assert len(parsed) == 1550
    assert all(a["saliency_scores"] is not None and a["windows"] for a in parsed)
    test_split = read_annotations(DATA / "qvhighlights" / "highlight_test_release.jsonl")
    assert len(test_split) == 1542
    assert all(a["windows"] == [] and a["saliency_scores"] is None for a in test_split)

    raw = [json.loads(line) for line in src.read_text().splitlines()[:20]]
    ann = tmp_path / "annotations" / "highlight_val_release.jsonl"
    ann.parent.mkdir()
    ann.write_text("\n".join(json.dumps(r) for r in raw))  # no trailing newline, as the source
    _fake_features(tmp_path, raw, lambda a: int(a["duration"] // 2))
    ds = load_qvhighlights(tmp_path, "val")
    assert len(ds) == 20
    items = [ds[i] for i in range(20)]
    for r, it in zip(raw, items):
        assert it["qid"] == r["qid"] and it["vid"] == r["vid"] and it["query"] == r["query"]
        assert it["duration"] == float(r["duration"])
        assert it["windows"] == [[float(s), float(e)] for s, e in r["relevant_windows"]]
        assert it["has_saliency"]
        expect = np.zeros(it["video"].shape[0], dtype=np.float32)
        expect[r["relevant_clip_ids"]] = np.mean(r["saliency_scores"], axis=1)
        np.testing.assert_allclose(it["saliency"].numpy(), expect, rtol=1e-6)
    b = collate(items)
    for i, r in enumerate(raw):
        fg = set(torch.nonzero(b["labels"][i] > 0).flatten().tolist())
        assert fg == set(r["relevant_clip_ids"])


@pytest.mark.skipif(not DATA.is_dir(), reason="shared annotation data not available")
def test_real_tacos_annotations(tmp_path):
    src = DATA / "tacos" / "val.jsonl"
    parsed = read_annotations(src)
    assert len(parsed) == 4436 and all(len(a["windows"]) == 1 for a in parsed)
    assert all(isinstance(a["qid"], str) and a["saliency_scores"] is None for a in parsed)

    raw = [json.loads(line) for line in src.read_text().splitlines()[:20]]
    ann = tmp_path / "annotations" / "val.jsonl"
    ann.parent.mkdir()
    ann.write_text("".join(json.dumps(r) + "\n" for r in raw))
    _fake_features(tmp_path, raw, lambda a: math.ceil(a["duration"] / 2.0))
    ds = load_tacos(tmp_path, "val")
    items = [ds[i] for i in range(len(ds))]
    assert len(items) == 20
    for r, it in zip(raw, items):
        assert it["qid"] == r["qid"] and it["vid"] == r["vid"]
        assert it["duration"] == r["duration"]
        assert it["windows"] == r["relevant_windows"]
        assert it["has_saliency"] is False and it["saliency"].sum() == 0
        assert it["video"].shape[0] == math.ceil(r["duration"] / 2.0)
    b = collate(items)
    assert (b["labels"] > 0).any(dim=1).all()  # every query has a GT clip
    assert ((b["labels"] >= 0) == b["video_mask"]).all()
