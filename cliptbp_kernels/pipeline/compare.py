"""The project's main job: train the reference model with and without the ClipTBP losses
on the synthetic data set's hardest setting (all difficulty knobs, docs/study.md), three
seeds, and compare with both decoders.

    cliptbp-compare                 # 3 seeds, the 'combined' setting
    cliptbp-compare --setting default --seeds 0 --epochs 4 --out runs/quick

Prints (and writes to OUT/comparison.md and OUT/comparison.json) each decoder's validation
metrics and error rates per setting (mean ± std over seeds), the mAP gain paired by seed,
the time of one training step at TACoS length (B=8, T=702) with the fused criterion against
the PyTorch reference one, and draws OUT/training_curves.png, OUT/timelines.png and
OUT/embeddings.png. The model is the study's frozen reference (``study.REFERENCE``); runs go
two at a time, one torch thread each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

from ..criterion import ClipTBPLoss
from . import study
from .model import MomentModel
from .study_stats import paired_t
from .train import HEADLINE, TrainConfig, parse_overrides, training_step

METRICS = ["MR-full-R1@0.5", "MR-full-R1@0.7", "MR-full-mAP", "MR-full-mAP@0.5",
           "MR-full-mAP@0.75", "HL-min-VeryGood-mAP", "HL-min-VeryGood-Hit1"]


def _fmt(values: List[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def step_time(backend: str, *, B: int = 8, T: int = 702, video_dim: int = 96, text_dim: int = 32,
              steps: int = 5, seed: int = 0) -> float:
    """Median milliseconds of one training step (model + basic losses + ClipTBP losses,
    forward and backward) on a TACoS-length batch, with the given criterion backend."""
    g = torch.Generator().manual_seed(seed)
    model = MomentModel(video_dim, text_dim, hidden=128, layers=2, heads=4, dropout=0.0)
    crit = ClipTBPLoss(backend=backend)
    n = torch.randint(T // 2, T + 1, (B,), generator=g)
    n[0] = T
    labels = torch.full((B, T), -1, dtype=torch.long)
    windows = []
    for b in range(B):
        labels[b, : n[b]] = 0
        L = max(1, int(0.07 * n[b]))
        s = int(torch.randint(0, int(n[b]) - L, (1,), generator=g))
        labels[b, s:s + L] = 1
        windows.append([[2.0 * s, 2.0 * (s + L)]])
    batch = {
        "video": torch.randn(B, T, video_dim, generator=g),
        "video_mask": labels >= 0,
        "text": torch.randn(B, 20, text_dim, generator=g),
        "text_mask": torch.ones(B, 20, dtype=torch.bool),
        "labels": labels,
        "saliency": (labels >= 1).float(),
        "windows": windows,
    }
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        loss = training_step(model, crit, batch, 2.0)["loss"]
        loss.backward()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def criterion_time(backend: str, *, B: int = 8, T: int = 702, D: int = 128, steps: int = 5,
                   seed: int = 0) -> float:
    """Median milliseconds of the ClipTBP criterion alone (forward + backward) at that shape."""
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(B, T, D, generator=g)
    labels = torch.zeros(B, T, dtype=torch.long)
    L = max(1, int(0.07 * T))  # one window of ~7% of the video, as in TACoS
    for b in range(B):
        s = int(torch.randint(0, T - L, (1,), generator=g))
        labels[b, s:s + L] = 1
    crit = ClipTBPLoss(backend=backend)
    times = []
    for i in range(steps + 2):
        e = emb.clone().requires_grad_(True)
        t0 = time.perf_counter()
        crit(e, labels)["loss"].backward()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def _mean_std(values: List[Optional[float]]) -> str:
    return _fmt([v for v in values if v is not None])


def main(argv=None) -> Dict:
    p = argparse.ArgumentParser(prog="cliptbp-compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--setting", default="combined", choices=list(study.SETTINGS),
                   help="the synthetic setting (docs/study.md; default: all knobs)")
    p.add_argument("--data", default=None,
                   help="a data root folder instead of the synthetic setting")
    p.add_argument("--dataset", default="qvhighlights",
                   help="layout when --data is a folder: qvhighlights or tacos")
    p.add_argument("--data-dir", default="data/study", help="where the settings are generated")
    p.add_argument("--out", default="runs/compare")
    p.add_argument("--workers", type=int, default=2,
                   help="runs side by side, one torch thread each (0: in this process)")
    p.add_argument("--timing-T", type=int, default=702, help="video length of the step timing")
    p.add_argument("--timing-steps", type=int, default=5)
    p.add_argument("--no-progress", action="store_true",
                   help="accepted for old command lines: runs side by side show no bars")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a TrainConfig field of every run")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.data is None:
        root, dataset = study.setting_data(Path(args.data_dir), args.setting, study.DATA_SEED), \
            "qvhighlights"
        where = f"the synthetic '{args.setting}' setting"
    else:
        root, dataset, where = Path(args.data), args.dataset, str(args.data)

    jobs = []
    for cliptbp in (False, True):
        for seed in args.seeds:
            name = f"{'cliptbp' if cliptbp else 'baseline'}-seed{seed}"
            kw = dict(data=str(root), dataset=dataset, seed=seed, out=str(out / name),
                      progress=False, log_terms=True, cache_features=True, **study.REFERENCE,
                      cliptbp=cliptbp, **study.CLIPTBP)  # the baseline: for its logged terms
            if args.epochs is not None:
                kw["epochs"] = args.epochs
            if dataset == "tacos":
                kw["batch_size"] = 8
            kw.update(parse_overrides(args.set))
            kw["eval_every"] = kw.get("epochs", TrainConfig.epochs)
            TrainConfig(**kw)
            jobs.append(dict(setting=args.setting, arm="cliptbp" if cliptbp else "baseline",
                             seed=seed, data_root=root, cfg=kw, name=name))
    print(f"Training the reference model on {where}: baseline and ClipTBP, seeds "
          f"{args.seeds} ({len(jobs)} runs, {args.workers or 'in-process'} at a time) ...",
          flush=True)
    summaries = study.run_many([j["cfg"] for j in jobs], workers=args.workers)
    runs = []
    synthetic = (root / "segments" / "val.jsonl").is_file() and dataset == "qvhighlights"
    for j, summary in zip(jobs, summaries):
        r = {"name": j["name"], "cliptbp": j["arm"] == "cliptbp", "seed": j["seed"],
             "val": summary["val"], "val_segments": summary["val_segments"],
             "step_ms": summary["step_ms"]}
        if synthetic:
            from .study_run import analyse_run

            a = analyse_run(j)
            r["errors"] = {dec: {k: a[dec][k] for k in ("boundary_error_s", "distractor_fp",
                                                         "gap_bridging", "window_miss")}
                           for dec in ("nms", "segments")}
        runs.append(r)

    metrics = [m for m in METRICS + HEADLINE if any(m in r["val"] for r in runs)]
    metrics = list(dict.fromkeys(metrics))
    sections = []
    for dec, key in (("per-clip proposals with NMS", "val"),
                     ("foreground-threshold segments", "val_segments")):
        cols = metrics + (["boundary error (s)", "distractor FP", "gap bridging"]
                          if synthetic else [])
        lines = [f"### Decoder: {dec}", "", "| setting | " + " | ".join(cols) + " |",
                 "|---|" + "---|" * len(cols)]
        for cliptbp in (False, True):
            sel = [r for r in runs if r["cliptbp"] == cliptbp]
            cells = [_mean_std([r[key].get(m) for r in sel]) for m in metrics]
            if synthetic:
                d = "nms" if key == "val" else "segments"
                cells += [_mean_std([r["errors"][d][e] for r in sel])
                          for e in ("boundary_error_s", "distractor_fp", "gap_bridging")]
            label = "with ClipTBP (Eq. 8)" if cliptbp else "baseline losses only"
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        diffs = []
        for seed in args.seeds:
            a = [r for r in runs if r["seed"] == seed and not r["cliptbp"]][0][key]
            b = [r for r in runs if r["seed"] == seed and r["cliptbp"]][0][key]
            diffs.append(b["MR-full-mAP"] - a["MR-full-mAP"])
        t = paired_t(diffs)
        ci = "" if t["lo"] is None else f", 95 % t interval [{t['lo']:+.2f}, {t['hi']:+.2f}]"
        lines += ["", f"mAP gain of ClipTBP, paired by seed: {t['mean']:+.2f}{ci}"]
        sections.append("\n".join(lines))

    if synthetic:
        from .study_plots import embedding_projection, timelines, training_curves

        first = {j["arm"]: j for j in jobs if j["seed"] == args.seeds[0]}
        hist = {f"{arm} seed {args.seeds[0]}": json.loads(
            (Path(j["cfg"]["out"]) / "summary.json").read_text())["history"]
            for arm, j in first.items()}
        training_curves(out / "training_curves.png", hist,
                        f"Training curves on {where} (ClipTBP terms logged in both)")
        from .eval import load_jsonl

        gt = load_jsonl(root / "annotations" / "highlight_val_release.jsonl")
        segs = load_jsonl(root / "segments" / "val.jsonl")
        preds = {f"{arm} {dec}": load_jsonl(Path(j["cfg"]["out"]) / f)
                 for arm, j in first.items()
                 for dec, f in (("nms", "val_submission.jsonl"),
                                ("segments", "val_submission_segments.jsonl"))}
        timelines(out / "timelines.png", gt, segs, preds)
        embedding_projection(out / "embeddings.png",
                             {"baseline": Path(first["baseline"]["cfg"]["out"]),
                              "ClipTBP": Path(first["cliptbp"]["cfg"]["out"])}, gt, segs)

    T = args.timing_T
    print(f"\nTiming one training step at TACoS length (B=8, T={T}), CPU, "
          f"{torch.get_num_threads()} threads ...", flush=True)
    timing = {}
    for backend in ("cpu", "reference"):
        timing[backend] = {"step_ms": step_time(backend, T=T, steps=args.timing_steps),
                           "criterion_ms": criterion_time(backend, T=T, steps=args.timing_steps)}
    timing_table = "\n".join([
        "| criterion backend | training step (ms) | ClipTBP criterion fwd+bwd (ms) |",
        "|---|---|---|",
        *[f"| {b} | {t['step_ms']:.1f} | {t['criterion_ms']:.1f} |" for b, t in timing.items()],
        f"| speed-up (reference / cpu) "
        f"| {timing['reference']['step_ms'] / timing['cpu']['step_ms']:.2f}x "
        f"| {timing['reference']['criterion_ms'] / timing['cpu']['criterion_ms']:.1f}x |",
    ])
    report = (f"## Validation metrics on {where} ({len(args.seeds)} seeds, mean ± std)\n\n"
              + "\n\n".join(sections)
              + f"\n\n## Training step at TACoS length (B=8, T={T})\n\n{timing_table}\n")
    print("\n" + report)
    (out / "comparison.md").write_text(report)
    result = {"runs": runs, "timing": timing}
    (out / "comparison.json").write_text(json.dumps(result, indent=2))
    return result


def cli(argv=None) -> int:
    """Console entry point (``cliptbp-compare``): `main`, exit status 0."""
    main(argv)
    return 0


if __name__ == "__main__":
    main()
