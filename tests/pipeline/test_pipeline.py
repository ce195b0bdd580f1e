"""The reference training pipeline end to end on a tiny synthetic data set: model, training
with and without ClipTBP, checkpoint/resume, predictions in the submission format, and the
main-job comparison."""

from __future__ import annotations

import json

import pytest
import torch

from cliptbp_kernels.pipeline import compare
from cliptbp_kernels.pipeline.eval import evaluate, load_jsonl
from cliptbp_kernels.pipeline.model import (
    MomentModel,
    basic_losses,
    clip_spans,
    predict_windows,
    target_spans,
)
from cliptbp_kernels.pipeline.synthetic import generate
from cliptbp_kernels.pipeline.train import TrainConfig, main, train

TINY = dict(hidden=32, layers=1, heads=2, batch_size=16, eval_every=1, progress=False)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic") / "qvh"
    generate(root, variant="qvh", seed=3, train=48, val=16)
    return root


def test_model_shapes_and_losses():
    torch.manual_seed(0)
    m = MomentModel(12, 8, hidden=16, layers=1, heads=2)
    video = torch.randn(3, 10, 12)
    vmask = torch.ones(3, 10, dtype=torch.bool)
    vmask[2, 7:] = False
    out = m(video, vmask, torch.randn(3, 5, 8), torch.ones(3, 5, dtype=torch.bool))
    assert out["video_emb"].shape == (3, 10, 16)
    assert out["fg_logits"].shape == (3, 10) and out["saliency"].shape == (3, 10)
    assert (out["offsets"] >= 0).all()
    labels = torch.zeros(3, 10, dtype=torch.long)
    labels[:, 2:5] = 1
    labels[2, 7:] = -1
    windows = [[[4.0, 10.0]]] * 3
    spans_t = target_spans(labels, windows, 2.0)
    assert torch.equal(spans_t[0, 2], torch.tensor([2.0, 5.0]))  # [4 s, 10 s] in 2-s clips
    assert (spans_t[0, 5:] == 0).all()
    losses = basic_losses(out, labels, spans_t, torch.zeros(3, 10))
    assert set(losses) == {"loss_fg", "loss_span", "loss_iou", "loss_saliency"}
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in m.fg_head.parameters())


def test_temporal_conv_head_ignores_padding_and_sees_63_clips():
    from cliptbp_kernels.pipeline.model import TemporalConvHead

    torch.manual_seed(0)
    head = TemporalConvHead(8, 2)
    h = torch.randn(2, 100, 8)
    mask = torch.ones(2, 100, dtype=torch.bool)
    mask[1, 60:] = False
    out = head(h, mask)
    assert out.shape == (2, 100, 2)
    h2 = h.clone()
    h2[1, 60:] = 1e6                                   # padding content never leaks in
    assert torch.equal(head(h2, mask)[1, :60], out[1, :60])
    # clip 50 sees clips 19..81 (31 on each side), not 18 or 82
    for far, seen in ((81, True), (82, False), (19, True), (18, False)):
        h3 = h.clone()
        h3[0, far] += 1.0
        assert (not torch.equal(head(h3, mask)[0, 50], out[0, 50])) == seen, far


def test_model_offset_options():
    torch.manual_seed(0)
    video, vmask = torch.randn(2, 9, 6), torch.ones(2, 9, dtype=torch.bool)
    text, tmask = torch.randn(2, 3, 4), torch.ones(2, 3, dtype=torch.bool)
    m = MomentModel(6, 4, hidden=8, layers=1, heads=2, offset_head="tcn", offset_scale=8.0)
    out = m(video, vmask, text, tmask)
    assert out["offsets"].shape == (2, 9, 2) and (out["offsets"] >= 0).all()
    torch.manual_seed(0)
    one = MomentModel(6, 4, hidden=8, layers=1, heads=2, offset_head="tcn")
    one.load_state_dict(m.state_dict())
    one.eval(), m.eval()
    assert torch.allclose(m(video, vmask, text, tmask)["offsets"],
                          8 * one(video, vmask, text, tmask)["offsets"])
    with pytest.raises(ValueError, match="offset_head"):
        MomentModel(6, 4, offset_head="lstm")
    with pytest.raises(ValueError, match="offset_scale"):
        MomentModel(6, 4, offset_scale=0)
    with pytest.raises(ValueError, match="offset_head"):
        TrainConfig(offset_head="conv")


def test_span_unit_and_weights_of_the_models_own_span_losses():
    """In clip units the L1 is the normalised one times the video's clips (all 10 here); the
    IoU does not depend on the unit; the weights multiply."""
    torch.manual_seed(0)
    out = {"offsets": torch.rand(2, 10, 2) * 3, "fg_logits": torch.randn(2, 10),
           "saliency": torch.randn(2, 10)}
    labels = torch.zeros(2, 10, dtype=torch.long)
    labels[:, 3:7] = 1
    spans_t = target_spans(labels, [[[6.0, 14.0]]] * 2, 2.0)
    norm = basic_losses(out, labels, spans_t, torch.zeros(2, 10))
    clips = basic_losses(out, labels, spans_t, torch.zeros(2, 10), span_unit="clips")
    assert float(clips["loss_span"]) == pytest.approx(10 * float(norm["loss_span"]), rel=1e-5)
    assert float(clips["loss_iou"]) == pytest.approx(float(norm["loss_iou"]), rel=1e-5)
    w = basic_losses(out, labels, spans_t, torch.zeros(2, 10), w_span=10.0, w_iou=0.5)
    assert float(w["loss_span"]) == pytest.approx(10 * float(norm["loss_span"]), rel=1e-5)
    assert float(w["loss_iou"]) == pytest.approx(0.5 * float(norm["loss_iou"]), rel=1e-5)
    assert float(w["loss_fg"]) == float(norm["loss_fg"])
    with pytest.raises(ValueError, match="span_unit"):
        basic_losses(out, labels, spans_t, torch.zeros(2, 10), span_unit="seconds")


@pytest.mark.parametrize("bad,match", [({"span_unit": "s"}, "span_unit"),
                                       ({"w_span": -1.0}, "w_span"),
                                       ({"aux_beta": "x"}, "aux_beta"),
                                       ({"fg_threshold": 1.0}, "fg_threshold")])
def test_train_config_checks_the_new_fields(bad, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**bad)


def test_clip_spans_and_predictions():
    offsets = torch.tensor([[[0.5, 0.5], [1.5, 2.5], [0.1, 0.1]]])
    spans = clip_spans(offsets)
    assert torch.allclose(spans[0, 1], torch.tensor([0.0, 4.0]))  # centre 1.5 - 1.5, + 2.5
    out = {"offsets": offsets, "fg_logits": torch.tensor([[0.0, 3.0, -1.0]]),
           "saliency": torch.tensor([[0.1, 0.9, 0.2]])}
    lines = predict_windows(out, torch.tensor([3]), [{"qid": 7, "vid": "v", "duration": 6.0,
                                                       "clip_len": 2.0, "query": "q"}])
    (line,) = lines
    assert line["qid"] == 7 and len(line["pred_saliency_scores"]) == 3
    wins = line["pred_relevant_windows"]
    assert wins[0][:2] == [0.0, 6.0]  # clip 1 (best score): [0, 4] clips -> [0, 8] s, cut at 6
    assert [w[2] for w in wins] == sorted([w[2] for w in wins], reverse=True)


@pytest.mark.parametrize("cliptbp", [False, True])
def test_train_runs_and_evaluates(tiny_root, tmp_path, cliptbp):
    cfg = TrainConfig(data=str(tiny_root), epochs=2, out=str(tmp_path / "run"), cliptbp=cliptbp,
                      **TINY)
    summary = train(cfg)
    assert len(summary["history"]) == 2
    assert "MR-full-mAP" in summary["val"] and "HL-min-VeryGood-mAP" in summary["val"]
    assert ("loss_clip" in summary["history"][0]) == cliptbp
    preds = load_jsonl(tmp_path / "run" / "val_submission.jsonl")
    gt = load_jsonl(tiny_root / "annotations" / "highlight_val_release.jsonl")
    assert evaluate(preds, gt)["brief"] == summary["val"]
    for line in preds:
        assert 1 <= len(line["pred_relevant_windows"]) <= 10
    # the foreground-threshold decoder's predictions and metrics, beside
    segs = load_jsonl(tmp_path / "run" / "val_submission_segments.jsonl")
    assert evaluate(segs, gt)["brief"] == summary["val_segments"]
    assert [s["qid"] for s in segs] == [p["qid"] for p in preds]


def test_logged_terms_never_change_the_training(tiny_root, tmp_path):
    """log_terms adds ClipTBP's three terms to the history of a baseline run, computed
    without gradient: the run's own losses and predictions stay bit for bit the same."""
    plain = train(TrainConfig(data=str(tiny_root), epochs=2, out=str(tmp_path / "a"),
                              cliptbp=False, **TINY))
    logged = train(TrainConfig(data=str(tiny_root), epochs=2, out=str(tmp_path / "b"),
                               cliptbp=False, log_terms=True, **TINY))
    for a, b in zip(plain["history"], logged["history"]):
        assert {k: v for k, v in b.items() if not k.startswith("term_")} == a
        assert {"term_clip", "term_boun", "term_aux"} <= set(b) and b["term_clip"] > 0
    assert logged["val"] == plain["val"]


def test_resume_ends_exactly_like_an_uninterrupted_run(tiny_root, tmp_path):
    full = train(TrainConfig(data=str(tiny_root), epochs=3, out=str(tmp_path / "a"), **TINY))
    cfg = TrainConfig(data=str(tiny_root), epochs=3, out=str(tmp_path / "b"), **TINY)
    part = train(cfg, stop_after=1)
    assert [r["epoch"] for r in part["history"]] == [1] and part["val"] is None
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["epoch"] == 0
    resumed = train(cfg, resume=True)
    assert [r["epoch"] for r in resumed["history"]] == [1, 2, 3]
    assert resumed["history"] == full["history"]
    assert resumed["val"] == full["val"]
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_and_config_errors(tiny_root, tmp_path, capsys):
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps({"data": str(tiny_root), "epochs": 1, **TINY}))
    main(["--config", str(cfg_file), "--out", str(tmp_path / "cli"), "--no-cliptbp",
          "--set", "lr=0.002"])
    saved = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert saved["lr"] == 0.002 and saved["cliptbp"] is False
    assert "final validation" in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown config keys"):
        TrainConfig.from_dict({"epochz": 3})
    with pytest.raises(ValueError, match="dataset must be"):
        train(TrainConfig(data=str(tiny_root), dataset="charades", out=str(tmp_path / "z")))


def test_compare_main_job(tiny_root, tmp_path):
    result = compare.main(["--data", str(tiny_root), "--seeds", "0", "1", "--epochs", "1",
                           "--out", str(tmp_path / "cmp"), "--timing-T", "40",
                           "--timing-steps", "1", "--workers", "0",
                           *sum((["--set", f"{k}={json.dumps(v)}"] for k, v in TINY.items()), [])])
    assert len(result["runs"]) == 4
    assert {r["cliptbp"] for r in result["runs"]} == {False, True}
    assert set(result["timing"]) == {"cpu", "reference"}
    # the frozen reference model of the study, ClipTBP's terms logged in both settings
    cfg = json.loads((tmp_path / "cmp" / "baseline-seed0" / "config.json").read_text())
    assert cfg["offset_head"] == "tcn" and cfg["log_terms"] and not cfg["cliptbp"]
    for r in result["runs"]:
        assert set(r["errors"]) == {"nms", "segments"}
        assert r["val_segments"]["MR-full-mAP"] is not None
    report = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "with ClipTBP" in report and "baseline losses only" in report
    assert "foreground-threshold segments" in report and "paired by seed" in report
    assert "speed-up" in report
    for name in ("training_curves.png", "timelines.png", "embeddings.png"):
        assert (tmp_path / "cmp" / name).stat().st_size > 0


def test_loader_workers_change_nothing(tiny_root, tmp_path):
    """Batches loaded by worker processes (which fork the training process after the CPU
    kernels' pool has started) train exactly like batches loaded in the training process."""
    runs = [train(TrainConfig(data=str(tiny_root), epochs=2, out=str(tmp_path / f"w{n}"),
                              num_workers=n, **TINY)) for n in (0, 2)]
    assert runs[0]["history"] == runs[1]["history"]
    assert runs[0]["val"] == runs[1]["val"]
    a, b = (torch.load(tmp_path / f"w{n}" / "checkpoint.pt", weights_only=False)["model"]
            for n in (0, 2))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_num_workers_is_checked(bad):
    with pytest.raises(ValueError, match=r"num_workers must be an int >= 0, got"):
        TrainConfig(num_workers=bad)
