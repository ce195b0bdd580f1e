"""The synthetic generator's difficulty knobs: the default files unchanged byte for byte,
checked arguments, and each knob putting its failure mode into the data."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import cliptbp_kernels as ck
from cliptbp_kernels.pipeline.data import collate, load_qvhighlights
from cliptbp_kernels.pipeline.synthetic import Knobs, generate
from paths import REPO

DIGESTS = json.loads((REPO / "tests" / "fixtures" / "synthetic_digests.json").read_text())


def tree_digest(root) -> str:
    h = hashlib.sha256()
    root = Path(root)
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + b"\0"
                     + hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


OFF = {"none": None, "empty": {}, "Knobs()": Knobs(), "zeros": {"noise": 0.0, "crossfade": 0}}
# every spelling of "off" on the small QVHighlights-like set, the default spelling on the rest
CASES = [(c, k) for c in DIGESTS["cases"] for k in OFF
         if k == "none" or (c["variant"] == "qvh" and c["kw"])]


@pytest.mark.parametrize("case,off", CASES,
                         ids=[f"{c['variant']}-{c['kw'] or 'default'}-{k}" for c, k in CASES])
def test_knobs_off_give_todays_files_byte_for_byte(tmp_path, case, off):
    generate(tmp_path, case["variant"], knobs=OFF[off], **case["kw"])
    assert tree_digest(tmp_path) == case["sha256"]


def test_knobs_are_checked_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="distractor_mix"):
        generate(tmp_path / "a", "qvh", train=4, val=2, knobs={"distractor_mix": 1.0})
    with pytest.raises(ValueError, match="crossfade"):
        generate(tmp_path / "a", "qvh", train=4, val=2, knobs={"crossfade": 1.5})
    with pytest.raises(ValueError, match="gap_fill"):
        generate(tmp_path / "a", "qvh", train=4, val=2, knobs={"gap_fill": -0.1})
    with pytest.raises(ValueError, match="noise"):
        generate(tmp_path / "a", "qvh", train=4, val=2, knobs={"noise": -1})
    with pytest.raises(TypeError, match="appearance"):
        generate(tmp_path / "a", "qvh", train=4, val=2, knobs={"appearance": "big"})
    with pytest.raises(ValueError, match="unknown knobs"):
        generate(tmp_path / "a", "qvh", train=4, val=2, knobs={"blur": 1})
    with pytest.raises(ValueError, match="qvh"):
        generate(tmp_path / "a", "tacos", train=4, val=2, knobs={"noise": 1.0})
    with pytest.raises(TypeError, match="knobs"):
        generate(tmp_path / "a", "qvh", train=4, val=2, knobs=[("noise", 1.0)])
    assert not (tmp_path / "a").exists()


def test_active_knobs_are_in_the_manifest_and_change_the_files(tmp_path):
    base = generate(tmp_path / "base", "qvh", seed=2, train=20, val=10)
    assert "knobs" not in base["params"]
    for name, value in (("distractor_mix", 0.5), ("gap_fill", 0.5), ("crossfade", 2),
                        ("appearance", 0.5), ("noise", 0.5)):
        out = generate(tmp_path / name, "qvh", seed=2, train=20, val=10, knobs={name: value})
        assert out["params"]["knobs"] == {name: value}
        assert tree_digest(tmp_path / name) != tree_digest(tmp_path / "base"), name
    again = generate(tmp_path / "noise", "qvh", seed=2, train=20, val=10, knobs={"noise": 0.5})
    assert not again["generated"]


def _val(tmp_path, name, knobs, val=120):
    root = tmp_path / name
    generate(root, "qvh", seed=4, train=4, val=val, knobs=knobs)
    ds = load_qvhighlights(root, "val")
    batch = collate([ds[i] for i in range(len(ds))])
    segs = [json.loads(line) for line in (root / "segments" / "val.jsonl").open()]
    return batch, segs


def _raw_losses(batch):
    lc = ck.clip_pair_loss(batch["video"], batch["labels"], backend="reference")
    lb = ck.boundary_margin_loss(batch["video"], batch["labels"], backend="reference")
    return float(lc), float(lb)


def test_distractor_mix_and_crossfade_make_the_raw_inputs_harder(tmp_path):
    """On the raw input features L_clip grows when distractors look like the answer, and
    L_clip and L_boun grow when boundaries fade."""
    lc0, lb0 = _raw_losses(_val(tmp_path, "base", None)[0])
    lc_d, _ = _raw_losses(_val(tmp_path, "dis", {"distractor_mix": 0.7})[0])
    lc_c, lb_c = _raw_losses(_val(tmp_path, "fade", {"crossfade": 6})[0])
    assert lc_d > 3 * lc0
    assert lc_c > 3 * lc0 and lb_c > lb0 + 0.005


def test_gap_fill_puts_answer_windows_one_or_two_clips_apart(tmp_path):
    batch, segs = _val(tmp_path, "gap", {"gap_fill": 0.8})
    base_batch, base_segs = _val(tmp_path, "base", None)
    gaps = [(b[0] - a[1]) / 2 for s in segs
            for a, b in zip(sorted(s["answer_windows"]), sorted(s["answer_windows"])[1:])]
    assert gaps and set(gaps) <= {1, 2}
    base_gaps = [(b[0] - a[1]) / 2 for s in base_segs
                 for a, b in zip(sorted(s["answer_windows"]), sorted(s["answer_windows"])[1:])]
    assert max(base_gaps) > 2
    # the gap clips look like the answer: closer to the window's clips than background is
    v = torch.nn.functional.normalize(batch["video"], dim=-1)
    gap_sim, bg_sim = [], []
    for b, s in enumerate(segs):
        wins = sorted(s["answer_windows"])
        if len(wins) < 2:
            continue
        inside = v[b, int(wins[0][0] / 2):int(wins[0][1] / 2)].mean(0)
        gap = v[b, int(wins[0][1] / 2):int(wins[1][0] / 2)]
        gap_sim.append(float((gap @ inside).mean()))
        bg = v[b][batch["labels"][b] == 0]
        bg_sim.append(float((bg @ inside).mean()))
    assert np.mean(gap_sim) > np.mean(bg_sim) + 0.1


def test_appearance_makes_a_querys_windows_differ(tmp_path):
    def cross_window_cosine(batch):
        v = torch.nn.functional.normalize(batch["video"], dim=-1)
        sims = []
        for b in range(v.shape[0]):
            lab = batch["labels"][b]
            if int(lab.max()) < 2:
                continue
            m1, m2 = v[b][lab == 1].mean(0), v[b][lab == 2].mean(0)
            sims.append(float(torch.nn.functional.cosine_similarity(m1, m2, dim=0)))
        return np.mean(sims)

    base = cross_window_cosine(_val(tmp_path, "base", None)[0])
    varied = cross_window_cosine(_val(tmp_path, "app", {"appearance": 1.0})[0])
    assert varied < base - 0.05


def test_noise_lowers_the_similarity_of_neighbouring_clips(tmp_path):
    def neighbour_cosine(batch):
        v = torch.nn.functional.normalize(batch["video"], dim=-1)
        m = batch["video_mask"][:, 1:] & batch["video_mask"][:, :-1]
        return float((v[:, 1:] * v[:, :-1]).sum(-1)[m].mean())

    assert neighbour_cosine(_val(tmp_path, "noise", {"noise": 1.5})[0]) < \
        neighbour_cosine(_val(tmp_path, "base", None)[0]) - 0.05


def test_cli_knobs(tmp_path, capsys):
    from cliptbp_kernels.pipeline.synthetic import main

    assert main(["--out", str(tmp_path / "k"), "--train", "4", "--val", "2",
                 "--knob", "noise=0.5", "--knob", "crossfade=2"]) == 0
    manifest = json.loads((tmp_path / "k" / "MANIFEST.json").read_text())
    assert manifest["params"]["knobs"] == {"noise": 0.5, "crossfade": 2}
    for bad in (["--knob", "noise"], ["--knob", "noise=lots"], ["--knob", "crossfade=1.5"]):
        with pytest.raises(SystemExit):
            main(["--out", str(tmp_path / "x"), "--train", "4", "--val", "2", *bad])
        assert "knob" in capsys.readouterr().err
