"""Tests of the benchmark harness on tiny shapes (timing effectively off: 1 warm-up, 1 run),
and two small pytest-benchmark cases at the QVHighlights shape."""

import csv
import os
import sys

import pytest
import torch

import cliptbp_kernels as ck
from bench import harness, plot
from paths import REPO

FUSED = [b for b in ck.available_backends("cpu") if b != "reference"]


def _read(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_labels_are_seeded_and_shaped():
    shape = harness.get_shape("qvh")
    a, b = harness.make_labels(shape, seed=3), harness.make_labels(shape, seed=3)
    assert torch.equal(a, b) and a.shape == (32, 75) and a.dtype == torch.int64
    assert not torch.equal(a, harness.make_labels(shape, seed=4))
    padded = 0
    for row in a.tolist():
        n = sum(v >= 0 for v in row)
        assert all(v == -1 for v in row[n:]), "padding only at the end"
        padded += n < 75
        windows = sorted({v for v in row if v >= 1})
        assert 1 <= len(windows) <= 3 and windows == list(range(1, len(windows) + 1))
        assert 0.18 <= sum(v >= 1 for v in row) / n <= 0.32
    assert 0 < padded < 32
    for name, frac in (("tacos", 0.07), ("long4k", 0.05), ("sweep256", 0.05)):
        s = harness.get_shape(name)
        lab = harness.make_labels(s)
        assert set(lab.unique().tolist()) == {0, 1}
        assert (lab == 1).sum(1).tolist() == [round(frac * s.T)] * s.B
        for row in lab.tolist():  # one contiguous window
            ones = [i for i, v in enumerate(row) if v == 1]
            assert ones == list(range(ones[0], ones[-1] + 1))


def test_tiny_run_writes_csv_table_and_plot(tmp_path, capsys):
    # the plain modes on the reference and one fused backend (every child is a fresh process
    # importing torch); every backend runs in test_criterion_mode_runs_every_backend
    out = tmp_path / "res" / "cpu.csv"
    fused = ["cpu"] if "cpu" in FUSED else FUSED[:1]
    backends = ",".join(["reference"] + fused)
    rc = harness.main(["--shapes", "tiny", "--backends", backends, "--modes", "fwd,fwdbwd",
                       "--warmup", "1", "--repeats", "1", "--csv", str(out)])
    assert rc == 0
    rows = _read(out)
    assert rows[0] == harness.COLUMNS
    assert len(rows) == 1 + 2 * (1 + len(fused))
    for r in rows[1:]:
        d = dict(zip(harness.COLUMNS, r))
        assert d["status"] == "ok", d
        assert (d["shape"], d["B"], d["T"], d["D"], d["dtype"]) == ("tiny", "2", "20", "16",
                                                                    "float32")
        assert d["mode"] in ("fwd", "fwdbwd") and d["backend"] in backends.split(",")
        assert float(d["p20_ms"]) <= float(d["median_ms"]) <= float(d["p80_ms"])
        assert float(d["median_ms"]) > 0 and float(d["peak_mem_mb"]) >= 0
        assert int(d["threads"]) >= 1 and d["torch"] == torch.__version__
        assert d["date"].endswith("+00:00") and d["commit"] and d["device"]
    assert len({r[0] for r in rows[1:]}) == 1, "one date for the whole run"

    printed = capsys.readouterr().out
    table = [line for line in printed.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 2  # header, separator, (tiny, fwd), (tiny, fwdbwd)
    head = [c.strip() for c in table[0].strip("|").split("|")]
    assert head[:5] == ["shape", "mode", "B", "T", "reference ms"]
    for f in fused:
        assert f"{f} vs reference" in head and f"mem reference/{f}" in head
    assert "peak resident growth of a fresh process" in printed
    assert all(len(line.strip("|").split("|")) == len(head) for line in table)

    png = tmp_path / "plot.png"
    assert plot.main(["--csv", str(out), "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_timeout_is_recorded(tmp_path):
    info = harness.run_case("reference", "tiny", "fwd", warmup=1, repeats=1, timeout=0.001)
    assert info["status"] == "timeout"
    out = tmp_path / "t.csv"
    harness.main(["--shapes", "tiny", "--backends", "reference", "--modes", "fwd",
                  "--case-timeout", "0.001", "--csv", str(out)])
    rows = [dict(zip(harness.COLUMNS, r)) for r in _read(out)[1:]]
    assert [(r["backend"], r["status"], r["median_ms"]) for r in rows] == [
        ("reference", "timeout", "")]


def test_killed_child_is_recorded_as_oom():
    cmd = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
    assert harness.run_child(cmd, timeout=60)["status"] == "oom"
    cmd = [sys.executable, "-c", "raise SystemExit(3)"]
    assert harness.run_child(cmd, timeout=60)["status"] == "error"
    assert harness.status_from_exit(-9, False, None) == "oom"
    assert harness.status_from_exit(0, True, None) == "timeout"
    assert harness.status_from_exit(0, False, "oom") == "oom"


def test_quick_skips_long16k_baselines(tmp_path):
    out = tmp_path / "q.csv"
    harness.main(["--quick", "--shapes", "long16k", "--backends", "reference,compile",
                  "--modes", "fwd", "--csv", str(out)])
    rows = [dict(zip(harness.COLUMNS, r)) for r in _read(out)[1:]]
    assert [(r["backend"], r["status"]) for r in rows] == [("reference", "skipped"),
                                                           ("compile", "skipped")]


def test_markdown_table_ratios():
    def row(backend, ms, mb, status="ok"):
        return dict(backend=backend, shape="qvh", mode="fwd", B=32, T=75, median_ms=ms,
                    peak_mem_mb=mb, status=status)

    table = harness.markdown_table([row("reference", "10", "100"), row("compile", "5", "50"),
                                    row("cpu", "2", "2")]).splitlines()
    cells = [c.strip() for c in table[2].strip("|").split("|")]
    head = [c.strip() for c in table[0].strip("|").split("|")]
    got = dict(zip(head, cells))
    assert got["cpu vs reference"] == "5.00x" and got["cpu vs compile"] == "2.50x"
    assert got["mem reference/cpu"] == "50x" and got["reference MB"] == "100"
    table = harness.markdown_table([row("reference", "", "900", "timeout"), row("cpu", "2", "2")])
    got = dict(zip([c.strip() for c in table.splitlines()[0].strip("|").split("|")],
                   [c.strip() for c in table.splitlines()[2].strip("|").split("|")]))
    assert got["reference ms"] == "timeout" and got["cpu vs reference"] == "-"
    assert got["reference MB"] == "900"


def test_compile_backend_runs_in_a_child():
    # the child shares the test run's inductor cache (its compiler probes, made once per
    # cache; the graph itself is compiled in the child)
    info = harness.run_case("compile", "tiny", "fwd", warmup=1, repeats=1, timeout=240)
    assert info["status"] in ("ok", "error"), info  # "error": no C++ compiler for inductor
    if info["status"] == "ok":
        assert info["median_ms"] > 0 and info["seconds"] > 0


def _bench_step(backend, mode="fwdbwd"):
    shape = harness.get_shape("qvh")
    emb, labels = harness.make_inputs(shape, mode)
    return harness.make_step(backend, mode, emb, labels)


@pytest.mark.skipif("cpu" not in FUSED, reason="the fused CPU backend is not built")
def test_benchmark_cpu_fwdbwd_qvh(benchmark):
    step = _bench_step("cpu")
    step()
    benchmark.pedantic(step, rounds=3, iterations=1)


def test_benchmark_reference_fwdbwd_qvh(benchmark):
    step = _bench_step("reference")
    step()
    benchmark.pedantic(step, rounds=3, iterations=1)


def test_criterion_mode_runs_every_backend(tmp_path):
    out = tmp_path / "crit.csv"
    backends = ",".join(["reference"] + FUSED)
    rc = harness.main(["--shapes", "tiny", "--backends", backends, "--modes", "crit_fwdbwd",
                       "--warmup", "1", "--repeats", "1", "--csv", str(out)])
    assert rc == 0
    rows = [dict(zip(harness.COLUMNS, r)) for r in _read(out)[1:]]
    assert {r["backend"] for r in rows} == set(backends.split(","))
    assert all(r["mode"] == "crit_fwdbwd" and r["status"] == "ok" for r in rows)


def _row(backend, ms, gpu_ms=""):
    return dict(date="d", commit="c", device="dev", threads="1", torch="t", triton="x",
                backend=backend, shape="qvh", B="32", T="75", D="256", dtype="float32",
                mode="fwdbwd", median_ms=str(ms), p20_ms=str(ms), p80_ms=str(ms),
                peak_mem_mb="10", status="ok", gpu_ms=str(gpu_ms))


def test_table_shows_gpu_time_and_its_ratios_when_measured():
    rows = [_row("reference", 10.0, 4.0), _row("cuda", 1.0, 0.1)]
    table = harness.markdown_table(rows)
    head = table.splitlines()[0]
    assert "cuda GPU ms" in head and "cuda vs reference (GPU)" in head
    cells = [c.strip() for c in table.splitlines()[2].strip("|").split("|")]
    named = dict(zip([h.strip() for h in head.strip("|").split("|")], cells))
    assert named["cuda vs reference"] == "10.0x" and named["cuda vs reference (GPU)"] == "40.0x"
    # no GPU column at all when nothing was measured on a GPU (a CPU run)
    assert "GPU" not in harness.markdown_table([_row("reference", 10.0), _row("cpu", 1.0)])


def test_csv_with_an_older_header_is_migrated(tmp_path):
    path = tmp_path / "old.csv"
    old_cols = [c for c in harness.COLUMNS if c != "gpu_ms"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=old_cols, extrasaction="ignore")
        w.writeheader()
        w.writerow(_row("reference", 5.0))
    harness.append_csv(path, [_row("cuda", 1.0, 0.5)])
    rows = _read(path)
    assert rows[0] == harness.COLUMNS
    old, new = (dict(zip(harness.COLUMNS, r)) for r in rows[1:])
    assert old["backend"] == "reference" and old["median_ms"] == "5.0" and old["gpu_ms"] == ""
    assert new["backend"] == "cuda" and new["gpu_ms"] == "0.5"


def _target_rows(ref_qvh, comp_qvh, fused_qvh, gpu_ref, gpu_fused, ref_4k, fused_4k, mem_ref,
                 mem_fused, fused_16k):
    def row(backend, shape, ms, gpu="", mem="", status="ok"):
        return dict(backend=backend, shape=shape, mode="fwdbwd", median_ms=str(ms),
                    gpu_ms=str(gpu), peak_mem_mb=str(mem), status=status)
    return [row("reference", "qvh", ref_qvh, gpu_ref), row("compile", "qvh", comp_qvh),
            row("triton", "qvh", fused_qvh, gpu_fused),
            row("reference", "long4k", ref_4k, mem=mem_ref),
            row("triton", "long4k", fused_4k, mem=mem_fused),
            row("triton", "long16k", fused_16k)]


def test_targets_evaluate_pass_fail_and_missing():
    from bench import targets

    good = targets.evaluate(_target_rows(3.0, 1.8, 0.5, 1.5, 0.05, 100.0, 1.0, 900.0, 5.0, 4.0))
    assert [c["verdict"] for c in good] == ["pass"] * 6
    assert good[0]["value"] == pytest.approx(6.0) and good[1]["value"] == pytest.approx(30.0)
    bad = targets.evaluate(_target_rows(4.0, 1.0, 0.75, 1.5, 0.2, 100.0, 4.0, 900.0, 10.0, 12.0))
    assert [c["verdict"] for c in bad] == ["pass", "FAIL", "FAIL", "FAIL", "FAIL", "FAIL"]
    rows = _target_rows(3.0, 1.8, 0.5, "", 0.05, 100.0, 1.0, 900.0, 5.0, 4.0)
    rows[-1]["status"] = "timeout"
    some = targets.evaluate(rows)
    assert some[1]["verdict"] == "missing" and some[-1]["verdict"] == "missing"


def test_targets_floor_counts_gt_rows_and_bytes():
    from bench import targets

    fl = targets.floor_estimate("long4k", tflops=1.0, tbps=1.0)
    labels = harness.make_labels(harness.get_shape("long4k"))
    ng = int((labels >= 1).sum(1)[0])
    assert ng == round(0.05 * 4096)
    want = 2 * (2 * 256 * ng * 4096 + 4 * 256 * ng * ng)
    assert fl["gflop"] == pytest.approx(want / 1e9)
    assert fl["mbytes"] == pytest.approx(3 * 2 * 4096 * 256 * 4 / 1e6)
    assert fl["flop_ms"] == pytest.approx(want / 1e12 * 1e3)


def test_targets_cases_and_cli(tmp_path, capsys):
    from bench import targets

    cases = targets.target_cases(["triton", "cuda"])
    assert ("compile", "qvh", "fwdbwd") in cases and ("cuda", "long16k", "fwdbwd") in cases
    assert ("reference", "long16k", "fwdbwd") not in cases
    assert ("compile", "long4k", "fwdbwd") not in cases
    path = tmp_path / "cuda.csv"
    rows = _target_rows(3.0, 1.8, 0.5, 1.5, 0.05, 100.0, 1.0, 900.0, 5.0, 4.0)
    old = dict(rows[2], median_ms="9.0", date="2026-01-01")
    for r in rows:
        r["date"] = "2026-02-02"
    harness.append_csv(path, [old] + rows)  # the later run of a case wins
    out = tmp_path / "t.json"
    assert targets.main(["--csv", str(path), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| triton | qvh | wall clock vs reference | 6 x | >= 5 x | pass |" in text
    assert "Floor" in text and "long16k" in text
    rows[-1]["median_ms"] = "11"
    harness.append_csv(path, [rows[-1]])
    assert targets.main(["--csv", str(path)]) == 1


def test_host_time_of_both_paths():
    pytest.importorskip("triton")
    import subprocess

    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-m", "bench.host", "--shape", "4,20", "--repeats",
                          "3"], env=env, capture_output=True, text=True, timeout=600,
                         cwd=str(REPO))
    assert out.returncode == 0, out.stderr
    rows = [line.split("|")[1:-1] for line in out.stdout.splitlines()
            if line.startswith("| eager") or line.startswith("| custom op")]
    assert [r[0].strip() for r in rows] == ["eager", "custom op"]
    for r in rows:
        assert float(r[1]) > 0 and r[4].strip() == "8"  # 4 launches each way


def test_live_memory_counts_the_step(capsys):
    from bench import live_memory

    ref = live_memory.peak_live_bytes("reference", "tiny")
    cpu = live_memory.peak_live_bytes("cpu", "tiny")
    assert cpu["grad"] == ref["grad"] == 2 * 20 * 16 * 4
    # the cpu backend's step: the gradient and a little bookkeeping; the reference's T x T
    # matrices are more, even at T = 20
    assert cpu["grad"] <= cpu["peak"] < ref["peak"]
    assert live_memory.main(["--shape", "tiny", "--backends", "reference,cpu"]) == 0
    out = capsys.readouterr().out
    assert "| reference |" in out and "| cpu |" in out
