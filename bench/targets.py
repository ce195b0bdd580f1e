"""The GPU speed and memory targets of the fused backends, checked against a benchmark CSV,
with the floor estimate of each shape (FLOPs over peak rate, bytes over bandwidth).

    python -m bench.targets --csv OUT/cuda.csv [--date D] [--json OUT/targets.json]
        [--tflops 67] [--tbps 4.8]

Targets (forward+backward of ``L_clip + L_boun``, default options, float32, D=256), for every
fused backend in the CSV:

* qvh (B=32, T=75): >= 5x faster than ``reference`` in wall-clock time, >= 15x in GPU time
  (CUDA-graph replay), >= 3x faster than ``compile`` (``torch.compile(reference)``);
* long4k (B=2, T=4096): >= 50x faster than ``reference``, >= 100x less peak GPU memory;
* long16k (B=2, T=16384): runs, in under 10 ms.

The cases they need are `TARGET_CASES` (``python -m bench.harness --targets`` runs just
those). The floor: ``L_clip`` with ``negatives="cross"`` computes ``|G| x T`` similarities
per sample forward (2 D FLOPs each) and the ``|G| x |G|`` positive block twice backward
(similarities and the weighted sum, 4 D FLOPs per pair); the fewest bytes are reading
``emb`` forward and backward and writing its gradient (3 B T D 4 bytes). The default
rates are an H100/H200's plain float32 (67 TFLOP/s: ``input_precision="ieee"`` uses no
tensor cores) and an H200's 4.8 TB/s; pass the card's measured ceilings where known.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from bench import harness
from bench.harness import TARGET_CASES, target_cases
from bench.harness import TARGET_MODE as MODE

__all__ = ["MODE", "TARGET_CASES", "evaluate", "floor_estimate", "main", "read_rows", "report",
           "target_cases"]

def floor_estimate(shape_name: str, tflops: float, tbps: float) -> dict:
    """FLOPs, bytes and the two times (ms) of the floor for one shape's labels."""
    shape = harness.get_shape(shape_name)
    labels = harness.make_labels(shape)
    ng = (labels >= 1).sum(1).double()
    nv = (labels >= 0).sum(1).double()
    flops = float((2 * shape.D * ng * nv).sum() + (4 * shape.D * ng * ng).sum())
    nbytes = 3.0 * shape.B * shape.T * shape.D * 4
    return dict(shape=shape_name, gflop=flops / 1e9, mbytes=nbytes / 1e6,
                flop_ms=flops / (tflops * 1e12) * 1e3, byte_ms=nbytes / (tbps * 1e12) * 1e3)


def _num(row: Optional[dict], key: str) -> Optional[float]:
    if row is None or row.get("status") != "ok" or row.get(key) in (None, ""):
        return None
    return float(row[key])


def _index(rows: Sequence[dict]) -> Tuple[Dict[Tuple[str, str], dict], List[str]]:
    """The target mode's rows by (backend, shape), and the fused backends among them."""
    by = {(r["backend"], r["shape"]): r for r in rows if r.get("mode") == MODE}
    return by, sorted({b for b, _ in by if b not in harness.BASELINES})


def evaluate(rows: Sequence[dict]) -> List[dict]:
    """One record per (fused backend, target): measured value, threshold, pass/fail/missing."""
    by, fused = _index(rows)
    out = []

    def add(backend, shape, what, value, need, unit, higher_is_better=True):
        if value is None:
            verdict = "missing"
        else:
            verdict = "pass" if (value >= need if higher_is_better else value < need) else "FAIL"
        out.append(dict(backend=backend, shape=shape, target=what, value=value, need=need,
                        unit=unit, verdict=verdict))

    def ratio(a, b, key):
        x, y = _num(a, key), _num(b, key)
        return x / y if x is not None and y and y > 0 else None

    for f in fused:
        ref, comp = by.get(("reference", "qvh")), by.get(("compile", "qvh"))
        mine = by.get((f, "qvh"))
        add(f, "qvh", "wall clock vs reference", ratio(ref, mine, "median_ms"), 5.0, "x")
        add(f, "qvh", "GPU time vs reference", ratio(ref, mine, "gpu_ms"), 15.0, "x")
        add(f, "qvh", "wall clock vs torch.compile", ratio(comp, mine, "median_ms"), 3.0, "x")
        ref, mine = by.get(("reference", "long4k")), by.get((f, "long4k"))
        add(f, "long4k", "wall clock vs reference", ratio(ref, mine, "median_ms"), 50.0, "x")
        add(f, "long4k", "peak memory vs reference", ratio(ref, mine, "peak_mem_mb"), 100.0, "x")
        add(f, "long16k", "wall clock", _num(by.get((f, "long16k")), "median_ms"), 10.0, "ms",
            higher_is_better=False)
    return out


def report(rows: Sequence[dict], tflops: float, tbps: float) -> Tuple[str, dict]:
    """Markdown (targets, then the floor next to the measured GPU times) and a JSON record."""
    checks = evaluate(rows)
    lines = ["| backend | shape | target | measured | needed | verdict |",
             "|---|---|---|---|---|---|"]
    for c in checks:
        v = "-" if c["value"] is None else f"{c['value']:.3g} {c['unit']}"
        need = f"{'>=' if c['unit'] == 'x' else '<'} {c['need']:g} {c['unit']}"
        lines.append(f"| {c['backend']} | {c['shape']} | {c['target']} | {v} | {need} | "
                     f"{c['verdict']} |")
    floors = [floor_estimate(s, tflops, tbps) for s, _ in TARGET_CASES]
    lines += ["", f"Floor ({tflops:g} TFLOP/s, {tbps:g} TB/s) against the measured GPU time "
              "(CUDA-graph replay) of each fused backend:", "",
              "| shape | GFLOP | MB | FLOP floor ms | byte floor ms | measured GPU ms |",
              "|---|---|---|---|---|---|"]
    by, fused = _index(rows)
    for fl in floors:
        got = ", ".join(f"{f} {_num(by.get((f, fl['shape'])), 'gpu_ms'):.3g}"
                        for f in fused if _num(by.get((f, fl["shape"])), "gpu_ms") is not None)
        lines.append(f"| {fl['shape']} | {fl['gflop']:.3g} | {fl['mbytes']:.3g} | "
                     f"{fl['flop_ms']:.3g} | {fl['byte_ms']:.3g} | {got or '-'} |")
    return "\n".join(lines), dict(checks=checks, floors=floors, tflops=tflops, tbps=tbps)


def read_rows(path: Path, date: Optional[str] = None) -> List[dict]:
    """The rows of one run of a benchmark CSV: `date`, else the latest run holding each case
    (so that runs of the baselines and of the fused backends can be combined)."""
    with open(path, newline="") as f:
        rows = harness.without_contention(list(csv.DictReader(f)))
    if date is not None:
        return [r for r in rows if r["date"] == date]
    latest: Dict[Tuple[str, str, str], dict] = {}
    for r in rows:  # appended in time order: later rows win
        latest[(r["backend"], r["shape"], r["mode"])] = r
    return list(latest.values())


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.targets", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--csv", required=True)
    p.add_argument("--date", default=None, help="one run's date (default: the latest of each case)")
    p.add_argument("--json", default=None, help="also write the checks and floors here")
    p.add_argument("--tflops", type=float, default=67.0, help="float32 peak, TFLOP/s")
    p.add_argument("--tbps", type=float, default=4.8, help="memory bandwidth, TB/s")
    args = p.parse_args(argv)
    path = Path(args.csv)
    if not path.exists():
        p.error(f"no such CSV: {path}")
    rows = read_rows(path, args.date)
    text, record = report(rows, args.tflops, args.tbps)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2))
    failed = [c for c in record["checks"] if c["verdict"] == "FAIL"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
