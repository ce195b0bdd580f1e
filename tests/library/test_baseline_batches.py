"""The adapters on batches recorded from the baselines' own code (no baseline needed here).

``scripts/record_baselines.py`` ran each baseline's dataset, collate, model (with the recipe's
model change applied at the documented line) and criterion at initialisation on a batch of
real annotations with random features, and wrote what these tests need to
``tests/fixtures/baseline_<name>_batch.json``: the shapes and keys of its outputs and targets,
its own losses, the tensors the adapter reads (not the embeddings), and the adapter's results.
"""

import json
import math

import pytest
import torch

import cliptbp_kernels as ck
from cliptbp_kernels.adapters import RECIPE_AUX_BETA, univtg_inputs
from paths import REPO, script_module, shared_records

FIXTURES = REPO / "tests" / "fixtures"


def _load(name):
    return json.loads((FIXTURES / f"baseline_{name}_batch.json").read_text())


def _univtg_dicts(rec, D=8):
    t = {k: torch.tensor(v) for k, v in rec["tensors"].items()}
    B, T = rec["target_shapes"]["timestamp_mask"]
    targets = {
        "timestamp": t["timestamp"].reshape(B, T, 1).repeat(1, 1, 2),
        "timestamp_mask": t["timestamp_mask"].reshape(B, T),
        "timestamp_window": t["timestamp_window"].reshape(B, T),
        "span_labels_nn": t["span_labels_nn"].reshape(B, T, 2),
    }
    emb = torch.randn(B, T, D, generator=torch.Generator().manual_seed(0))
    outputs = {"pred_spans": t["pred_spans"].reshape(B, T, 2), "vid_mem": emb,
               "vid_mem_proj": emb + 1.0}
    return outputs, targets


def test_univtg_layout_is_the_recorded_one():
    rec = _load("univtg")
    B = len(rec["qids"])
    T = max(rec["num_clips"])
    # the recipe's model change exports the encoder's tokens, which differ from vid_mem_proj
    assert rec["shapes"]["vid_mem"] == [B, T, rec["shapes"]["vid_mem_proj"][2]]
    assert rec["emb"]["differs_from_vid_mem_proj"]
    assert rec["shapes"]["pred_spans"] == [B, T, 2]
    for key in ("timestamp", "span_labels_nn"):
        assert rec["target_shapes"][key] == [B, T, 2]
    for key in ("timestamp_mask", "timestamp_window"):
        assert rec["target_shapes"][key] == [B, T]


@pytest.mark.parametrize("name", ["univtg", "vms"])
def test_univtg_adapter_on_the_recorded_batch(name):
    """UniVTG, and Video Mamba Suite (its data set code and criterion; its model never ran)."""
    rec = _load(name)
    outputs, targets = _univtg_dicts(rec)
    out = univtg_inputs(outputs, targets)
    # the labels' foreground is UniVTG's own timestamp_window, as recorded
    assert out["labels"].tolist() == rec["ours"]["labels"]
    fg = (out["labels"] >= 1)
    assert torch.equal(fg, targets["timestamp_window"].bool() & targets["timestamp_mask"].bool())
    # L_b_aux of the recorded spans, per SmoothL1 threshold
    for beta, value in rec["ours"]["loss_aux"].items():
        got = ck.boundary_aux_loss(out["pred_spans"], out["target_spans"],
                                   mask=out["span_mask"], beta=float(beta))
        assert float(got) == pytest.approx(value, rel=1e-4, abs=1e-6), beta


def _check_aux_scale(rec, own_key):
    """At initialisation the recipe's aux term is within 10x of the baseline's own span
    regression, both as they enter their total loss: ``w_aux * L_b_aux`` (ClipTBPLoss's
    default ``w_aux``, Eq. 8) against the baseline's loss times its own weight."""
    own = rec["baseline_losses"][own_key] * rec["weights"][own_key]
    ours = ck.ClipTBPLoss().w_aux * rec["ours"]["loss_aux"][str(RECIPE_AUX_BETA)]
    assert own / 10 <= ours <= own * 10, (ours, own)


@pytest.mark.parametrize("name", ["univtg", "vms"])
def test_univtg_aux_term_on_the_scale_of_its_own_span_loss(name):
    """UniVTG's span regression is loss_b (weight b_loss_coef)."""
    _check_aux_scale(_load(name), "loss_b")


# --------------------------------------------------------------------------------------------
# FlashVTG: the points it regresses, and which window each one regresses
# --------------------------------------------------------------------------------------------

def _script():
    return script_module("record_baselines")


def _flashvtg_point(script, T):
    """FlashVTG's points for T clips: per present level, positions 0, s, 2s, ... with the
    level's regression range (as PointGenerator derives them from the strides) and stride."""
    strides = script.FLASHVTG_STRIDES
    ranges = list(zip((0,) + strides[1:-1], strides[1:])) + [(strides[-1], math.inf)]
    rows = []
    for s, (lo, hi), n in zip(strides, ranges, script.pyramid_sizes(T)):
        rows += [[i * s, lo, hi, s] for i in range(n)]
    return torch.tensor(rows, dtype=torch.float32)


FLASHVTG_TARGETS = json.loads((FIXTURES / "baseline_flashvtg_targets.json").read_text())


@pytest.mark.parametrize("rec", FLASHVTG_TARGETS["records"], ids=lambda r: r["data"])
def test_flashvtg_adapter_regresses_the_points_flashvtg_regresses(rec):
    from cliptbp_kernels.adapters import _flashvtg_spans

    recs = shared_records(rec["data"])
    script = _script()
    assert len(recs) == rec["queries"]
    items = []
    for r in recs:
        T = math.ceil(float(r["duration"]) / rec["clip_len"])
        point = _flashvtg_point(script, T)
        coord = torch.zeros(1, point.shape[0], 2)
        _, target, positive = _flashvtg_spans(point, coord, [r["relevant_windows"]],
                                              rec["clip_len"], [T])
        pos = torch.nonzero(positive[0]).flatten()
        gt = torch.tensor(r["relevant_windows"], dtype=torch.float32) / rec["clip_len"]
        items.append((r["qid"], script.point_items(pos, target[0, pos] * T, gt)))
    for (qid, got), (want_qid, want) in zip(items, rec["first"]):
        assert qid == want_qid and got == want, qid
    assert sum(len(c) for _, c in items) == rec["positives"]
    assert script.digest_strings(items) == rec["sha256"]


# --------------------------------------------------------------------------------------------
# FlashVTG: one batch per data set from its own code
# --------------------------------------------------------------------------------------------

FLASHVTG_BATCHES = ("qvhighlights", "tacos")


def _flashvtg_dicts(rec, D=8):
    B = len(rec["qids"])
    msk = torch.tensor(rec["tensors"]["video_msk"]).reshape(B, -1).int()
    T = msk.shape[1]
    coord = torch.tensor(rec["tensors"]["out_coord"]).reshape(B, -1, 2)
    emb = torch.randn(B, T, D, generator=torch.Generator().manual_seed(0))
    outputs = {"video_emb_pre_relu": emb, "video_emb": emb.relu(), "video_msk": msk,
               "out_coord": coord, "point": torch.tensor(rec["tensors"]["point"])}
    return outputs, {"label": rec["meta"], "fps": torch.full((256,), 0.5)}


@pytest.mark.parametrize("name", FLASHVTG_BATCHES)
def test_flashvtg_recorded_layout_and_rectified_video_emb(name):
    rec = _load(f"flashvtg_{name}")
    B, T = len(rec["qids"]), max(rec["num_clips"])
    assert rec["shapes"]["video_emb_pre_relu"] == rec["shapes"]["video_emb"]
    assert rec["shapes"]["video_emb"][:2] == [B, T]
    assert rec["shapes"]["point"][1] == 4
    assert rec["shapes"]["out_coord"] == [B, rec["shapes"]["point"][0], 2]
    # FlashVTG's own video_emb is relu(tokens): half zeros, no negative cosine similarity
    emb = rec["video_emb"]
    assert emb["equals_relu_of_pre"] and emb["zero_fraction_pre_relu"] == 0.0
    assert 0.4 < emb["zero_fraction_video_emb"] < 0.6 and emb["min_cosine_video_emb"] >= 0.0


@pytest.mark.parametrize("name", FLASHVTG_BATCHES)
def test_flashvtg_adapter_on_the_recorded_batch(name):
    from cliptbp_kernels.adapters import flashvtg_inputs

    rec = _load(f"flashvtg_{name}")
    outputs, targets = _flashvtg_dicts(rec)
    out = flashvtg_inputs(outputs, targets, clip_len=2.0)
    assert out["labels"].tolist() == rec["ours"]["labels"]
    # the labels' foreground is FlashVTG's own (saliency_all_labels > 0)
    fg = [torch.nonzero(row >= 1).flatten().tolist() for row in out["labels"]]
    assert fg == rec["own_foreground"]
    assert int(out["span_mask"].sum()) == rec["ours"]["positives"]
    for beta, value in rec["ours"]["loss_aux"].items():
        got = ck.boundary_aux_loss(out["pred_spans"], out["target_spans"],
                                   mask=out["span_mask"], beta=float(beta))
        assert float(got) == pytest.approx(value, rel=1e-4, abs=1e-6), beta


@pytest.mark.parametrize("name", FLASHVTG_BATCHES)
def test_flashvtg_aux_term_on_the_scale_of_its_own_span_loss(name):
    """FlashVTG's span regression is loss_reg (weight 1 in its own options)."""
    _check_aux_scale(_load(f"flashvtg_{name}"), "loss_reg")


# --------------------------------------------------------------------------------------------
# Moment-DETR: queries, the matcher's pairs
# --------------------------------------------------------------------------------------------

LIGHTHOUSE = ("moment_detr", "qd_detr", "eatr", "cg_detr", "tr_detr", "uvcom", "taskweave")


def _check_detr_recipe(rec):
    """The DETR-style recipe on a recorded batch: the matched spans' L_b_aux, the labels, and
    the aux term's scale against the baseline's span loss as it enters its total."""
    from cliptbp_kernels.adapters import detr_matched_spans, inputs_from_windows

    B = len(rec["qids"])
    T = max(rec["num_clips"])
    assert rec["shapes"]["vid_mem"][:2] == [B, T]          # the recipe's line exports it
    t = rec["tensors"]
    pred = torch.tensor(t["pred_spans"]).reshape(B, -1, 2)
    labels = [{"spans": torch.tensor(s).reshape(-1, 2)} for s in t["span_labels"]]
    indices = [(torch.tensor(q), torch.tensor(k)) for q, k in t["indices"]]
    p, tg = detr_matched_spans(pred, labels, indices)
    assert p.shape[0] == rec["ours"]["matched"]
    for beta, value in rec["ours"]["loss_aux"].items():
        got = ck.boundary_aux_loss(p, tg, beta=float(beta))
        assert float(got) == pytest.approx(value, rel=1e-4, abs=1e-6), beta
    mask = torch.tensor(t["src_vid_mask"]).reshape(B, T)
    emb = torch.randn(B, T, 8, generator=torch.Generator().manual_seed(0))
    ck_in = inputs_from_windows(emb, mask, [m["relevant_windows"] for m in rec["meta"]],
                                rec["ours"].get("clip_len", 2.0),
                                rule=rec["ours"].get("rule", "center"))
    assert ck_in["labels"].tolist() == rec["ours"]["labels"]
    _check_aux_scale(rec, "loss_span")


def test_moment_detr_recipe_on_the_recorded_batch():
    _check_detr_recipe(_load("moment_detr"))


@pytest.mark.parametrize("model", LIGHTHOUSE)
def test_lighthouse_recipe_on_the_recorded_batch(model):
    rec = _load(f"lighthouse_{model}")
    assert rec["model"] == model
    _check_detr_recipe(rec)
    # the models that export video_mask are those the docs name
    assert rec["exports_video_mask"] == (model not in ("moment_detr", "eatr"))


# --------------------------------------------------------------------------------------------
# TD-DETR: pooled long videos, one clip length per sample
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["qvhighlights", "tacos"])
def test_td_detr_recipe_on_the_recorded_batch(name):
    rec = _load(f"td_detr_{name}")
    _check_detr_recipe(rec)
    # the recipe's labels are TD-DETR's own foreground (saliency_all_labels > 0)
    fg = [[i for i, v in enumerate(row) if v >= 1] for row in rec["ours"]["labels"]]
    assert fg == rec["own_foreground"]


def test_td_detr_pooled_videos_need_their_own_clip_length():
    """TD-DETR pools a TACoS video of more than 200 clips to 200 rows of clip_len * n / 200
    seconds; the recorded batch has two such samples. Their own length reproduces TD-DETR's
    foreground; the one clip length of the batch labels them wrongly."""
    from cliptbp_kernels.labels import windows_to_labels

    rec = _load("td_detr_tacos")
    lengths = rec["ours"]["clip_len"]
    pooled = [i for i, n in enumerate(rec["video_clips"]) if n > 200]
    assert pooled and all(rec["num_clips"][i] == 200 for i in pooled)
    for i, n in enumerate(rec["video_clips"]):
        assert lengths[i] == pytest.approx(2.0 * n / 200 if n > 200 else 2.0)
    windows = [m["relevant_windows"] for m in rec["meta"]]
    one = windows_to_labels(windows, rec["num_clips"], 2.0, rule="floor")
    fg = [[j for j, v in enumerate(row) if v >= 1] for row in one.tolist()]
    for i in range(len(windows)):
        assert (fg[i] == rec["own_foreground"][i]) == (i not in pooled), i
