"""Benchmark harness: every backend against the naive reference and ``torch.compile`` of it.

    python -m bench.harness [--quick] [--sweep] [--shapes qvh,tacos,long4k,long16k]
        [--backends reference,cpu,compile] [--modes fwd,fwdbwd] [--device cpu|cuda]
        [--targets] [--busy 0,1,2]
        [--csv bench/results/cpu.csv] [--repeats N] [--warmup N] [--case-timeout S]

What is measured, per (backend, shape, mode) case, each in a fresh child process
(``python -m bench.harness --child SPEC``):

* the loss ``L_clip + L_boun`` of ``ck.clip_boundary_losses`` (default options, float32,
  ``reduction="mean"``); ``fwd`` is the forward pass on an ``emb`` without grad (no autograd
  graph), ``fwdbwd`` the forward and ``.backward()`` on an ``emb`` that requires grad;
  ``crit_fwdbwd`` (not in the default modes) is forward and backward of the full criterion
  ``ck.ClipTBPLoss`` (paper Eq. 8: both losses, the aux loss on per-clip spans and a basic
  loss);
* ``compile`` is ``torch.compile`` of a function calling the reference backend (with
  ``check_labels=False``), compiled and warmed up in the child before anything is measured;
* peak memory: on CPU the *peak resident growth of a fresh process*: ``ru_maxrss`` after the
  first call on the case's inputs minus ``VmRSS`` just before it (the inputs already
  allocated; the high-water mark reset just before the call where ``/proc/self/clear_refs``
  allows it). One-time costs of a first call (module imports, thread pools: ~100 MB for the
  custom-op machinery) are paid before, by one call on a 1 x 8 input; ``compile`` is measured
  on its first call after compilation. On CUDA it is the ``torch.cuda.max_memory_allocated()``
  growth over the memory allocated before the call;
* time: wall clock (CUDA events on a GPU) of each call after warm-up; the median and the
  20th / 80th / 90th percentiles;
* contention (``--busy 0,1,2``): each case runs once per number of busy neighbour processes
  (``bench.busy``: single-threaded tight Python loops the harness starts before the case's
  child and stops after it, on every exit path); the ``busy`` column of the CSV;
* GPU time (``gpu_ms``, CUDA only): the median of the same step captured once as a CUDA graph
  and replayed, timed with CUDA events: the kernels' time without the host's launch overhead
  (labels then unchecked: ``check_labels=False``). Empty where the step cannot be captured
  (a backend that synchronises inside) and on the CPU. The memory call is the first warm-up;
  then up to ``--warmup`` calls in all (a call slower than 1 s needs only that first one).
  Repeats are adaptive: enough calls for about ``--min-time`` seconds, at least 5 and at most
  200, only 3 for calls slower than 1 s; ``--repeats N`` fixes the number.

A child that is killed (out of memory) is recorded with status ``oom``, one that outlives
``--case-timeout`` with ``timeout``, one that raises with ``error`` (``oom`` where the
allocator ran out of memory); nothing is dropped. Results are appended to a CSV (one row per
case, the same ``date`` for all rows of one run) and printed as a markdown table.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import math
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent

COLUMNS = ["date", "commit", "device", "threads", "torch", "triton", "backend", "shape", "B",
           "T", "D", "dtype", "mode", "busy", "median_ms", "p20_ms", "p80_ms", "p90_ms",
           "peak_mem_mb", "status", "gpu_ms"]
STATUSES = ("ok", "skipped", "timeout", "oom", "error")
MODES = ("fwd", "fwdbwd", "crit_fwdbwd")
BASELINES = ("reference", "compile")  # everything else is a fused backend
SLOW_CALL_S = 1.0  # calls slower than this get one warm-up call and 3 timed repeats
MIN_REPEATS, MAX_REPEATS, SLOW_REPEATS = 5, 200, 3
MARK = "@@bench "  # prefix of the child's result lines on stdout


# --------------------------------------------------------------------------------------------
# Shapes and labels


@dataclass(frozen=True)
class Shape:
    """A benchmark shape and how its labels are drawn.

    windows: (min, max) number of GT windows per sample; gt_frac: (min, max) fraction of the
    valid clips inside GT (split among the windows); pad: probability that a sample has
    padded clips at its end, and at most how many (as a fraction of T).
    """

    name: str
    B: int
    T: int
    D: int
    windows: Tuple[int, int] = (1, 1)
    gt_frac: Tuple[float, float] = (0.05, 0.05)
    pad_prob: float = 0.0
    pad_max_frac: float = 0.0


SHAPES: Dict[str, Shape] = {s.name: s for s in (
    Shape("tiny", 2, 20, 16, windows=(1, 2), gt_frac=(0.2, 0.3), pad_prob=0.5, pad_max_frac=0.1),
    Shape("qvh", 32, 75, 256, windows=(1, 3), gt_frac=(0.2, 0.3), pad_prob=0.3,
          pad_max_frac=0.06),
    Shape("tacos", 8, 702, 256, gt_frac=(0.07, 0.07)),
    Shape("long4k", 2, 4096, 256),
    Shape("long16k", 2, 16384, 256),
)}
DEFAULT_SHAPES = ("qvh", "tacos", "long4k", "long16k")
SWEEP_TS = tuple(64 * 2 ** i for i in range(9))  # 64 .. 16384


TARGET_MODE = "fwdbwd"
# The speed and memory targets (checked by bench.targets): (shape, backends besides the
# fused ones), the baselines each target compares with
TARGET_CASES: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("qvh", ("reference", "compile")),
    ("long4k", ("reference",)),
    ("long16k", ()),
)


def target_cases(fused: Sequence[str]) -> List[Tuple[str, str, str]]:
    """(backend, shape, mode) of every case the targets need, baselines first per shape."""
    return [(b, s, TARGET_MODE) for s, base in TARGET_CASES for b in list(base) + list(fused)]


def get_shape(name: str) -> Shape:
    """A named shape, or ``sweep<T>``: B=2, D=256, one window of ~5% of the video."""
    if name in SHAPES:
        return SHAPES[name]
    m = re.fullmatch(r"sweep(\d+)", name)
    if m:
        return Shape(name, 2, int(m.group(1)), 256)
    raise ValueError(f"unknown shape {name!r}; known: {', '.join(SHAPES)}, sweep<T>")


def _split(total: int, parts: int, rng: random.Random, minimum: Sequence[int]) -> List[int]:
    """`total` split into `parts` non-negative integers, part i at least minimum[i]."""
    free = total - sum(minimum)
    cuts = sorted(rng.randint(0, free) for _ in range(parts - 1))
    sizes = [b - a for a, b in zip([0] + cuts, cuts + [free])]
    return [s + m for s, m in zip(sizes, minimum)]


def make_labels(shape: Shape, seed: int = 0):
    """Seeded ``[B, T]`` int64 labels: windows 1, 2, ... in order, separated by background,
    ``-1`` padding at the end of some samples."""
    import torch

    rng = random.Random(seed)
    labels = torch.full((shape.B, shape.T), -1, dtype=torch.int64)
    for b in range(shape.B):
        pad = 0
        if shape.pad_max_frac > 0 and rng.random() < shape.pad_prob:
            pad = rng.randint(1, max(1, round(shape.pad_max_frac * shape.T)))
        n = shape.T - pad
        nw = rng.randint(*shape.windows)
        gt = round(rng.uniform(*shape.gt_frac) * n)
        gt = min(max(gt, 2 * nw), n - (nw - 1))  # room for windows of 2+ clips and gaps
        lengths = _split(gt, nw, rng, [2] * nw)
        gaps = _split(n - gt, nw + 1, rng, [0] + [1] * (nw - 1) + [0])
        row = []
        for w in range(nw):
            row += [0] * gaps[w] + [w + 1] * lengths[w]
        row += [0] * gaps[nw]
        labels[b, :n] = torch.tensor(row, dtype=torch.int64)
    return labels


def make_inputs(shape: Shape, mode: str, device: str = "cpu", seed: int = 0):
    """(emb, labels) for one case; emb requires grad for ``fwdbwd``."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    emb = torch.randn(shape.B, shape.T, shape.D, generator=gen, dtype=torch.float32)
    emb = emb.to(device).requires_grad_(mode != "fwd")
    return emb, make_labels(shape, seed).to(device)


# --------------------------------------------------------------------------------------------
# One case: the callable, timing and memory


def _reference_losses(emb, labels):
    import cliptbp_kernels as ck

    return ck.clip_boundary_losses(emb, labels, backend="reference", check_labels=False)


def _reference_criterion(emb, labels, pred, target, basic):
    import cliptbp_kernels as ck

    crit = ck.ClipTBPLoss(backend="reference", check_labels=False)
    return crit(emb, labels, basic=basic, pred_spans=pred, target_spans=target,
                span_mask=labels >= 1)["loss"]


def make_step(backend: str, mode: str, emb, labels,
              check_labels: bool = True) -> Callable[[], object]:
    """A no-argument callable running one forward (and backward) of ``L_clip + L_boun``, or of
    the full criterion for ``crit_fwdbwd``. ``check_labels=False`` leaves out the label check
    (its device sync cannot be captured in a CUDA graph)."""
    import torch

    import cliptbp_kernels as ck

    if mode == "crit_fwdbwd":
        gen = torch.Generator().manual_seed(1)
        B, T = labels.shape
        pred = torch.rand(B, T, 2, generator=gen).sort(-1).values.to(emb.device)
        pred.requires_grad_(True)
        target = torch.rand(B, T, 2, generator=gen).sort(-1).values.to(emb.device)
        basic = torch.ones((), device=emb.device, requires_grad=True)
        if backend == "compile":
            crit_fn = torch.compile(_reference_criterion)
        else:
            module = ck.ClipTBPLoss(backend=backend)

            def crit_fn(e, l, p, t, b):
                return module(e, l, basic=b, pred_spans=p, target_spans=t,
                              span_mask=l >= 1)["loss"]

        def step():
            emb.grad = pred.grad = basic.grad = None
            crit_fn(emb, labels, pred, target, basic).backward()
        return step

    if backend == "compile":
        fn = torch.compile(_reference_losses)
    else:
        def fn(e, l):
            return ck.clip_boundary_losses(e, l, backend=backend, check_labels=check_labels)

    if mode == "fwd":
        def step():
            with torch.no_grad():
                lc, lb = fn(emb, labels)
                return lc + lb
    elif mode == "fwdbwd":
        def step():
            emb.grad = None
            lc, lb = fn(emb, labels)
            (lc + lb).backward()
    else:
        raise ValueError(f"unknown mode {mode!r}")
    return step


def _vm_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
    return int(m.group(1))


def measure_memory_mb(step: Callable[[], object], device) -> float:
    """Peak memory growth of one call of `step`, in MB (2**20 bytes)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2 ** 20
    try:  # give freed heap memory back, so that reusing it counts as growth again (glibc)
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:  # reset the high-water mark, so that earlier peaks (imports, compilation) don't count
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    before = _vm_kib("VmRSS")
    step()
    # Clamped at 0: the kernel's RSS counters lag by a few hundred KiB (the resolution).
    return max(0.0, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)


def time_call_ms(step: Callable[[], object], device) -> float:
    """Wall clock of one call (CUDA events on a GPU), in ms."""
    import torch

    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    step()
    return (time.perf_counter() - t0) * 1e3


def graph_time_ms(step: Callable[[], object], device, n: int) -> Optional[float]:
    """Median GPU time of `step` captured as a CUDA graph and replayed `n` times, in ms; None
    when the step cannot be captured."""
    import torch

    try:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up on a side stream, as capture requires
            for _ in range(2):
                step()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
    except Exception as exc:  # noqa: BLE001 - the column stays empty
        print(f"graph capture failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        torch.cuda.synchronize(device)
        return None
    times = []
    for _ in range(max(1, n)):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return percentile(times, 50)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile, q in [0, 100]."""
    v = sorted(values)
    pos = (len(v) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def plan_repeats(call_s: float, min_time: float) -> int:
    """Adaptive number of timed calls for a call of `call_s` seconds."""
    if call_s >= SLOW_CALL_S:
        return SLOW_REPEATS
    n = math.ceil(min_time / max(call_s, 1e-6))
    return max(MIN_REPEATS, min(MAX_REPEATS, n))


def _is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or "out of memory" in text or "can't allocate" in text


def _emit(**record) -> None:
    print(MARK + json.dumps(record), flush=True)


def child_main(spec: dict) -> int:
    """Run one case in this (fresh) process and report on stdout."""
    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    shape = get_shape(spec["shape"])
    _emit(event="start", threads=torch.get_num_threads())
    try:
        if spec["backend"] != "compile":  # one-time imports and set-up of the first call
            tiny = Shape("preload", 1, 8, shape.D, gt_frac=(0.5, 0.5))
            make_step(spec["backend"], spec["mode"], *make_inputs(tiny, spec["mode"],
                                                                   spec["device"]))()
        emb, labels = make_inputs(shape, spec["mode"], spec["device"], spec.get("seed", 0))
        step = make_step(spec["backend"], spec["mode"], emb, labels)
        warm_times = []
        if spec["backend"] == "compile":  # compile before the memory call
            t0 = time.perf_counter()
            step()
            warm_times.append(time.perf_counter() - t0)
            _emit(event="compiled", seconds=warm_times[-1])
        t0 = time.perf_counter()
        mem = measure_memory_mb(step, device)
        warm_times.append(time.perf_counter() - t0)
        _emit(event="mem", peak_mem_mb=mem)
        while len(warm_times) < spec["warmup"] and warm_times[-1] < SLOW_CALL_S:
            warm_times.append(time_call_ms(step, device) / 1e3)
        n = spec.get("repeats") or plan_repeats(warm_times[-1], spec["min_time"])
        times = [time_call_ms(step, device) for _ in range(n)]
        gpu_ms = None
        if device.type == "cuda":
            gstep = make_step(spec["backend"], spec["mode"], emb, labels, check_labels=False)
            gpu_ms = graph_time_ms(gstep, device, n)
    except Exception as exc:  # noqa: BLE001 - recorded, not raised
        status = "oom" if _is_oom(exc) else "error"
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        _emit(event="result", status=status, error=f"{type(exc).__name__}: {exc}"[:500])
        return 0
    _emit(event="result", status="ok", median_ms=percentile(times, 50),
          p20_ms=percentile(times, 20), p80_ms=percentile(times, 80),
          p90_ms=percentile(times, 90), runs=len(times),
          gpu_ms=gpu_ms)
    return 0


# --------------------------------------------------------------------------------------------
# Parent: run the children, collect the rows


def status_from_exit(returncode: Optional[int], timed_out: bool, reported: Optional[str]) -> str:
    """The status of a case from how its child ended and what it reported."""
    if reported is not None:
        return reported
    if timed_out:
        return "timeout"
    if returncode is not None and returncode in (-signal.SIGKILL, 128 + signal.SIGKILL, 137):
        return "oom"  # killed: the kernel's out-of-memory killer sends SIGKILL
    return "error"


def run_child(cmd: Sequence[str], timeout: float, env: Optional[dict] = None) -> dict:
    """Run a child command in its own process group; kill the group after `timeout` s.

    Returns the merged records it reported, with ``status`` set and ``log`` the stderr tail.
    """
    proc = subprocess.Popen(list(cmd), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    timed_out = False
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
    info: dict = {}
    for line in out.splitlines():
        if line.startswith(MARK):
            info.update(json.loads(line[len(MARK):]))
    reported = info.get("status") if info.get("event") == "result" else None
    info["status"] = status_from_exit(proc.returncode, timed_out, reported)
    info["returncode"] = proc.returncode
    info["log"] = (err or "").strip()[-2000:]
    return info


# The child of a case run against the package at another path (`package_root`): the harness
# from this checkout, the package from there.
_CHILD_AT = """
import os, sys
from bench import harness
sys.path.insert(0, sys.argv[1])
import cliptbp_kernels
where = os.path.realpath(cliptbp_kernels.__file__)
if not where.startswith(os.path.join(os.path.realpath(sys.argv[1]), "")):
    sys.exit(f"cliptbp_kernels imported from {where}, not from {sys.argv[1]}")
sys.exit(harness.child_main(harness.json.loads(sys.argv[2])))
"""


def run_case(backend: str, shape: str, mode: str, *, device: str = "cpu", warmup: int = 3,
             repeats: Optional[int] = None, min_time: float = 1.5, timeout: float = 300.0,
             threads: Optional[int] = None, seed: int = 0, env: Optional[dict] = None,
             busy: int = 0, package_root: Optional[str] = None) -> dict:
    """One case in a fresh child process (see the module docstring), with `busy` busy
    neighbour processes running beside it. `package_root`: import ``cliptbp_kernels`` from
    that directory (another checkout or build) instead of this one."""
    from .busy import BusyNeighbours

    spec = dict(backend=backend, shape=shape, mode=mode, device=device, warmup=warmup,
                repeats=repeats, min_time=min_time, threads=threads, seed=seed)
    if package_root is None:
        cmd = [sys.executable, "-m", "bench.harness", "--child", json.dumps(spec)]
    else:
        cmd = [sys.executable, "-c", _CHILD_AT, str(package_root), json.dumps(spec)]
    with BusyNeighbours(busy):
        return run_child(cmd, timeout, env)


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
        if m:
            return m.group(1).strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "cpu"


def _triton_version() -> str:
    try:
        from importlib.metadata import version

        return version("triton")
    except Exception:  # noqa: BLE001
        return "none"


def _fmt(x: Optional[float]) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}" if abs(x) >= 1 else f"{x:.3f}"


def _num(row: dict, key: str) -> Optional[float]:
    v = row.get(key)
    return float(v) if v not in (None, "") else None


def markdown_table(rows: Sequence[dict]) -> str:
    """One line per (shape, mode): median ms per backend, speed-ups of each fused backend over
    reference and compile, peak memory per backend and the memory ratio reference / fused."""
    backends: List[str] = []
    for r in rows:
        if r["backend"] not in backends:
            backends.append(r["backend"])
    backends.sort(key=lambda b: (b not in BASELINES, BASELINES.index(b) if b in BASELINES else 0))
    fused = [b for b in backends if b not in BASELINES]
    keys: List[Tuple[str, str, str]] = []
    by: Dict[Tuple[str, str, str, str], dict] = {}
    for r in rows:
        key = (r["shape"], r["mode"], str(r.get("busy") or 0))
        if key not in keys:
            keys.append(key)
        by[key + (r["backend"],)] = r
    contention = any(k[2] != "0" for k in keys)

    gpu = any(_num(r, "gpu_ms") is not None for r in rows)
    head = (["shape", "mode", "B", "T"] + (["busy"] if contention else [])
            + [f"{b} ms" for b in backends])
    for f in fused:
        head += [f"{f} vs {b}" for b in BASELINES if b in backends]
    if gpu:  # kernel time of the CUDA-graph replay, and its ratios
        head += [f"{b} GPU ms" for b in backends]
        for f in fused:
            head += [f"{f} vs {b} (GPU)" for b in BASELINES if b in backends]
    head += [f"{b} MB" for b in backends]
    head += [f"mem reference/{f}" for f in fused if "reference" in backends]

    def cell(r: Optional[dict], key: str) -> str:
        if r is None:
            return ""
        return _fmt(_num(r, key)) if r["status"] == "ok" else r["status"]

    def ratio(a: Optional[dict], b: Optional[dict], key: str) -> str:
        x = _num(a, key) if a and a["status"] == "ok" else None
        y = _num(b, key) if b and b["status"] == "ok" else None
        if x is None or y is None or y <= 0 or x <= 0:
            return "-"
        q = x / y
        return f"{q:.0f}x" if q >= 100 else f"{q:.1f}x" if q >= 10 else f"{q:.2f}x"

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for shape, mode, busy in keys:
        any_row = next(by[(shape, mode, busy, b)] for b in backends
                       if (shape, mode, busy, b) in by)
        get = lambda b, k=(shape, mode, busy): by.get(k + (b,))
        cells = ([shape, mode, str(any_row["B"]), str(any_row["T"])]
                 + ([busy] if contention else []))
        cells += [cell(get(b), "median_ms") for b in backends]
        for f in fused:
            cells += [ratio(get(b), get(f), "median_ms") for b in BASELINES if b in backends]
        if gpu:
            cells += [cell(get(b), "gpu_ms") or "-" for b in backends]
            for f in fused:
                cells += [ratio(get(b), get(f), "gpu_ms") for b in BASELINES if b in backends]
        for b in backends:  # memory is measured before timing: shown even on a timeout
            r = get(b)
            mem = _num(r, "peak_mem_mb") if r else None
            cells.append(_fmt(mem) if mem is not None else (r["status"] if r else ""))
        if "reference" in backends:
            for f in fused:
                a, b_ = get("reference"), get(f)
                x = _num(a, "peak_mem_mb") if a else None
                y = _num(b_, "peak_mem_mb") if b_ else None
                if x is None or y is None or x <= 0:
                    cells.append("-")
                elif y < 1.0:  # below the resolution of the measurement: a lower bound
                    cells.append(f">={x:.0f}x")
                else:
                    cells.append(f"{x / y:.0f}x")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def without_contention(rows: Sequence[dict]) -> List[dict]:
    """The rows measured without busy neighbours (``busy`` 0, or empty in rows written before
    the column existed)."""
    return [r for r in rows if str(r.get("busy") or "0") == "0"]


def append_csv(path: Path, rows: Sequence[dict]) -> None:
    """Append rows; a file written with an older column list is first rewritten with the
    current one (new columns empty in the old rows)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    if not new:
        with open(path, newline="") as f:
            old = list(csv.DictReader(f))
            f.seek(0)
            header = next(csv.reader(f), [])
        if header != COLUMNS:
            with open(path, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore", restval="")
                w.writeheader()
                w.writerows(old)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerows(rows)


def parse_ints(text: str, option: str, minimum: int) -> List[int]:
    """Comma-separated ints, each >= `minimum`, of command-line option `option`."""
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        values = []
    if not values or any(v < minimum for v in values):
        raise SystemExit(f"{option} takes comma-separated ints >= {minimum}, got {text!r}")
    return values


def parse_busy(text: str) -> List[int]:
    """``--busy``: comma-separated counts of busy neighbours, each an int >= 0."""
    return parse_ints(text, "--busy", 0)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.harness", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=None,
                   help=f"comma-separated: {', '.join(SHAPES)}, sweep<T> "
                        f"(default {','.join(DEFAULT_SHAPES)})")
    p.add_argument("--backends", default=None,
                   help="comma-separated (default: ck.available_backends(device) + compile; "
                        "with --sweep: without compile)")
    p.add_argument("--modes", default="fwd,fwdbwd",
                   help="comma-separated: fwd, fwdbwd, crit_fwdbwd (the full ClipTBPLoss)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--csv", default=None, help="default bench/results/<device type>.csv")
    p.add_argument("--quick", action="store_true",
                   help="shorter timing, long16k skipped for reference and compile")
    p.add_argument("--sweep", action="store_true",
                   help=f"T in {SWEEP_TS[0]}..{SWEEP_TS[-1]} (B=2, one window ~5%%)")
    p.add_argument("--targets", action="store_true",
                   help="only the cases the GPU targets need (bench.targets): fwdbwd at qvh "
                        "(baselines reference, compile), long4k (reference), long16k (none), "
                        "for the fused backends of --backends")
    p.add_argument("--repeats", type=int, default=None, help="timed calls (default adaptive)")
    p.add_argument("--warmup", type=int, default=3, help="warm-up calls (default 3)")
    p.add_argument("--min-time", type=float, default=None,
                   help="seconds of timed calls per case (default 1.5, 0.5 with --quick)")
    p.add_argument("--case-timeout", type=float, default=300.0,
                   help="seconds per case, child start and compilation included (default 300)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in children")
    p.add_argument("--busy", default="0",
                   help="comma-separated numbers of busy neighbour processes to run each case "
                        "beside (default 0; e.g. 0,1,2: quiet, one and two neighbours)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        return child_main(json.loads(args.child))

    import torch

    import cliptbp_kernels as ck

    dev_type = torch.device(args.device).type
    shapes = (args.shapes.split(",") if args.shapes else
              [f"sweep{t}" for t in SWEEP_TS] if args.sweep else list(DEFAULT_SHAPES))
    for s in shapes:
        get_shape(s)
    if args.backends:
        backends = args.backends.split(",")
    else:
        backends = list(ck.available_backends(args.device)) + ([] if args.sweep else ["compile"])
    modes = args.modes.split(",")
    for m in modes:
        if m not in MODES:
            raise SystemExit(f"unknown mode {m!r}; known: {', '.join(MODES)}")
    busy_counts = parse_busy(args.busy)
    csv_path = Path(args.csv) if args.csv else ROOT / "bench" / "results" / f"{dev_type}.csv"
    min_time = args.min_time if args.min_time is not None else (0.5 if args.quick else 1.5)

    common = dict(
        date=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        commit=_git_commit(), device=device_name(args.device), torch=torch.__version__,
        triton=_triton_version(), dtype="float32")
    # A private compiler cache for this run, removed at the end.
    cache = tempfile.mkdtemp(prefix="cliptbp_bench_cache_")
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache,
               TRITON_CACHE_DIR=os.path.join(cache, "triton"))
    rows: List[dict] = []
    failed: set = set()  # (backend, mode) that failed at a smaller T of the sweep
    cases = [(s, m, b) for s in shapes for m in modes for b in backends]
    if args.targets:
        cases = [(s, m, b) for b, s, m in target_cases([b for b in backends
                                                        if b not in BASELINES])]
    cases = [(s, m, b, n) for s, m, b in cases for n in busy_counts]
    try:
        for i, (s, m, b, n) in enumerate(cases, 1):
            shape = get_shape(s)
            row = dict(common, backend=b, shape=s, B=shape.B, T=shape.T, D=shape.D, mode=m,
                       busy=n, threads=args.threads or torch.get_num_threads())
            if args.quick and s == "long16k" and b in BASELINES:
                info = {"status": "skipped", "why": "--quick"}
            elif args.sweep and (b, m) in failed:
                info = {"status": "skipped", "why": "failed at a smaller T"}
            else:
                info = run_case(b, s, m, device=args.device, warmup=args.warmup,
                                repeats=args.repeats, min_time=min_time,
                                timeout=args.case_timeout, threads=args.threads,
                                seed=args.seed, env=env, busy=n)
            if info["status"] in ("timeout", "oom", "error"):
                failed.add((b, m))
            row["status"] = info["status"]
            row["threads"] = info.get("threads", row["threads"])
            for k in ("median_ms", "p20_ms", "p80_ms", "p90_ms", "peak_mem_mb", "gpu_ms"):
                v = info.get(k)
                row[k] = f"{v:.6g}" if isinstance(v, (int, float)) else ""
            rows.append(row)
            append_csv(csv_path, [row])
            note = info.get("why") or info.get("error") or ""
            if info["status"] != "ok" and not note and info.get("log"):
                note = info["log"].splitlines()[-1]
            print(f"[{i}/{len(cases)}] {b:9s} {s:9s} {m:6s} "
                  + (f"busy {n} " if len(busy_counts) > 1 or n else "")
                  + f"{row['status']:7s} "
                  f"median {row['median_ms'] or '-'} ms  (p20 {row['p20_ms'] or '-'}, "
                  f"p80 {row['p80_ms'] or '-'})  peak {row['peak_mem_mb'] or '-'} MB"
                  + (f"  [{info['runs']} runs]" if "runs" in info else "")
                  + (f"  compile {info['seconds']:.1f} s" if "seconds" in info else "")
                  + (f"  {note}" if note else ""), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(cache, ignore_errors=True)

    threads = sorted({str(r["threads"]) for r in rows})
    mem_what = ("peak resident growth of a fresh process" if dev_type == "cpu"
                else "torch.cuda.max_memory_allocated growth")
    print(f"\n{common['device']} | threads {','.join(threads) or '?'} | torch {common['torch']}"
          f" | triton {common['triton']} | commit {common['commit']} | {common['date']}")
    print(f"time: median wall clock ms of L_clip + L_boun (float32); memory: MB, {mem_what}; "
          f"speed-ups measured side by side in this run"
          + ("; busy: busy neighbour processes beside the case" if any(busy_counts) else "")
          + "\n")
    print(markdown_table(rows))
    print(f"\nrows appended to {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
