"""The evidence study's design (docs/study.md): its settings, the frozen reference model,
ClipTBP's options, data per setting, raw-input losses, the reference-model selection, and
the runner that trains many configurations side by side. The command line is
``python -m cliptbp_kernels.pipeline.study``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from .. import boundary_margin_loss, clip_pair_loss
from .data import collate, load_qvhighlights
from .synthetic import generate

__all__ = ["SETTINGS", "TARGETED", "DATA_SEED", "SELECTION_SEED", "CANDIDATES",
           "CANDIDATE_ROUNDS", "REFERENCE", "CLIPTBP",
           "THRESHOLDS", "setting_data", "raw_input_losses", "admission", "select",
           "run_many", "decode_thresholds"]

#: The study's settings: the default data and each difficulty knob alone at one level, and
#: all of them together (fixed before any training run; docs/study.md).
SETTINGS: Dict[str, Dict[str, float]] = {
    "default": {},
    "distractor": {"distractor_mix": 0.7},
    "gap": {"gap_fill": 0.8},
    "crossfade": {"crossfade": 4},
    "appearance": {"appearance": 1.0},
    "noise": {"noise": 1.5},
    "combined": {"distractor_mix": 0.7, "gap_fill": 0.8, "crossfade": 4, "appearance": 1.0,
                 "noise": 1.5},
}
#: The error rate (diagnostics.error_rates) that each setting's knob targets.
TARGETED: Dict[str, Sequence[str]] = {
    "distractor": ("distractor_fp",),
    "gap": ("gap_bridging",),
    "crossfade": ("boundary_error_s",),
    "appearance": ("window_miss",),
    "noise": ("window_miss",),
    "combined": ("distractor_fp", "gap_bridging", "boundary_error_s", "window_miss"),
}
#: Data seed of the study's runs, and the separate one on which the reference model and the
#: decoder threshold are chosen.
DATA_SEED = 0
SELECTION_SEED = 1
#: Reference-model candidates (TrainConfig fields) compared by ``select``, per round. All
#: train 12 epochs (456 steps of 32): what the study's 90-minute budget allows. Round 1 kept
#: the first round's offsets (softplus, in clips); none of its candidates learned boundaries
#: (docs/study/selection-round1.md), so round 2 scales the offsets (``offset_scale``); that
#: did not either (train IoU loss stuck at 0.45: per-clip heads on softmax attention cannot
#: count the clips of a window), so round 3 regresses the offsets with a temporal
#: convolution head (``offset_head="tcn"``).
CANDIDATE_ROUNDS: Dict[int, Dict[str, Dict]] = {
    1: {"A-normalized-w1": {"span_unit": "normalized", "w_span": 1.0},
        "B-normalized-w10": {"span_unit": "normalized", "w_span": 10.0},
        "C-clips-w0.1": {"span_unit": "clips", "w_span": 0.1},
        "D-clips-w1": {"span_unit": "clips", "w_span": 1.0}},
    2: {"E-normalized-w10-scale8": {"span_unit": "normalized", "w_span": 10.0,
                                    "offset_scale": 8.0},
        "F-clips-w0.1-scale8": {"span_unit": "clips", "w_span": 0.1, "offset_scale": 8.0},
        "G-clips-w1-scale8": {"span_unit": "clips", "w_span": 1.0, "offset_scale": 8.0},
        "H-normalized-w1-scale8": {"span_unit": "normalized", "w_span": 1.0,
                                   "offset_scale": 8.0}},
    3: {"I-tcn-normalized-w1": {"offset_head": "tcn", "span_unit": "normalized",
                                "w_span": 1.0},
        "J-tcn-normalized-w1-scale8": {"offset_head": "tcn", "span_unit": "normalized",
                                       "w_span": 1.0, "offset_scale": 8.0},
        "K-tcn-normalized-w10": {"offset_head": "tcn", "span_unit": "normalized",
                                 "w_span": 10.0},
        "L-tcn-clips-w0.1": {"offset_head": "tcn", "span_unit": "clips", "w_span": 0.1}},
}
CANDIDATES = CANDIDATE_ROUNDS[max(CANDIDATE_ROUNDS)]
#: Foreground-decoder thresholds compared by ``select``.
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
#: The frozen reference model (TrainConfig fields): round 3's choice and threshold
#: (docs/study/selection-round3.md), committed before any ClipTBP run of the study.
REFERENCE: Dict = {"offset_head": "tcn", "span_unit": "normalized", "w_span": 1.0,
                   "offset_scale": 8.0, "fg_threshold": 0.3}
#: ClipTBP's options in the study: Eq. 8's weights, L_b_aux in fractions of the video with
#: the adapters' SmoothL1 threshold (RECIPE_AUX_BETA).
CLIPTBP: Dict = {"w_clip": 3.0, "w_boun": 3.0, "w_aux": 2.0, "k": 20, "aux_beta": 0.01}


def setting_data(root: Path, setting: str, seed: int, train: Optional[int] = None,
                 val: Optional[int] = None) -> Path:
    """Generate (or keep) the QVHighlights-like data of a setting: ``root/<setting>-s<seed>``."""
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; known: {sorted(SETTINGS)}")
    out = Path(root) / f"{setting}-s{seed}"
    generate(out, "qvh", seed=seed, train=train, val=val, knobs=SETTINGS[setting])
    return out


def raw_input_losses(data_root: Path, split: str = "val") -> Dict[str, float]:
    """ClipTBP's ``L_clip`` and ``L_boun`` (default options, reference backend) on the raw
    input features of a split: the concatenated, L2-normalised video features as ``emb``,
    the labels of the data loader, all queries in one batch."""
    ds = load_qvhighlights(data_root, split)
    batch = collate([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        lc = clip_pair_loss(batch["video"], batch["labels"], backend="reference")
        lb = boundary_margin_loss(batch["video"], batch["labels"], backend="reference")
    return {"L_clip": float(lc), "L_boun": float(lb), "queries": len(ds)}


def admission(root: Path, seed: int = DATA_SEED) -> Dict[str, Dict[str, float]]:
    """``raw_input_losses`` of every setting's validation split (the data-side half of the
    admission rule: L_clip > 0.3 and L_boun > 0.05)."""
    out = {}
    for name in SETTINGS:
        r = raw_input_losses(setting_data(root, name, seed))
        r["passes_raw"] = r["L_clip"] > 0.3 and r["L_boun"] > 0.05
        out[name] = r
        print(f"{name:>11}: L_clip {r['L_clip']:.3f}  L_boun {r['L_boun']:.3f}  "
              f"{'passes' if r['passes_raw'] else 'fails'}", flush=True)
    return out


def run_many(configs: Sequence[Dict], workers: int = 2, threads: int = 1) -> List[Dict]:
    """Train every TrainConfig dict, ``workers`` at a time, each in its own process with
    ``threads`` torch threads (on 2 cores two one-thread runs side by side finish about 1.5x
    sooner than one after the other with two threads each); ``workers=0`` trains them one
    after the other in this process (tests). A run whose ``OUT/summary.json`` exists is kept.
    Each run's wall clock goes to ``OUT/wall.json``. Returns the summaries, in order; a
    failed run raises with its log's tail."""
    import os
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    from .train import TrainConfig, train

    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))

    def one(cfg: Dict) -> Dict:
        out = Path(cfg["out"])
        done = out / "summary.json"
        if done.is_file():
            return json.loads(done.read_text())
        out.mkdir(parents=True, exist_ok=True)
        (out / "run_config.json").write_text(json.dumps(cfg, indent=1))
        t0 = time.perf_counter()
        if workers == 0:
            train(TrainConfig(**cfg))
        else:
            with open(out / "log.txt", "w") as log:
                rc = subprocess.call([sys.executable, "-m", "cliptbp_kernels.pipeline.train",
                                      "--config", str(out / "run_config.json")],
                                     stdout=log, stderr=subprocess.STDOUT, env=env)
            if rc != 0:
                tail = (out / "log.txt").read_text()[-2000:]
                raise RuntimeError(f"run {out} failed (exit {rc}):\n{tail}")
        wall = time.perf_counter() - t0
        (out / "wall.json").write_text(json.dumps({"wall_s": wall, "threads": threads,
                                                   "workers": workers}))
        print(f"  done {out.name} in {wall / 60:.1f} min", flush=True)
        return json.loads(done.read_text())

    if workers == 0:
        return [one(c) for c in configs]
    with ThreadPoolExecutor(max_workers=int(workers)) as pool:
        return list(pool.map(one, configs))


def _run_metrics(run_dir: Path, data_root: Path) -> Dict:
    """QVHighlights metrics and error rates of a finished run's two decoders."""
    from .diagnostics import error_rates
    from .eval import evaluate, load_jsonl

    gt = load_jsonl(data_root / "annotations" / "highlight_val_release.jsonl")
    segs = load_jsonl(data_root / "segments" / "val.jsonl")
    res = {}
    for dec, name in (("nms", "val_submission.jsonl"), ("segments",
                                                         "val_submission_segments.jsonl")):
        sub = load_jsonl(run_dir / name)
        res[dec] = {**evaluate(sub, gt)["brief"], **error_rates(sub, gt, segs)}
    return res


@torch.no_grad()
def decode_thresholds(run_dir: Path, data_root: Path, thresholds: Sequence[float]) -> Dict:
    """The foreground decoder's metrics at each threshold, from a run's checkpoint."""
    from .diagnostics import error_rates, predict_segments
    from .eval import evaluate, load_jsonl
    from .train import load_run, make_loader

    model, cfg, val_ds = load_run(run_dir)
    outs = []
    for batch in make_loader(val_ds, cfg, shuffle=False, seed=cfg.seed):
        out = model(batch["video"], batch["video_mask"], batch["text"], batch["text_mask"])
        outs.append((out, batch["num_clips"], batch["meta"]))
    gt = load_jsonl(data_root / "annotations" / "highlight_val_release.jsonl")
    segs = load_jsonl(data_root / "segments" / "val.jsonl")
    res = {}
    for t in thresholds:
        sub = [line for out, n, meta in outs for line in predict_segments(out, n, meta, t)]
        res[str(t)] = {**evaluate(sub, gt)["brief"], **error_rates(sub, gt, segs)}
    return res


def select(root: Path, out_dir: Path, settings: Sequence[str] = ("default", "combined"),
           seed: int = SELECTION_SEED, train_seed: int = 0, overrides: Optional[Dict] = None,
           candidates: Optional[Dict[str, Dict]] = None) -> Dict:
    """Train the baseline (no ClipTBP) with every candidate on data of ``seed`` at
    ``settings``; choose the candidate of lowest mean boundary error (NMS decoder) over the
    settings, then the foreground threshold of highest mean mAP for it (docs/study.md)."""
    from .train import TrainConfig

    candidates = CANDIDATES if candidates is None else candidates
    out_dir = Path(out_dir)
    jobs = []
    for cand, fields in candidates.items():
        for setting in settings:
            data_root = setting_data(root, setting, seed)
            kw = dict(data=str(data_root), dataset="qvhighlights", seed=train_seed,
                      cliptbp=False, out=str(out_dir / "runs" / f"{cand}-{setting}"),
                      progress=False, eval_every=12, **fields)
            kw.update(overrides or {})
            TrainConfig(**kw)  # checked before anything runs
            jobs.append((cand, setting, data_root, kw))
    print(f"select: {len(jobs)} baseline runs on data seed {seed}, 2 at a time", flush=True)
    summaries = run_many([kw for *_, kw in jobs])
    results: Dict[str, Dict] = {c: {} for c in candidates}
    for (cand, setting, data_root, kw), summary in zip(jobs, summaries):
        m = _run_metrics(Path(kw["out"]), data_root)
        last = summary["history"][-1]
        m["train_loss_iou"] = last.get("loss_iou")
        m["train_loss_span"] = last.get("loss_span")
        m["step_ms"] = summary["step_ms"]
        results[cand][setting] = m

    def mean_over(cand: str, dec: str, key: str) -> float:
        return sum(results[cand][s][dec][key] for s in settings) / len(settings)

    chosen = min(candidates, key=lambda c: mean_over(c, "nms", "boundary_error_s"))
    thr = {s: decode_thresholds(out_dir / "runs" / f"{chosen}-{s}",
                                setting_data(root, s, seed), THRESHOLDS) for s in settings}
    threshold = max(THRESHOLDS, key=lambda t: sum(thr[s][str(t)]["MR-full-mAP"]
                                                 for s in settings))
    doc = {"data_seed": seed, "train_seed": train_seed, "settings": list(settings),
           "candidates": candidates, "rule": "lowest mean boundary error (NMS decoder) over "
           "the settings; then the foreground threshold of highest mean MR-full-mAP",
           "results": results, "chosen": chosen, "config": candidates[chosen],
           "thresholds": thr, "fg_threshold": threshold}
    return doc


def _selection_md(doc: Dict) -> str:
    keys = ["MR-full-R1@0.5", "MR-full-R1@0.7", "MR-full-mAP", "boundary_error_s"]
    lines = [f"Reference-model selection on data seed {doc['data_seed']} (baseline only, "
             f"training seed {doc['train_seed']}). Rule: {doc['rule']}.", "",
             "| candidate | setting | decoder | " + " | ".join(keys)
             + " | train loss_iou | step ms |",
             "|---|---|---|" + "---|" * (len(keys) + 2)]
    for cand, per in doc["results"].items():
        for setting, m in per.items():
            for dec in ("nms", "segments"):
                cells = [f"{m[dec][k]:.2f}" if m[dec][k] is not None else "-" for k in keys]
                lines.append(f"| {cand} | {setting} | {dec} | " + " | ".join(cells)
                             + f" | {m['train_loss_iou']:.3f} | {m['step_ms']:.0f} |")
    lines += ["", f"Chosen: **{doc['chosen']}** ({json.dumps(doc['config'])}), "
              f"foreground threshold **{doc['fg_threshold']}**.", "",
              "| threshold | " + " | ".join(f"{s} mAP" for s in doc["settings"]) + " |",
              "|---|" + "---|" * len(doc["settings"])]
    for t in THRESHOLDS:
        lines.append(f"| {t} | " + " | ".join(f"{doc['thresholds'][s][str(t)]['MR-full-mAP']:.2f}"
                                             for s in doc["settings"]) + " |")
    return "\n".join(lines) + "\n"
