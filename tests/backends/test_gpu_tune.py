"""The GPU tuning sweep without a GPU: its candidates, the Triton block-size override, and
the choice of the best candidate."""

import importlib.util

import pytest

from cliptbp_kernels.backends.triton import blocks as _triton_backend
from paths import REPO

ROOT = REPO
_spec = importlib.util.spec_from_file_location("gpu_tune", ROOT / "scripts" / "gpu_tune.py")
gpu_tune = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_tune)


def test_override_parses_and_rejects(monkeypatch):
    monkeypatch.setenv(_triton_backend.GPU_BLOCKS_ENV, "BM=32,BN=128,warps=8,cols=2048")
    assert _triton_backend.gpu_block_override() == {"BM": 32, "BN": 128, "warps": 8,
                                                    "cols_per_split": 2048}
    for bad in ("BM=48", "BX=64", "BM=8", "BM=sixty", "warps=3"):
        monkeypatch.setenv(_triton_backend.GPU_BLOCKS_ENV, bad)
        with pytest.raises(ValueError, match=_triton_backend.GPU_BLOCKS_ENV):
            _triton_backend.gpu_block_override()


def test_override_applies_to_gpu_float32_sizes_only(monkeypatch):
    monkeypatch.setenv(_triton_backend.GPU_BLOCKS_ENV, "BM=128,BN=32,BK=64,warps=8,cols=256")
    b = _triton_backend._Blocks(4096, 256, False, 32, interp=False)  # GPU sizes, no launch
    assert (b.BM, b.BN, b.BK, b.warps, b.cols_per_split) == (128, 32, 64, 8, 256)
    f64 = _triton_backend._Blocks(4096, 256, True, 32, interp=False)
    assert (f64.BM, f64.BN, f64.warps) == (16, 16, 4)  # float64 sizes are not overridden
    interp = _triton_backend._Blocks(4096, 256, False, 32, interp=True)
    assert interp.warps == 1 and interp.cols_per_split == 1 << 30  # interpreter sizes kept


def test_every_triton_candidate_is_valid(monkeypatch):
    var, candidates = gpu_tune.CANDIDATES["triton"]
    assert var == _triton_backend.GPU_BLOCKS_ENV
    for c in candidates:
        monkeypatch.setenv(var, c)
        assert _triton_backend.gpu_block_override()
    assert all(int(c) >= 32 for c in gpu_tune.CANDIDATES["cuda"][1])


def test_plan_and_dry_run(capsys):
    cases = gpu_tune.plan(["triton", "cuda"], ["qvh", "long16k"])
    n = len(gpu_tune.CANDIDATES["triton"][1]) + len(gpu_tune.CANDIDATES["cuda"][1])
    assert len(cases) == 2 * n and cases[0][:2] == ("triton", "qvh")
    assert gpu_tune.main(["--dry-run", "--shapes", "qvh"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == n
    with pytest.raises(SystemExit):
        gpu_tune.main(["--dry-run", "--backends", "nope"])


def test_best_prefers_gpu_time_and_skips_failures():
    rows = [
        dict(backend="cuda", shape="qvh", candidate="1024", status="ok", median_ms="2.0",
             gpu_ms="0.5", peak_mem_mb="1"),
        dict(backend="cuda", shape="qvh", candidate="256", status="ok", median_ms="1.0",
             gpu_ms="0.7", peak_mem_mb="1"),
        dict(backend="cuda", shape="qvh", candidate="512", status="timeout", median_ms="",
             gpu_ms="", peak_mem_mb=""),
        dict(backend="triton", shape="qvh", candidate="a", status="ok", median_ms="3.0",
             gpu_ms="", peak_mem_mb="1"),
    ]
    chosen = gpu_tune.best(rows)
    assert chosen["cuda"]["qvh"]["candidate"] == "1024"  # least GPU time wins
    assert chosen["triton"]["qvh"]["candidate"] == "a"  # wall clock when no GPU time


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-GPU path")
def test_gpu_check_stops_at_once_without_a_gpu(tmp_path):
    """Without a GPU the staged check builds nothing (it would rebuild the package for no
    device) and says why; every stage name is known to it."""
    import os
    import subprocess
    import sys

    script = ROOT / "scripts" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    env = dict(os.environ, OUT=str(tmp_path / "out"), PYTHON=sys.executable,
               GPU_CHECK_WORK=str(tmp_path / "work"))
    proc = subprocess.run(["bash", str(script), "lease"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1
    assert "no CUDA GPU visible" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["logs.tgz", "summary.txt"]
    assert not (tmp_path / "work" / "build.log").exists()
    text = script.read_text()
    for stage in ("build", "smoke", "gputests", "tests", "sanitizer", "targets", "bench",
                  "tune"):
        assert f"stage_{stage}()" in text


def test_block_sizes_cached_per_shape_sizes_and_override(monkeypatch):
    monkeypatch.setenv(_triton_backend.SIZES_ENV, "gpu")
    monkeypatch.delenv(_triton_backend.GPU_BLOCKS_ENV, raising=False)
    a = _triton_backend._blocks(4096, 256, False, 32, 1)
    assert _triton_backend._blocks(4096, 256, False, 32, 1) is a and a.BM == 32
    assert _triton_backend._blocks(4096, 256, False, 32, 2) is not a
    monkeypatch.setenv(_triton_backend.GPU_BLOCKS_ENV, "BM=64")
    b = _triton_backend._blocks(4096, 256, False, 32, 1)
    assert b is not a and b.BM == 64 and a.BM == 32
    monkeypatch.setenv(_triton_backend.SIZES_ENV, "auto")  # the tests run interpreted
    assert _triton_backend._blocks(4096, 256, False, 32, 1).cols_per_split == 1 << 30
