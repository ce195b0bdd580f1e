"""The evidence study's pieces (cliptbp_kernels.pipeline.study) on tiny data: settings,
raw-input losses, parallel runs, the decoder-threshold sweep."""

import json
from pathlib import Path

import pytest

from cliptbp_kernels.pipeline import study
from cliptbp_kernels.pipeline.synthetic import Knobs
from cliptbp_kernels.pipeline.train import TrainConfig

TINY = dict(hidden=16, layers=1, heads=2, batch_size=8, epochs=1, eval_every=1,
            progress=False)


def test_settings_are_valid_knobs_and_name_their_targets():
    assert study.SETTINGS["default"] == {}
    for name, knobs in study.SETTINGS.items():
        Knobs.from_dict(knobs)
        if name != "default":
            assert study.TARGETED[name], name
    combined = study.SETTINGS["combined"]
    for name, knobs in study.SETTINGS.items():
        if name not in ("default", "combined"):
            assert knobs.items() <= combined.items(), name
    for cands in study.CANDIDATE_ROUNDS.values():
        for fields in cands.values():
            TrainConfig(**fields)
    TrainConfig(**study.REFERENCE, **study.CLIPTBP)
    from cliptbp_kernels.adapters import RECIPE_AUX_BETA

    assert study.CLIPTBP["aux_beta"] == RECIPE_AUX_BETA


def test_the_frozen_reference_is_the_last_rounds_choice():
    """REFERENCE is what the committed selection chose, threshold included."""
    import json

    from paths import REPO

    last = max(study.CANDIDATE_ROUNDS)
    doc = json.loads((REPO / "docs" / "study" / f"selection-round{last}.json").read_text())
    assert doc["candidates"] == study.CANDIDATE_ROUNDS[last]
    assert {**doc["config"], "fg_threshold": doc["fg_threshold"]} == study.REFERENCE


def test_setting_data_and_raw_input_losses(tmp_path):
    with pytest.raises(ValueError, match="unknown setting"):
        study.setting_data(tmp_path, "hardest", 0)
    base = study.raw_input_losses(study.setting_data(tmp_path, "default", 0, train=4, val=40))
    hard = study.raw_input_losses(study.setting_data(tmp_path, "combined", 0, train=4, val=40))
    assert base["queries"] == hard["queries"] == 40
    assert hard["L_clip"] > base["L_clip"] and hard["L_boun"] >= base["L_boun"]
    assert (tmp_path / "combined-s0" / "MANIFEST.json").is_file()


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    root = study.setting_data(tmp / "data", "default", 1, train=24, val=12)
    cfgs = [dict(data=str(root), out=str(tmp / f"run{i}"), seed=i, cliptbp=bool(i), **TINY)
            for i in range(2)]
    return root, cfgs, study.run_many(cfgs, workers=2)


def test_run_many_trains_in_parallel_and_keeps_finished_runs(tiny_runs):
    root, cfgs, summaries = tiny_runs
    assert [s["config"]["seed"] for s in summaries] == [0, 1]
    assert [("loss_clip" in s["history"][0]) for s in summaries] == [False, True]
    for cfg in cfgs:
        assert "MR-full-mAP" in json.loads((Path(cfg["out"]) / "summary.json")
                                           .read_text())["val"]
    # a finished run is kept, not trained again
    stamp = (Path(cfgs[0]["out"]) / "summary.json").stat().st_mtime_ns
    again = study.run_many(cfgs[:1])
    assert again[0] == summaries[0]
    assert (Path(cfgs[0]["out"]) / "summary.json").stat().st_mtime_ns == stamp


def test_run_many_reports_a_failed_run(tmp_path):
    bad = dict(data=str(tmp_path / "missing"), dataset="qvhighlights", out=str(tmp_path / "r"),
               **TINY)
    with pytest.raises(RuntimeError, match="failed"):
        study.run_many([bad])


def test_decode_thresholds_reproduces_the_runs_own_decoder(tiny_runs):
    from cliptbp_kernels.pipeline.study_design import _run_metrics

    root, cfgs, _ = tiny_runs
    run = Path(cfgs[0]["out"])
    res = study.decode_thresholds(run, root, (0.3, 0.5))
    own = _run_metrics(run, root)["segments"]     # the run decoded at its fg_threshold, 0.5
    assert res["0.5"]["MR-full-mAP"] == own["MR-full-mAP"]
    assert res["0.5"]["boundary_error_s"] == pytest.approx(own["boundary_error_s"])
    assert set(res) == {"0.3", "0.5"}


def test_the_study_end_to_end_on_a_tiny_configuration(tmp_path):
    """Every run of the study (two settings, two seeds, the ablations and top-k at
    'combined', the three long-video runs), its statistics, verdict, tables and pictures,
    on tiny data in this process."""
    from cliptbp_kernels.pipeline.study import main

    out = tmp_path / "out"
    assert main(["run", "--data-dir", str(tmp_path / "data"), "--runs", str(tmp_path / "runs"),
                 "--out", str(out), "--seeds", "0", "1", "--settings", "default", "combined",
                 "--workers", "0", "--sizes", "24,16", "--tacos-sizes", "4,2",
                 "--resamples", "200", "--set", "epochs=1", "--set", "hidden=16",
                 "--set", "layers=1", "--set", "heads=2", "--set", "batch_size=8"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["outcome"] in ("support", "falsified", "inconclusive")
    assert len(res["runs"]) == 2 * 2 * 2 + 5 * 2    # settings x arms x seeds + combined extras
    assert set(res["paired"]) == {"cliptbp", "clip-only", "boun-only", "aux-only", "k5", "k50"}
    row = res["paired"]["cliptbp"]["combined"]["nms"]["MR-full-mAP"]
    assert row["bootstrap"]["lo"] <= row["bootstrap"]["mean"] <= row["bootstrap"]["hi"]
    assert set(res["tacos"]) == {"baseline", "cliptbp", "cliptbp-reference"}
    assert all(r["last_terms"]["term_clip"] is not None for r in res["runs"])
    assert res["admission"]["combined"]["L_clip"] > 0
    for name in ("report.md", "paired.csv", "runs.csv", "gain_vs_difficulty.png",
                 "training_curves.png", "timelines.png", "embeddings.png"):
        assert (out / name).stat().st_size > 0, name
    assert "Verdict" in (out / "report.md").read_text()
