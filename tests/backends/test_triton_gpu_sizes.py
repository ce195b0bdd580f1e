"""The Triton kernels with their GPU block sizes, run through the interpreter on the CPU
(CLIPTBP_TRITON_SIZES=gpu). The rest of the suite interprets them with large blocks, one
column split and few merge steps; on a GPU the launchers tile much finer: 32 x 64 similarity
tiles (16 x 16 in float64), up to 64 column splits per row tile, partial log-sum-exps and
top-k lists merged in several steps, window gathers and pair recomputations in narrow column
steps. These tests run those tilings against docs/losses.md without a GPU. The interpreter does not
model warps or registers: the GPU check (scripts/gpu_check.sh) still runs the compiled
kernels."""

from __future__ import annotations

import pytest
import torch

import cliptbp_kernels as ck
from cases import (
    block_edge_labels,
    check_against_spec,
    check_prep,
    exact_tie_batch,
    make_batch,
    random_labels,
    ref_pairs,
)
from cliptbp_kernels.backends import triton as TB
from cliptbp_kernels.backends.triton import launch

pytestmark = pytest.mark.skipif(
    TB.why_not(torch.device("cpu")) is not None,
    reason="the Triton backend does not run on CPU tensors here (triton missing or "
           "TRITON_INTERPRET unset)")


@pytest.fixture
def launches(monkeypatch):
    """GPU block sizes in the interpreter; yields the list of launches made: (kernel name,
    grid, block-size arguments)."""
    monkeypatch.setenv(TB.SIZES_ENV, "gpu")
    monkeypatch.delenv(TB.GPU_BLOCKS_ENV, raising=False)
    seen = []
    run = launch._launch

    def spy(kernel, grid, *args, **meta):
        seen.append((kernel.__name__, grid, meta))
        return run(kernel, grid, *args, **meta)

    monkeypatch.setattr(launch, "_launch", spy)
    return seen


def _launch_of(seen, name):
    (hit,) = [x for x in seen if x[0] == name][:1]
    return hit[1], hit[2]


def test_sizes_switch(monkeypatch):
    monkeypatch.setenv(TB.SIZES_ENV, "gpu")
    assert not TB.interpreter_sizes()
    monkeypatch.setenv(TB.SIZES_ENV, "auto")
    assert TB.interpreter_sizes()
    monkeypatch.setenv(TB.SIZES_ENV, "tiny")
    with pytest.raises(ValueError, match=TB.SIZES_ENV):
        TB.interpreter_sizes()


@pytest.mark.parametrize("positives", ["any", "same"])
@pytest.mark.parametrize("negatives", ["cross", "all"])
def test_qvh_shape_every_option(launches, positives, negatives):
    # T = 75: three row tiles of 32, two column tiles of 64; D = 40 needs two 32-wide k steps
    emb, labels = make_batch(4, 75, 40, ["windows", "padding_middle", "sparse_ids",
                                         "one_clip_windows"], seed=1)
    check_against_spec("triton", emb, labels, k=7, positives=positives, negatives=negatives)
    grid, meta = _launch_of(launches, "_clip_fwd_kernel")
    assert grid == (3, 1, 4) and (meta["BM"], meta["BN"], meta["BK"]) == (32, 64, 32)


def test_column_splits_and_merge_steps(launches, monkeypatch):
    # 512-clip column splits at T = 600: 19 row tiles x 2 splits; with 64-clip splits, 190
    # partial results per sample: the finalize merges them in two steps of 128
    emb, labels = make_batch(2, 600, 8, ["windows", "padding_middle"], seed=2)
    check_against_spec("triton", emb, labels, k=20, negatives="all")
    grid, _ = _launch_of(launches, "_clip_fwd_kernel")
    assert grid == (19, 2, 2)
    monkeypatch.setenv(TB.GPU_BLOCKS_ENV, "cols=64")
    launches.clear()
    check_against_spec("triton", emb, labels, k=20)
    grid, _ = _launch_of(launches, "_clip_fwd_kernel")
    _, meta = _launch_of(launches, "_finalize_kernel")
    assert grid == (19, 10, 2) and meta["BP"] == 128 < 19 * 10


def test_large_k_merges_top_k_lists_in_steps(launches, monkeypatch):
    # k = 300 pads to 512: partial top-k lists merged 8 at a time from 5 x 3 partials; the
    # chosen pairs' similarities recomputed 8 columns at a time; radius 3 gathers 32 offsets
    monkeypatch.setenv(TB.GPU_BLOCKS_ENV, "cols=64")
    emb, labels = make_batch(3, 150, 64, ["windows", "one_clip_windows", "sparse_ids"], seed=3,
                             dtype=torch.float16)
    check_against_spec("triton", emb, labels, grad_rtol=5e-3, k=300, radius=3)
    grid, _ = _launch_of(launches, "_clip_fwd_kernel")
    _, meta = _launch_of(launches, "_finalize_kernel")
    assert grid == (5, 3, 3) and meta["BPK"] == 8 < 15 and meta["BKP"] == 8
    assert meta["BO"] == 32 and meta["BKW"] < 64


def test_float64_tiles_and_exact_pairs(launches, monkeypatch):
    # float64 tiles are 16 x 16; exact ties (similarities multiples of 1/4) make the tie rule
    # decide most ranks, so the chosen pairs must equal the reference's pair for pair, rank
    # for rank, across the tile and split merges
    monkeypatch.setenv(TB.GPU_BLOCKS_ENV, "cols=64")  # not applied to float64 sizes
    emb, labels = exact_tie_batch(4, 70, seed=4)
    emb = emb.double()
    for opts in (dict(k=9), dict(k=40, positives="same", negatives="all")):
        got = ck.hard_negative_pairs(emb, labels, backend="triton", **opts)
        assert torch.equal(got, ref_pairs(emb, labels, **opts)), opts
    grid, meta = _launch_of(launches, "_clip_fwd_kernel")
    assert grid == (5, 1, 4) and (meta["BM"], meta["BN"]) == (16, 16)
    emb, labels = make_batch(4, 70, 24, ["windows", "padding_middle", "all_gt", "sparse_ids"],
                             seed=4, dtype=torch.float64, duplicates=True)
    check_against_spec("triton", emb, labels, k=40, positives="same", negatives="all")


def test_bfloat16_exact_ties_across_splits(launches, monkeypatch):
    monkeypatch.setenv(TB.GPU_BLOCKS_ENV, "cols=64,BN=32")
    emb, labels = exact_tie_batch(3, 130, seed=5)
    emb = emb.to(torch.bfloat16)
    for k in (1, 33, 300):
        got = ck.hard_negative_pairs(emb, labels, k=k, backend="triton")
        assert torch.equal(got, ref_pairs(emb, labels, k=k)), k
    grid, _ = _launch_of(launches, "_clip_fwd_kernel")
    assert grid == (5, 3, 3)


def test_prep_lists_with_gpu_blocks(launches):
    # the GPU list block is 1024 clips and the ranking tile 64 GT clips
    labels = block_edge_labels(1024)
    check_prep(labels, torch.rand(labels.shape, dtype=torch.float64))
    labels = random_labels(4, 700, seed=6, sorted_ids=False)
    check_prep(labels, torch.rand(labels.shape, dtype=torch.float64))
    assert {m["BT"] for _, _, m in launches} == {1024} and {m["BR"] for _, _, m in launches} == {64}
