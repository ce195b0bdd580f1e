"""The project's main job: train the reference model with and without the ClipTBP losses
on the built-in synthetic data set, over several seeds, and compare.

    cliptbp-compare                 # 3 seeds, synthetic QVHighlights-like
    cliptbp-compare --seeds 0 --epochs 4 --out runs/quick

Prints (and writes to OUT/comparison.md and OUT/comparison.json) the validation metrics of
each run, their mean and standard deviation per setting, and the time of one training step
at TACoS length (B=8, T=702) with the fused criterion against the PyTorch reference one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Dict, List

import torch

from ..criterion import ClipTBPLoss
from .model import MomentModel
from .train import HEADLINE, TrainConfig, parse_overrides, train, training_step

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


def main(argv=None) -> Dict:
    p = argparse.ArgumentParser(prog="cliptbp-compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--data", default="synthetic-qvh")
    p.add_argument("--out", default="runs/compare")
    p.add_argument("--dataset", default="qvhighlights",
                   help="layout when --data is a folder: qvhighlights or tacos")
    p.add_argument("--timing-T", type=int, default=702, help="video length of the step timing")
    p.add_argument("--timing-steps", type=int, default=5)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a TrainConfig field of every run")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    runs = []
    for cliptbp in (False, True):
        for seed in args.seeds:
            name = f"{'cliptbp' if cliptbp else 'baseline'}-seed{seed}"
            print(f"\n=== {name} ===", flush=True)
            kw = dict(data=args.data, dataset=args.dataset, seed=seed, cliptbp=cliptbp,
                      out=str(out / name), progress=not args.no_progress)
            if args.epochs is not None:
                kw["epochs"] = args.epochs
            if args.data == "synthetic-tacos":
                kw["batch_size"] = 8
            kw.update(parse_overrides(args.set))
            summary = train(TrainConfig(**kw))
            runs.append({"name": name, "cliptbp": cliptbp, "seed": seed, "val": summary["val"],
                         "step_ms": summary["step_ms"]})

    metrics = [m for m in METRICS + HEADLINE if any(m in r["val"] for r in runs)]
    metrics = list(dict.fromkeys(metrics))
    lines = ["| setting | " + " | ".join(metrics) + " | step ms |",
             "|---|" + "---|" * (len(metrics) + 1)]
    for cliptbp in (False, True):
        sel = [r for r in runs if r["cliptbp"] == cliptbp]
        cells = [_fmt([r["val"][m] for r in sel if m in r["val"]]) for m in metrics]
        cells.append(_fmt([r["step_ms"] for r in sel]))
        label = "with ClipTBP (Eq. 8)" if cliptbp else "baseline losses only"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)

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
    report = (f"## Validation metrics on {args.data} ({len(args.seeds)} seeds, mean ± std)\n\n"
              f"{table}\n\n## Training step at TACoS length (B=8, T={T})\n\n{timing_table}\n")
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
