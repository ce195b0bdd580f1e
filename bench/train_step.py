"""The reference pipeline's training loop with DataLoader workers and torch threads.

    python -m bench.train_step [--data synthetic-qvh,synthetic-tacos] [--workers 0,1,2]
        [--threads 1,2] [--busy 0] [--batches 40] [--backend auto] [--runs 1]

Each (data, workers, threads, busy) setting runs in a fresh child process, with ``busy`` busy
neighbour processes beside it (``bench.busy``). The child sets up what ``cliptbp-train``
does (the synthetic data set, generated once into a cache folder; the model; ``ClipTBPLoss``
with ``--backend``; AdamW) with ``num_workers`` DataLoader workers and
``torch.set_num_threads(threads)`` in the training process, then runs full training steps
(forward, ClipTBP criterion, backward, optimiser) over the shuffled training batches. After 3
warm-up batches it reports the median time waiting for the next batch, the median step time
and the loop's wall time per batch (the sum of both, as a training loop sees it). Runs of the
same setting alternate with the others (``--runs``). Printed: one table row per setting.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Sequence

from bench.busy import BusyNeighbours
from bench.harness import MARK, parse_busy, parse_ints, percentile, run_child

WARMUP = 3


def child_main(spec: dict) -> int:
    """Run one setting in this (fresh) process; report on stdout."""
    import torch

    from cliptbp_kernels.criterion import ClipTBPLoss
    from cliptbp_kernels.pipeline.model import MomentModel
    from cliptbp_kernels.pipeline.train import (
        TrainConfig,
        build_datasets,
        make_loader,
        set_seed,
        training_step,
    )

    torch.set_num_threads(spec["threads"])
    kw = dict(data=spec["data"], data_dir=spec["data_dir"], num_workers=spec["workers"],
              backend=spec["backend"], progress=False)
    if spec["data"] == "synthetic-tacos":
        kw["batch_size"] = 8
    cfg = TrainConfig(**kw)
    set_seed(0)
    train_ds, _, _ = build_datasets(cfg)
    sample = train_ds[0]
    model = MomentModel(sample["video"].shape[-1], sample["text"].shape[-1], cfg.hidden,
                        cfg.layers, cfg.heads, cfg.dropout, cfg.offset_scale,
                        cfg.offset_head)
    criterion = ClipTBPLoss(w_clip=cfg.w_clip, w_boun=cfg.w_boun, w_aux=cfg.w_aux, k=cfg.k,
                            tau=cfg.tau, backend=cfg.backend)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    waits: List[float] = []
    steps: List[float] = []
    n = 0
    while n < spec["batches"] + WARMUP:
        it = iter(make_loader(train_ds, cfg, shuffle=True, seed=n))
        while n < spec["batches"] + WARMUP:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                break
            t1 = time.perf_counter()
            losses = training_step(model, criterion, batch, cfg.clip_len)
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            opt.step()
            t2 = time.perf_counter()
            if n >= WARMUP:
                waits.append((t1 - t0) * 1e3)
                steps.append((t2 - t1) * 1e3)
            n += 1
        del it  # ends the workers of this pass
    per_batch = [w + s for w, s in zip(waits, steps)]
    print(MARK + json.dumps(dict(
        event="result", status="ok", wait_ms=statistics.median(waits),
        step_ms=statistics.median(steps),
        batch_ms=statistics.median(per_batch), batch_p90_ms=percentile(per_batch, 90),
        threads=torch.get_num_threads())), flush=True)
    return 0


def run_setting(spec: dict, busy: int, timeout: float = 1800.0) -> dict:
    """One setting in a fresh child process (its own process group, DataLoader workers
    included, killed after `timeout` s) beside `busy` busy neighbours."""
    cmd = [sys.executable, "-m", "bench.train_step", "--child", json.dumps(spec)]
    with BusyNeighbours(busy):
        info = run_child(cmd, timeout)
    if info["status"] != "ok":
        raise RuntimeError(f"setting {spec} (busy {busy}): {info['status']}\n{info['log']}")
    return info


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.train_step", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="synthetic-qvh,synthetic-tacos")
    p.add_argument("--workers", default="0,1,2")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--busy", default="0")
    p.add_argument("--batches", type=int, default=40, help="timed batches per setting")
    p.add_argument("--backend", default="auto", help="ClipTBPLoss backend")
    p.add_argument("--runs", type=int, default=1, help="runs of every setting, alternating")
    p.add_argument("--data-dir", default=None,
                   help="where the synthetic data sets are generated (default: a temporary "
                        "folder removed at the end)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        return child_main(json.loads(args.child))
    data = args.data.split(",")
    for d in data:
        if d not in ("synthetic-qvh", "synthetic-tacos"):
            raise SystemExit(f"--data: synthetic-qvh or synthetic-tacos, got {d!r}")
    workers = parse_ints(args.workers, "--workers", 0)
    threads = parse_ints(args.threads, "--threads", 1)
    busy = parse_busy(args.busy)
    if args.batches < 1 or args.runs < 1:
        raise SystemExit("--batches and --runs must be >= 1")

    with tempfile.TemporaryDirectory(prefix="cliptbp_train_step_") as tmp:
        data_dir = args.data_dir or str(Path(tmp) / "data")
        settings = [(d, w, t, b) for d in data for b in busy for t in threads for w in workers]
        results = {s: [] for s in settings}
        for r in range(args.runs):
            for i, (d, w, t, b) in enumerate(settings, 1):
                spec = dict(data=d, workers=w, threads=t, batches=args.batches,
                            backend=args.backend, data_dir=data_dir)
                res = run_setting(spec, b)
                results[(d, w, t, b)].append(res)
                print(f"[run {r + 1}, {i}/{len(settings)}] {d} workers {w} threads {t} busy {b}"
                      f": {res['batch_ms']:.1f} ms per batch (wait {res['wait_ms']:.2f}, step "
                      f"{res['step_ms']:.1f})", file=sys.stderr, flush=True)
    print("| data | busy | torch threads | workers | ms per batch (runs) | p90 | wait ms | "
          "step ms |")
    print("|---|---|---|---|---|---|---|---|")
    for (d, w, t, b), res in results.items():
        med = statistics.median(x["batch_ms"] for x in res)
        runs = ", ".join(f"{x['batch_ms']:.1f}" for x in res)
        print(f"| {d} | {b} | {t} | {w} | {med:.1f} ({runs}) | "
              f"{statistics.median(x['batch_p90_ms'] for x in res):.1f} | "
              f"{statistics.median(x['wait_ms'] for x in res):.2f} | "
              f"{statistics.median(x['step_ms'] for x in res):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
