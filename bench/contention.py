"""Side-by-side contention check: builds of the package, quiet and beside busy neighbours.

    python -m bench.contention --builds old=/path/to/old/checkout,new=. [--runs 5]
        [--busy 0,1,2] [--shapes qvh,tacos] [--repeats 30] [--backend cpu] [--check new]
        [--baseline old] [--json out.json]

Each run measures, for every number of busy neighbours (``bench.busy``), every shape and every
build, forward + backward of ``L_clip + L_boun`` on ``--backend`` (float32, the harness's
shapes and labels, ``torch.get_num_threads()`` threads) in a fresh child process that imports
``cliptbp_kernels`` from the build's directory (``--repeats`` timed calls after 3 warm-up
calls), then the reference backend under the same load once. The builds' order alternates
from one run to the next (old, new; new, old; ...), so slow spells of the machine fall on both.

Printed: per build, shape and load the median over runs of each run's median and p90, and per
run the load's median over the same run's quiet median. ``--check NAME`` exits 1 unless, for
build NAME in every run and at every shape, one neighbour keeps the median within 3x of the
quiet one and two within 4x, the backend stays at least 3x faster than the reference at every
load, and (with ``--baseline``) its quiet median over runs is within 10 % of the baseline
build's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from bench import harness

ROOT = Path(__file__).resolve().parent.parent

# --check limits: median under load over the quiet median, per number of neighbours
LOAD_LIMITS = {1: 3.0, 2: 4.0}
MIN_SPEEDUP_OVER_REFERENCE = 3.0
QUIET_TOLERANCE = 0.10


def parse_builds(text: str) -> List[Tuple[str, Path]]:
    """``name=path,...`` into [(name, resolved path)]; each path holds ``cliptbp_kernels``."""
    builds = []
    for item in text.split(","):
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--builds takes name=path,..., got {item!r}")
        root = Path(path).resolve()
        if not (root / "cliptbp_kernels" / "__init__.py").is_file():
            raise SystemExit(f"--builds: {root} holds no cliptbp_kernels package")
        builds.append((name, root))
    if len({n for n, _ in builds}) != len(builds):
        raise SystemExit(f"--builds: names must differ, got {text!r}")
    return builds


def measure(backend: str, shape: str, busy: int, root: Path, repeats: int) -> dict:
    """One fresh child: median and p90 ms of `repeats` forward+backward calls."""
    info = harness.run_case(backend, shape, "fwdbwd", warmup=3, repeats=repeats, busy=busy,
                            package_root=str(root))
    if info["status"] != "ok":
        raise RuntimeError(f"{backend} {shape} busy={busy} at {root}: {info['status']} "
                           f"{info.get('error') or info.get('log', '')[-300:]}")
    return dict(median=info["median_ms"], p90=info["p90_ms"])


def run(builds: Sequence[Tuple[str, Path]], runs: int, busy: Sequence[int],
        shapes: Sequence[str], repeats: int, backend: str) -> List[dict]:
    """Every measurement as a record (run, build, shape, busy, backend, median, p90)."""
    records = []
    total = runs * len(busy) * len(shapes) * (len(builds) + 1)
    done = 0
    for r in range(runs):
        order = list(builds) if r % 2 == 0 else list(reversed(builds))
        for n in busy:
            for s in shapes:
                for name, root in order + [("reference", order[0][1])]:
                    b = "reference" if name == "reference" else backend
                    m = measure(b, s, n, root, repeats)
                    records.append(dict(run=r, build=name, shape=s, busy=n, backend=b, **m))
                    done += 1
                    print(f"[{done}/{total}] run {r + 1} busy {n} {s:6s} {name:10s} "
                          f"median {m['median']:.3g} ms  p90 {m['p90']:.3g} ms",
                          file=sys.stderr, flush=True)
    return records


def summarise(records: Sequence[dict]) -> Tuple[str, Dict]:
    """A markdown table and the per-run ratios the checks use."""
    by: Dict[Tuple[str, str, int, int], dict] = {
        (x["build"], x["shape"], x["busy"], x["run"]): x for x in records}
    builds = list(dict.fromkeys(x["build"] for x in records))
    shapes = list(dict.fromkeys(x["shape"] for x in records))
    loads = sorted({x["busy"] for x in records})
    runs = sorted({x["run"] for x in records})
    lines = ["| build | shape | busy | median ms (runs) | p90 ms | x quiet per run | "
             "reference / build per run |", "|---|---|---|---|---|---|---|"]
    ratios: Dict = {}
    for b in builds:
        for s in shapes:
            for n in loads:
                got = [by.get((b, s, n, r)) for r in runs]
                if any(g is None for g in got):
                    continue
                quiet = [by.get((b, s, 0, r)) for r in runs]
                ref = [by.get(("reference", s, n, r)) for r in runs]
                xq = ([g["median"] / q["median"] for g, q in zip(got, quiet)]
                      if all(quiet) else [])
                xr = ([f["median"] / g["median"] for g, f in zip(got, ref)]
                      if b != "reference" and all(ref) else [])
                ratios[(b, s, n)] = dict(
                    median=statistics.median(g["median"] for g in got),
                    p90=statistics.median(g["p90"] for g in got), x_quiet=xq, x_ref=xr)
                per_run = ", ".join(f"{g['median']:.3g}" for g in got)
                xq_text = ", ".join(f"{x:.2f}" for x in xq) if n else "-"
                xr_text = ", ".join(f"{x:.1f}" for x in xr) or "-"
                lines.append(f"| {b} | {s} | {n} | {ratios[(b, s, n)]['median']:.3g} "
                             f"({per_run}) | {ratios[(b, s, n)]['p90']:.3g} | {xq_text} | "
                             f"{xr_text} |")
    return "\n".join(lines), ratios


def check(ratios: Dict, name: str, baseline: Optional[str]) -> List[str]:
    """The failed criteria of build `name` (see the module docstring); empty when all hold."""
    failures = []
    keys = [k for k in ratios if k[0] == name]
    if not keys:
        return [f"no measurements of build {name!r}"]
    for _, s, n in keys:
        v = ratios[(name, s, n)]
        limit = LOAD_LIMITS.get(n)
        if limit is not None and any(x > limit for x in v["x_quiet"]):
            failures.append(f"{s}, {n} busy: median up to {max(v['x_quiet']):.2f}x the quiet "
                            f"one (limit {limit}x)")
        if any(x < MIN_SPEEDUP_OVER_REFERENCE for x in v["x_ref"]):
            failures.append(f"{s}, {n} busy: only {min(v['x_ref']):.1f}x faster than the "
                            f"reference (at least {MIN_SPEEDUP_OVER_REFERENCE}x)")
        if baseline is not None and n == 0 and (baseline, s, 0) in ratios:
            old = ratios[(baseline, s, 0)]["median"]
            if v["median"] > old * (1 + QUIET_TOLERANCE):
                failures.append(f"{s}, quiet: median {v['median']:.3g} ms against {old:.3g} ms "
                                f"for {baseline} (more than {QUIET_TOLERANCE:.0%} slower)")
    return failures


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.contention", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--builds", default=f"this={ROOT}",
                   help="name=path,... of checkouts with a built package (default: this one)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--busy", default="0,1,2")
    p.add_argument("--shapes", default="qvh,tacos")
    p.add_argument("--repeats", type=int, default=30, help="timed calls per child")
    p.add_argument("--backend", default="cpu")
    p.add_argument("--check", default=None, metavar="NAME", help="build whose criteria to check")
    p.add_argument("--baseline", default=None, metavar="NAME",
                   help="build the quiet medians of --check are compared with")
    p.add_argument("--json", default=None, help="also write every measurement here")
    args = p.parse_args(argv)
    builds = parse_builds(args.builds)
    busy = harness.parse_busy(args.busy)
    if 0 not in busy:
        raise SystemExit("--busy must include 0 (the quiet runs the ratios refer to)")
    shapes = args.shapes.split(",")
    for s in shapes:
        harness.get_shape(s)
    if args.runs < 1 or args.repeats < 1:
        raise SystemExit("--runs and --repeats must be >= 1")
    names = {n for n, _ in builds}
    for opt in (args.check, args.baseline):
        if opt is not None and opt not in names:
            raise SystemExit(f"{opt!r} is not one of the builds ({', '.join(sorted(names))})")

    records = run(builds, args.runs, busy, shapes, args.repeats, args.backend)
    table, ratios = summarise(records)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1))
    if args.check is None:
        return 0
    failures = check(ratios, args.check, args.baseline)
    for f in failures:
        print(f"contention check FAILED: {f}")
    if not failures:
        print(f"contention check passed for {args.check}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
