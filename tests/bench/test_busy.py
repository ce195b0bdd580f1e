"""The busy neighbours of the contention benchmarks: they spin while wanted and none survives
any way out (normal exit, exception, KeyboardInterrupt, a parent killed outright), and the
harness's --busy mode and the side-by-side contention driver."""

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from bench import busy, contention, harness
from paths import REPO

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads process states from /proc")


def _alive(pid):
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _neighbours_of(parent):
    """Pids of running busy neighbours started by process `parent`."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if (len(argv) >= 4 and argv[1] == b"-c" and b"PR_SET_PDEATHSIG" in argv[2]
                and argv[3] == str(parent).encode() and _alive(int(d))):
            found.append(int(d))
    return found


def _wait_gone(pids, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


def test_neighbours_spin_inside_the_block_and_stop_after():
    with busy.BusyNeighbours(2) as nb:
        pids = nb.pids
        assert len(pids) == 2 and all(_alive(p) for p in pids)
        assert sorted(_neighbours_of(os.getpid())) == sorted(pids)
        before = [_cpu_ticks(p) for p in pids]
        time.sleep(0.3)
        assert all(_cpu_ticks(p) > b for p, b in zip(pids, before)), "neighbours must spin"
    assert _wait_gone(pids, timeout=0) == [] and nb.pids == []
    nb.stop()  # a second stop is harmless
    with busy.BusyNeighbours(0) as nb0:
        assert nb0.pids == []


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_neighbours_stop_when_the_block_raises(exc):
    pids = []
    with pytest.raises(exc):
        with busy.BusyNeighbours(1) as nb:
            pids = nb.pids
            raise exc("stop")
    assert len(pids) == 1 and _wait_gone(pids, timeout=0) == []


def test_neighbours_end_when_their_parent_is_killed():
    code = textwrap.dedent("""
        import os, signal, sys
        sys.path.insert(0, sys.argv[1])
        from bench.busy import BusyNeighbours
        nb = BusyNeighbours(2).start()
        print(" ".join(map(str, nb.pids)), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code, str(REPO)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    pids = [int(p) for p in proc.stdout.split()]
    assert len(pids) == 2
    assert _wait_gone(pids) == [], "a neighbour outlived its killed parent"


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_bad_neighbour_counts_are_refused(bad):
    with pytest.raises(ValueError if bad == -1 else TypeError, match="busy neighbours"):
        busy.BusyNeighbours(bad)


def test_harness_busy_mode_writes_a_row_per_load(tmp_path, capsys):
    out = tmp_path / "cpu.csv"
    rc = harness.main(["--shapes", "tiny", "--backends", "reference", "--modes", "fwd",
                       "--busy", "0,1", "--warmup", "1", "--repeats", "2", "--csv", str(out)])
    assert rc == 0
    assert _neighbours_of(os.getpid()) == [], "the harness left a busy neighbour running"
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["backend"], r["busy"], r["status"]) for r in rows] == [
        ("reference", "0", "ok"), ("reference", "1", "ok")]
    for r in rows:
        assert float(r["median_ms"]) <= float(r["p90_ms"])
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    head = [c.strip() for c in table[0].strip("|").split("|")]
    assert head[:6] == ["shape", "mode", "B", "T", "busy", "reference ms"]
    assert [line.split("|")[5].strip() for line in table[2:]] == ["0", "1"]
    # the plots and the GPU targets leave the contention rows out
    assert harness.without_contention(rows) == rows[:1]
    with pytest.raises(SystemExit, match="--busy"):
        harness.parse_busy("1,-2")


def _records(**medians):
    """Contention records: medians[(build, shape, busy)] = [median per run]."""
    out = []
    for key, values in medians.items():
        build, shape, n = key.split("_")
        for r, m in enumerate(values):
            out.append(dict(run=r, build=build, shape=shape, busy=int(n), backend="x",
                            median=m, p90=m * 1.5))
    return out


def test_contention_checks_pass_and_fail():
    good = _records(new_qvh_0=[2.0, 2.2], new_qvh_1=[5.0, 6.0], new_qvh_2=[7.0, 8.0],
                    old_qvh_0=[2.1, 2.0],
                    reference_qvh_0=[20.0, 20.0], reference_qvh_1=[40.0, 40.0],
                    reference_qvh_2=[60.0, 60.0])
    table, ratios = contention.summarise(good)
    assert contention.check(ratios, "new", "old") == []
    assert "| new | qvh | 1 |" in table
    # one run with one neighbour at 3.5x its quiet median
    slow = [dict(r, median=7.0) if (r["build"], r["busy"], r["run"]) == ("new", 1, 0) else r
            for r in good]
    fails = contention.check(contention.summarise(slow)[1], "new", "old")
    assert len(fails) == 1 and "3.50x" in fails[0]
    # the reference only 2x slower under two neighbours
    near = [dict(r, median=15.0) if (r["build"], r["busy"]) == ("reference", 2) else r
            for r in good]
    fails = contention.check(contention.summarise(near)[1], "new", "old")
    assert len(fails) == 1 and "faster than the reference" in fails[0]
    # quiet median more than 10 % above the baseline's
    quiet = [dict(r, median=r["median"] * 1.2) if (r["build"], r["busy"]) == ("old", 0)
             else r for r in good]
    assert contention.check(contention.summarise(quiet)[1], "old", "new") != []
    assert contention.check(ratios, "missing", None) == ["no measurements of build 'missing'"]


def test_contention_driver_runs_a_build_from_its_path(tmp_path):
    out = tmp_path / "c.json"
    rc = contention.main(["--builds", f"here={REPO}", "--runs", "1", "--busy", "0",
                          "--shapes", "tiny", "--repeats", "2", "--backend", "reference",
                          "--json", str(out)])
    assert rc == 0
    recs = json.loads(out.read_text())
    assert {(r["build"], r["busy"]) for r in recs} == {("here", 0), ("reference", 0)}
    with pytest.raises(SystemExit, match="no cliptbp_kernels"):
        contention.parse_builds(f"x={tmp_path}")


def test_case_child_imports_the_package_from_package_root(tmp_path):
    """A case run against another checkout imports `cliptbp_kernels` from there, not from this
    one (an editable install of this checkout must not win)."""
    fake = tmp_path / "cliptbp_kernels"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('the tree at package_root')\n")
    info = harness.run_case("reference", "tiny", "fwd", repeats=2, timeout=120,
                            package_root=str(tmp_path))
    assert info["status"] == "error"
    assert "the tree at package_root" in info.get("log", "") + info.get("error", "")
