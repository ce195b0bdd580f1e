"""Plot a benchmark run: time and peak memory against T per backend and mode.

    python -m bench.plot [--csv bench/results/cpu.csv] [--out bench/results/cpu.png]
        [--date ISO-DATE]

Reads the rows of the latest run in the CSV (the rows of its latest ``date``; every row of
one harness run has the same date) or of ``--date``, leaving out rows measured beside busy
neighbours (``--busy``), and writes one PNG with two log-log
panels: median time (20-80 percentile bars) and peak memory against T. Solid lines are
forward+backward, dashed lines forward only. Cases that did not finish (timeout, oom,
error, skipped) are listed under the panels.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from bench.harness import without_contention

ROOT = Path(__file__).resolve().parent.parent


def latest_rows(rows: Sequence[dict], date: Optional[str] = None) -> List[dict]:
    """The rows of the run at `date`, or of the latest date, without the contention rows."""
    rows = without_contention(rows)
    if not rows:
        return []
    date = date or max(r["date"] for r in rows)
    return [r for r in rows if r["date"] == date]


def _f(v: str) -> Optional[float]:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def plot(rows: Sequence[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: Dict[Tuple[str, str], List[dict]] = {}
    failed = []
    for r in rows:
        series.setdefault((r["backend"], r["mode"]), []).append(r)
        if r["status"] != "ok":
            failed.append(f"{r['backend']} {r['shape']} (T={r['T']}) {r['mode']}: {r['status']}")
    backends = sorted({b for b, _ in series}, key=lambda b: (b not in ("reference", "compile"),
                                                             b != "reference", b))
    colors = {b: f"C{i}" for i, b in enumerate(backends)}

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(13, 5.5))
    for (backend, mode), rs in sorted(series.items()):
        style = dict(color=colors[backend], linestyle="-" if mode == "fwdbwd" else "--",
                     marker="o" if mode == "fwdbwd" else "s", label=f"{backend} {mode}")
        ok = sorted((r for r in rs if r["status"] == "ok" and _f(r["median_ms"])),
                    key=lambda r: int(r["T"]))
        if ok:
            t = [int(r["T"]) for r in ok]
            med = [_f(r["median_ms"]) for r in ok]
            lo = [max(m - (_f(r["p20_ms"]) or m), 0) for m, r in zip(med, ok)]
            hi = [max((_f(r["p80_ms"]) or m) - m, 0) for m, r in zip(med, ok)]
            ax_t.errorbar(t, med, yerr=[lo, hi], capsize=2, **style)
        # Memory is measured before timing, so it is there for a case that timed out too.
        mem = sorted(((int(r["T"]), _f(r["peak_mem_mb"])) for r in rs
                      if _f(r["peak_mem_mb"]) is not None and _f(r["peak_mem_mb"]) > 0))
        if mem:
            ax_m.plot([m[0] for m in mem], [m[1] for m in mem], **style)

    shapes = sorted({(int(r["T"]), r["shape"], r["B"]) for r in rows})
    for ax, ylabel in ((ax_t, "median time per call [ms]"),
                       (ax_m, "peak memory growth [MB]")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("T (clips per video)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    ax_t.set_title("L_clip + L_boun, float32")
    ax_m.set_title("peak memory (CPU: peak resident growth of a fresh process;\n"
                   "GPU: torch.cuda.max_memory_allocated growth)", fontsize=9)
    r0 = rows[0] if rows else {}
    fig.suptitle(f"{r0.get('device', '')} | threads {r0.get('threads', '')} | torch "
                 f"{r0.get('torch', '')} | commit {r0.get('commit', '')} | {r0.get('date', '')}",
                 fontsize=10)
    notes = "shapes: " + ", ".join(f"{s} (B={b}, T={t})" for t, s, b in shapes)
    if failed:
        notes += "\nnot finished: " + "; ".join(failed)
    fig.text(0.01, 0.01, notes, fontsize=7, va="bottom", wrap=True)
    fig.tight_layout(rect=(0, 0.04 + 0.02 * notes.count("\n"), 1, 0.95))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.plot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--csv", default=str(ROOT / "bench" / "results" / "cpu.csv"))
    p.add_argument("--out", default=None, help="default: the CSV's path with .png")
    p.add_argument("--date", default=None, help="the run to plot (default: the latest)")
    args = p.parse_args(argv)
    with open(args.csv, newline="") as f:
        rows = latest_rows(list(csv.DictReader(f)), args.date)
    if not rows:
        print(f"no rows in {args.csv}", file=sys.stderr)
        return 1
    out = Path(args.out) if args.out else Path(args.csv).with_suffix(".png")
    plot(rows, out)
    print(f"wrote {out} ({len(rows)} rows of {rows[0]['date']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
