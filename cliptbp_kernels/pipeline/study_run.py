"""The evidence study's runs and their analysis (``python -m cliptbp_kernels.pipeline.study
run``; the design and the criteria: docs/study.md).

Runs: every setting x {baseline, ClipTBP} x seeds; at ``combined`` each ClipTBP term alone and
``k`` in {5, 50}; the TACoS-like long-video runs (baseline, ClipTBP with the fused CPU
criterion, ClipTBP with the PyTorch reference criterion), each alone for its wall clock.
Analysis: both decoders' metrics and error rates per run, paired differences (t over seeds,
bootstrap over queries), the admission rule, the pre-registered verdict, CSV / JSON / Markdown
and pictures in the output folder.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from . import study_design as study
from .study_stats import DELTA, paired_bootstrap, paired_t, verdict

__all__ = ["SEEDS", "ABLATIONS", "TOPK", "METRICS", "jobs", "run_study"]

SEEDS = (0, 1, 2)
#: Each ClipTBP term alone at ``combined`` (paper Tab. 3): the other weights 0.
ABLATIONS: Dict[str, Dict[str, float]] = {
    "clip-only": {"w_clip": 3.0, "w_boun": 0.0, "w_aux": 0.0},
    "boun-only": {"w_clip": 0.0, "w_boun": 3.0, "w_aux": 0.0},
    "aux-only": {"w_clip": 0.0, "w_boun": 0.0, "w_aux": 2.0},
}
#: Hard negatives per anchor besides the main runs' 20, at ``combined`` (paper Tab. 4).
TOPK = (5, 50)
#: (key, higher is better) of the metrics compared per decoder.
METRICS = (("MR-full-mAP", True), ("MR-full-R1@0.5", True), ("MR-full-R1@0.7", True),
           ("MR-short-mAP", True), ("boundary_error_s", False), ("distractor_fp", False),
           ("gap_bridging", False), ("window_miss", False))
DECODERS = ("nms", "segments")
SUBMISSIONS = {"nms": "val_submission.jsonl", "segments": "val_submission_segments.jsonl"}


def _arms(setting: str) -> Dict[str, Dict]:
    # The baseline carries ClipTBP's options too: without ClipTBP in the loss they only set
    # how its logged terms (log_terms) are computed, the same way as in the ClipTBP arms.
    arms = {"baseline": {"cliptbp": False, **study.CLIPTBP},
            "cliptbp": {"cliptbp": True, **study.CLIPTBP}}
    if setting == "combined":
        for name, w in ABLATIONS.items():
            arms[name] = {"cliptbp": True, **study.CLIPTBP, **w}
        for k in TOPK:
            arms[f"k{k}"] = {"cliptbp": True, **study.CLIPTBP, "k": k}
    return arms


def jobs(data_dir: Path, runs_dir: Path, settings: Sequence[str], seeds: Sequence[int],
         sizes: Optional[Dict] = None, overrides: Optional[Dict] = None) -> List[Dict]:
    """The QVHighlights-like runs: dicts with ``setting``, ``arm``, ``seed``, ``data_root``
    and ``cfg`` (TrainConfig fields)."""
    from .train import TrainConfig

    out = []
    for setting in settings:
        root = study.setting_data(data_dir, setting, study.DATA_SEED, **(sizes or {}))
        for arm, fields in _arms(setting).items():
            for seed in seeds:
                cfg = dict(data=str(root), dataset="qvhighlights", seed=seed,
                           out=str(Path(runs_dir) / f"{setting}-{arm}-seed{seed}"),
                           progress=False, log_terms=True, cache_features=True,
                           **study.REFERENCE, **fields)
                cfg.update(overrides or {})
                cfg["eval_every"] = cfg.get("epochs", TrainConfig.epochs)
                TrainConfig(**cfg)                   # checked before anything runs
                out.append(dict(setting=setting, arm=arm, seed=seed, data_root=root, cfg=cfg))
    return out


def tacos_jobs(data_dir: Path, runs_dir: Path, sizes: Optional[Dict] = None,
               overrides: Optional[Dict] = None, seed: int = 0) -> List[Dict]:
    """The long-video runs on the TACoS-like variant (one training seed)."""
    from .synthetic import generate
    from .train import TrainConfig

    root = Path(data_dir) / f"tacos-s{study.DATA_SEED}"
    generate(root, "tacos", seed=study.DATA_SEED, **(sizes or {}))
    arms = {"baseline": {"cliptbp": False},
            "cliptbp": {"cliptbp": True, **study.CLIPTBP, "backend": "cpu"},
            "cliptbp-reference": {"cliptbp": True, **study.CLIPTBP, "backend": "reference"}}
    out = []
    for arm, fields in arms.items():
        cfg = dict(data=str(root), dataset="tacos", seed=seed, batch_size=8,
                   out=str(Path(runs_dir) / f"tacos-{arm}-seed{seed}"), progress=False,
                   cache_features=True, **study.REFERENCE, **fields)
        cfg.update(overrides or {})
        cfg["eval_every"] = cfg.get("epochs", TrainConfig.epochs)
        out.append(dict(setting="tacos", arm=arm, seed=seed, data_root=root, cfg=cfg))
    return out


def _load(path: Path) -> List[dict]:
    from .eval import load_jsonl

    return load_jsonl(path)


def analyse_run(job: Dict) -> Dict:
    """Both decoders' brief metrics and error rates, per-query scores, and the same split by
    windows per query."""
    from .diagnostics import error_rates, per_query_scores, windows_per_query_group
    from .eval import evaluate

    run = Path(job["cfg"]["out"])
    root = Path(job["data_root"])
    gt = _load(root / "annotations" / "highlight_val_release.jsonl")
    segs = _load(root / "segments" / "val.jsonl")
    groups = windows_per_query_group(gt)
    res: Dict = {"history": json.loads((run / "summary.json").read_text())["history"]}
    for dec in DECODERS:
        sub = _load(run / SUBMISSIONS[dec])
        by_group = {}
        for g, qids in groups.items():
            keep = set(qids)
            if not keep:
                continue
            gt_g = [x for x in gt if x["qid"] in keep]
            sub_g = [x for x in sub if x["qid"] in keep]
            by_group[g] = {**evaluate(sub_g, gt_g)["brief"], **error_rates(sub_g, gt_g, segs),
                           "queries": len(keep)}
        res[dec] = {**evaluate(sub, gt)["brief"], **error_rates(sub, gt, segs),
                    "per_query": per_query_scores(sub, gt), "by_windows": by_group}
    return res


def _mean(xs: Sequence[Optional[float]]) -> Optional[float]:
    v = [x for x in xs if x is not None]
    return float(np.mean(v)) if v else None


def compare(results: Dict, settings: Sequence[str], seeds: Sequence[int], arm: str = "cliptbp",
            resamples: int = 10000) -> Dict:
    """Paired differences ``arm`` minus baseline per setting, decoder and metric: the t
    interval over seeds, and for mAP / R1 the bootstrap over queries pooled across seeds."""
    out: Dict = {}
    for setting in settings:
        if (setting, arm, seeds[0]) not in results:
            continue
        out[setting] = {}
        for dec in DECODERS:
            row = {}
            for key, _ in METRICS:
                base = [results[(setting, "baseline", s)][dec][key] for s in seeds]
                other = [results[(setting, arm, s)][dec][key] for s in seeds]
                diffs = [None if a is None or b is None else b - a for a, b in zip(base, other)]
                row[key] = {"baseline": _mean(base), arm: _mean(other), "t": paired_t(diffs)}
            qids = list(results[(setting, "baseline", seeds[0])][dec]["per_query"])
            for key, fn in (("MR-full-mAP", lambda r: r["ap"]),
                            ("MR-full-R1@0.5", lambda r: 100.0 * (r["iou1"] >= 0.5)),
                            ("MR-full-R1@0.7", lambda r: 100.0 * (r["iou1"] >= 0.7))):
                d = np.array([[fn(results[(setting, arm, s)][dec]["per_query"][q])
                               - fn(results[(setting, "baseline", s)][dec]["per_query"][q])
                               for q in qids] for s in seeds])
                row[key]["bootstrap"] = paired_bootstrap(d, resamples=resamples)
            out[setting][dec] = row
    return out


def admission_table(raw: Dict, results: Dict, settings: Sequence[str], seeds: Sequence[int]
                    ) -> Dict:
    """The admission rule per non-default setting (docs/study.md)."""
    def base_rate(setting: str, key: str) -> Optional[float]:
        return _mean([results[(setting, "baseline", s)]["nms"][key] for s in seeds])

    out = {}
    for setting in settings:
        if setting == "default":
            continue
        ratios = {}
        for key in study.TARGETED[setting]:
            b, d = base_rate(setting, key), base_rate("default", key)
            ratios[key] = None if b is None or not d else b / d
            if b is not None and d == 0:
                ratios[key] = float("inf") if b > 0 else None
        reached = sum(1 for r in ratios.values() if r is not None and r >= 1.5)
        need = 2 if setting == "combined" else 1
        out[setting] = {"L_clip": raw[setting]["L_clip"], "L_boun": raw[setting]["L_boun"],
                        "passes_raw": raw[setting]["passes_raw"], "targeted_ratio": ratios,
                        "passes_error": reached >= need,
                        "admitted": raw[setting]["passes_raw"] and reached >= need}
    return out


def term_checks(results: Dict, seeds: Sequence[int]) -> Dict[str, Optional[bool]]:
    """At ``combined``, with both decoders (mean over seeds, against the baseline):
    L_clip alone lowers the distractor false-positive rate; L_boun alone the boundary error
    and the gap-bridging rate."""
    def lowers(arm: str, key: str) -> Optional[bool]:
        ok = []
        for dec in DECODERS:
            b = _mean([results[("combined", "baseline", s)][dec][key] for s in seeds])
            a = _mean([results[("combined", arm, s)][dec][key] for s in seeds])
            if a is None or b is None:
                return None
            ok.append(a < b)
        return all(ok)

    return {"clip_reduces_distractor_fp": lowers("clip-only", "distractor_fp"),
            "boun_reduces_boundary_error": lowers("boun-only", "boundary_error_s"),
            "boun_reduces_gap_bridging": lowers("boun-only", "gap_bridging")}


def _fmt(x: Optional[float], digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _ci(d: Optional[Dict]) -> str:
    if not d or d.get("lo") is None:
        return "-"
    return f"[{d['lo']:+.2f}, {d['hi']:+.2f}]"


def write_outputs(out: Path, doc: Dict) -> None:
    """results.json, paired.csv, runs.csv and report.md under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(doc["summary"], indent=1) + "\n")
    with open(out / "paired.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["comparison", "setting", "decoder", "metric", "baseline", "other",
                    "diff_mean", "t_lo", "t_hi", "boot_lo", "boot_hi"])
        for comp, table in doc["summary"]["paired"].items():
            for setting, per in table.items():
                for dec, row in per.items():
                    for key, r in row.items():
                        other = [v for k, v in r.items() if k not in ("baseline", "t",
                                                                     "bootstrap")][0]
                        b = r.get("bootstrap", {})
                        w.writerow([comp, setting, dec, key, r["baseline"], other,
                                    r["t"]["mean"], r["t"]["lo"], r["t"]["hi"], b.get("lo"),
                                    b.get("hi")])
    with open(out / "runs.csv", "w", newline="") as f:
        w = csv.writer(f)
        keys = [k for k, _ in METRICS]
        w.writerow(["setting", "arm", "seed", "decoder", *keys, "term_clip", "term_boun",
                    "term_aux"])
        for r in doc["summary"]["runs"]:
            for dec in DECODERS:
                w.writerow([r["setting"], r["arm"], r["seed"], dec,
                            *[r[dec].get(k) for k in keys],
                            *[r["last_terms"].get(t) for t in ("term_clip", "term_boun",
                                                               "term_aux")]])
    (out / "report.md").write_text(report_md(doc["summary"]))


def report_md(s: Dict) -> str:
    lines = [f"# Evidence study: {s['outcome'].upper()}", "",
             f"Command: `{s['command']}`; {len(s['runs'])} runs, seeds {s['seeds']}, "
             f"{s['minutes']:.0f} min on this machine.", "",
             "## Paired differences, ClipTBP minus baseline (mean over seeds; t interval over "
             "seeds; bootstrap over queries pooled across seeds)", ""]
    for dec in DECODERS:
        lines += [f"### Decoder: {dec}", "",
                  "| setting | admitted | baseline mAP | ClipTBP mAP | mAP gain | t 95 % | "
                  "bootstrap 95 % | R1@0.7 gain | bootstrap 95 % | boundary error (s) "
                  "base / ClipTBP | distractor FP | gap bridging |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for setting, per in s["paired"]["cliptbp"].items():
            r = per[dec]
            m, r7 = r["MR-full-mAP"], r["MR-full-R1@0.7"]
            adm = "-" if setting == "default" else (
                "yes" if s["admission"][setting]["admitted"] else "no")
            be, fp, gb = r["boundary_error_s"], r["distractor_fp"], r["gap_bridging"]
            lines.append(
                f"| {setting} | {adm} | {_fmt(m['baseline'])} | {_fmt(m['cliptbp'])} | "
                f"{_fmt(m['t']['mean'], 2)} | {_ci(m['t'])} | {_ci(m['bootstrap'])} | "
                f"{_fmt(r7['t']['mean'])} | {_ci(r7['bootstrap'])} | "
                f"{_fmt(be['baseline'])} / {_fmt(be['cliptbp'])} | "
                f"{_fmt(fp['baseline'], 3)} / {_fmt(fp['cliptbp'], 3)} | "
                f"{_fmt(gb['baseline'], 3)} / {_fmt(gb['cliptbp'], 3)} |")
        lines.append("")
    v = s["verdict"]
    lines += ["## Verdict (docs/study.md, delta = %.1f mAP points)" % v["delta"], "",
              f"Outcome: **{v['outcome']}**. Admitted hard settings: "
              f"{', '.join(v['admitted']) or 'none'}.", ""]
    lines += [f"- {r}" for r in v["reasons"]]
    lines += ["", "Conditions: `" + json.dumps(v["conditions"]) + "`", "",
              "## Admission", "", "| setting | L_clip | L_boun | targeted error / default | "
              "admitted |", "|---|---|---|---|---|"]
    for setting, a in s["admission"].items():
        ratios = ", ".join(f"{k} {_fmt(x)}x" for k, x in a["targeted_ratio"].items())
        lines.append(f"| {setting} | {a['L_clip']:.3f} | {a['L_boun']:.3f} | {ratios} | "
                     f"{'yes' if a['admitted'] else 'no'} |")
    for comp in [c for c in s["paired"] if c != "cliptbp"]:
        r = s["paired"][comp].get("combined")
        if not r:
            continue
        lines += ["", f"## combined: {comp} minus baseline", "",
                  "| decoder | mAP gain | bootstrap 95 % | boundary error | distractor FP | "
                  "gap bridging |", "|---|---|---|---|---|---|"]
        for dec in DECODERS:
            x = r[dec]
            lines.append(f"| {dec} | {_fmt(x['MR-full-mAP']['t']['mean'])} | "
                         f"{_ci(x['MR-full-mAP']['bootstrap'])} | "
                         f"{_fmt(x['boundary_error_s']['t']['mean'])} | "
                         f"{_fmt(x['distractor_fp']['t']['mean'], 3)} | "
                         f"{_fmt(x['gap_bridging']['t']['mean'], 3)} |")
    if s.get("tacos"):
        lines += ["", "## Long videos (TACoS-like, one seed)", "",
                  "| run | R1@0.3 | R1@0.5 | mAP | wall clock (min) |", "|---|---|---|---|---|"]
        for arm, t in s["tacos"].items():
            lines.append(f"| {arm} | {_fmt(t['val'].get('MR-full-R1@0.3'))} | "
                         f"{_fmt(t['val'].get('MR-full-R1@0.5'))} | "
                         f"{_fmt(t['val'].get('MR-full-mAP'))} | {t['wall_s'] / 60:.1f} |")
    return "\n".join(lines) + "\n"


def run_study(data_dir: Path, runs_dir: Path, out: Path, settings: Sequence[str] = tuple(
        study.SETTINGS), seeds: Sequence[int] = SEEDS, sizes: Optional[Dict] = None,
              tacos_sizes: Optional[Dict] = None, overrides: Optional[Dict] = None,
              workers: int = 2, resamples: int = 10000, tacos: bool = True,
              command: str = "") -> Dict:
    """Run (or resume) the whole study and write its outputs to ``out``."""
    t0 = time.perf_counter()
    data_dir, runs_dir, out = Path(data_dir), Path(runs_dir), Path(out)
    qvh = jobs(data_dir, runs_dir, settings, seeds, sizes, overrides)
    print(f"study: {len(qvh)} runs on the QVHighlights-like settings "
          f"({workers or 'in-process'} at a time)", flush=True)
    study.run_many([j["cfg"] for j in qvh], workers=workers)
    tacos_res = {}
    if tacos:
        tj = tacos_jobs(data_dir, runs_dir, tacos_sizes, overrides)
        print(f"study: {len(tj)} long-video runs, one at a time", flush=True)
        for j, summ in zip(tj, study.run_many([j["cfg"] for j in tj],
                                              workers=1 if workers else 0, threads=2)):
            wall = json.loads((Path(j["cfg"]["out"]) / "wall.json").read_text())["wall_s"]
            tacos_res[j["arm"]] = {"val": summ["val"], "wall_s": wall,
                                   "step_ms": summ["step_ms"]}
    print("study: analysing", flush=True)
    results = {(j["setting"], j["arm"], j["seed"]): analyse_run(j) for j in qvh}
    raw = {s: study.raw_input_losses(study.setting_data(data_dir, s, study.DATA_SEED,
                                                        **(sizes or {})))
           for s in settings}
    for r in raw.values():
        r["passes_raw"] = r["L_clip"] > 0.3 and r["L_boun"] > 0.05
    paired = {"cliptbp": compare(results, settings, seeds, "cliptbp", resamples)}
    if "combined" in settings:
        for arm in [*ABLATIONS, *[f"k{k}" for k in TOPK]]:
            paired[arm] = compare(results, ["combined"], seeds, arm, resamples)
    adm = admission_table(raw, results, settings, seeds)
    admitted = [s for s, a in adm.items() if a["admitted"]]
    gains = {dec: {s: paired["cliptbp"][s][dec]["MR-full-mAP"]["bootstrap"]
                   for s in paired["cliptbp"]} for dec in DECODERS}
    difficulty = {dec: {s: 100.0 - paired["cliptbp"][s]["nms"]["MR-full-mAP"]["baseline"]
                        for s in paired["cliptbp"]} for dec in DECODERS}
    checks = term_checks(results, seeds) if "combined" in settings else {}
    v = verdict(gains, difficulty, admitted, checks, DELTA)
    runs = []
    for (setting, arm, seed), r in results.items():
        last = r["history"][-1]
        runs.append({"setting": setting, "arm": arm, "seed": seed,
                     "last_terms": {k: last.get(k) for k in ("term_clip", "term_boun",
                                                            "term_aux")},
                     **{dec: {k: r[dec].get(k) for k, _ in METRICS} for dec in DECODERS},
                     "by_windows": {dec: r[dec]["by_windows"] for dec in DECODERS}})
    summary = {"command": command, "seeds": list(seeds), "settings": list(settings),
               "reference": study.REFERENCE, "cliptbp": study.CLIPTBP, "delta": DELTA,
               "outcome": v["outcome"], "verdict": v, "admission": adm, "paired": paired,
               "runs": runs, "tacos": tacos_res,
               "minutes": (time.perf_counter() - t0) / 60}
    doc = {"summary": summary, "results": results}
    write_outputs(out, doc)
    try:
        from .study_plots import write_plots

        write_plots(out, doc, qvh, runs_dir)
    except ImportError as e:  # pragma: no cover - matplotlib is a dependency
        print(f"study: no pictures ({e})")
    print((out / "report.md").read_text())
    return doc
