"""GPU tests: they run on a machine with a CUDA GPU and skip only where there is none."""

from __future__ import annotations

import pytest
import torch

import cliptbp_kernels as ck
from cases import (
    PATTERNS,
    assert_grads_close,
    assert_values_close,
    make_batch,
    per_sample_value_and_grad,
    spec_eval,
)
from paths import REPO

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
GPU_BACKENDS = ck.available_backends("cuda") if torch.cuda.is_available() else []


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_backends_match_spec(backend, dtype):
    emb, labels = make_batch(len(PATTERNS), 77, 32, list(PATTERNS), seed=1, dtype=dtype)
    rc, rb, rg = spec_eval(emb, labels)
    lc, lb, g = per_sample_value_and_grad(backend, emb.cuda(), labels.cuda())
    assert lc.is_cuda and g.is_cuda and g.dtype == dtype
    assert_values_close(lc.cpu(), rc, f"{backend} L_clip")
    assert_values_close(lb.cpu(), rb, f"{backend} L_boun")
    assert_grads_close(g.cpu(), rg, f"{backend} grad")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_cuda_no_tf32_even_when_enabled(backend):
    emb, labels = make_batch(4, 200, 128, ["windows", "all_gt"], seed=2)
    rc, _, _ = spec_eval(emb, labels)
    flag = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        lc, _, _ = per_sample_value_and_grad(backend, emb.cuda(), labels.cuda())
    finally:
        torch.backends.cuda.matmul.allow_tf32 = flag
    assert_values_close(lc.cpu(), rc, f"{backend} L_clip with TF32 allowed")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_cuda_deterministic(backend):
    emb, labels = make_batch(3, 150, 64, list(PATTERNS), seed=3)
    a = per_sample_value_and_grad(backend, emb.cuda(), labels.cuda())
    b = per_sample_value_and_grad(backend, emb.cuda(), labels.cuda())
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_cuda_module_runtime_and_launch():
    from cliptbp_kernels import _C_cuda

    assert _C_cuda.device_count() >= 1
    buf = torch.zeros(257, device="cuda")
    _C_cuda.fill_f32(buf.data_ptr(), buf.numel(), 1.25, torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    assert (buf == 1.25).all()


OPTION_GRID = [dict(positives=p, negatives=n) for p in ("any", "same") for n in ("cross", "all")]


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("opts", OPTION_GRID, ids=lambda o: f"{o['positives']}-{o['negatives']}")
@pytest.mark.parametrize("T,k", [(1, 20), (2, 1), (75, 20), (77, 256), (700, 1024)])
def test_cuda_backends_every_option_and_size(backend, opts, T, k):
    emb, labels = make_batch(len(PATTERNS), T, 40, list(PATTERNS), seed=T, dtype=torch.float64)
    emb32 = emb.float()
    rc, rb, rg = spec_eval(emb32, labels, k=k, **opts)
    lc, lb, g = per_sample_value_and_grad(backend, emb32.cuda(), labels.cuda(), k=k, **opts)
    assert_values_close(lc.cpu(), rc, f"{backend} L_clip")
    assert_values_close(lb.cpu(), rb, f"{backend} L_boun")
    assert_grads_close(g.cpu(), rg, f"{backend} grad")
    pairs = ck.hard_negative_pairs(emb32.cuda(), labels.cuda(), k=k, backend=backend, **opts)
    ref = ck.hard_negative_pairs(emb32, labels, k=k, backend="cpu", **opts)
    # the chosen sets agree wherever the ranking is not within rounding of a tie
    assert (pairs.cpu() == ref).float().mean() > 0.95


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_low_precision_twice_reference_error(backend, dtype):
    emb, labels = make_batch(len(PATTERNS), 120, 64, list(PATTERNS), seed=9, dtype=dtype)
    rc, rb, rg = spec_eval(emb, labels)
    lc, lb, g = per_sample_value_and_grad(backend, emb.cuda(), labels.cuda())
    qc, qb, qg = per_sample_value_and_grad("reference", emb, labels)
    assert g.dtype == dtype
    for got, low, exact, name in ((lc.cpu(), qc, rc, "L_clip"), (lb.cpu(), qb, rb, "L_boun")):
        err = (got.double() - exact).abs()
        assert (err <= 2 * (low.double() - exact).abs() + 1e-3).all(), name


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_cuda_long_video_and_strided_input(backend):
    # T = 16384 with 5% GT clips, and a non-contiguous view of the embeddings
    T = 16384
    g = torch.Generator().manual_seed(4)
    base = torch.randn(2, T, 512, generator=g)
    emb = base[:, :, ::2]
    labels = torch.zeros(2, T, dtype=torch.long)
    labels[0, 1000:1400] = 1
    labels[0, 9000:9420] = 2
    labels[1, T - 800:] = 7
    labels[1, :50] = -1
    rc, rb, _ = per_sample_value_and_grad("cpu", emb, labels)
    lc, lb, grad = per_sample_value_and_grad(backend, emb.cuda(), labels.cuda())
    assert_values_close(lc.cpu(), rc, f"{backend} L_clip T=16384")
    assert_values_close(lb.cpu(), rb, f"{backend} L_boun T=16384")
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_cuda_nonfinite_sample_only(backend):
    emb, labels = make_batch(3, 50, 16, ["windows"], seed=5)
    emb[1, 10, 3] = float("nan")
    labels[1, 10] = 0
    lc, lb, _ = per_sample_value_and_grad(backend, emb.cuda(), labels.cuda())
    assert torch.isnan(lc[1]) and torch.isnan(lb[1])
    assert torch.isfinite(lc[[0, 2]]).all() and torch.isfinite(lb[[0, 2]]).all()


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_cuda_torch_compile_fullgraph(backend):
    emb, labels = make_batch(4, 75, 32, list(PATTERNS)[:4], seed=6)
    emb, labels = emb.cuda(), labels.cuda()

    def f(e):
        lc, lb = ck.clip_boundary_losses(e, labels, backend=backend, check_labels=False)
        return lc + lb

    eager = f(emb)
    compiled = torch.compile(f, fullgraph=True)(emb)
    assert torch.allclose(eager, compiled)


@pytest.mark.skipif("cuda" not in GPU_BACKENDS, reason="the CUDA C++ backend is not built")
def test_cuda_cpp_backend_uses_the_current_stream_and_device():
    """backend="cuda" launches on the caller's current stream (results bitwise equal to the
    default stream's, ready after that stream's work) and on the input's device."""
    emb, labels = make_batch(3, 120, 48, list(PATTERNS), seed=7)
    want = per_sample_value_and_grad("cuda", emb.cuda(), labels.cuda())
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        e, lab = emb.cuda(), labels.cuda()
        got = per_sample_value_and_grad("cuda", e, lab)
    side.synchronize()
    assert all(torch.equal(a, b) for a, b in zip(want, got))
    if torch.cuda.device_count() >= 2:
        dev = torch.device("cuda", 1)
        other = per_sample_value_and_grad("cuda", emb.to(dev), labels.to(dev))
        assert all(x.device == dev for x in other)
        assert all(torch.equal(a.cpu(), b.cpu()) for a, b in zip(want, other))


def test_gpu_ceilings_script_measures_the_card(tmp_path):
    """scripts/gpu_ceilings.py (the floor estimates' ceilings): plausible, positive rates."""
    import json
    import subprocess
    import sys

    script = REPO / "scripts" / "gpu_ceilings.py"
    out = tmp_path / "ceilings.json"
    subprocess.run([sys.executable, str(script), "--out", str(out)], check=True, timeout=300)
    c = json.loads(out.read_text())
    assert 0.1 < c["copy_tbps"] < 20 and 1 < c["fp32_tflops"] < 200, c


@pytest.mark.skipif("triton" not in GPU_BACKENDS, reason="the Triton backend is not available")
def test_triton_prep_lists_compiled_match_spec():
    """The compiled `_prep_kernel` (global-memory passes separated by barriers, which the
    interpreter cannot test) against docs/losses.md's lists: block edges, falling window ids (the
    ranking), random labels, every clip its own window."""
    from cases import block_edge_labels, check_prep, random_labels

    cases = [block_edge_labels(1024), block_edge_labels(1024).flip(1), block_edge_labels(),
             random_labels(6, 700, seed=1, sorted_ids=True),
             random_labels(6, 700, seed=2, sorted_ids=False),
             torch.arange(1100, 0, -1).unsqueeze(0).repeat(2, 1)]
    for labels in cases:
        inv = torch.rand(labels.shape, dtype=torch.float64)
        inv[0, 3] = float("nan")
        check_prep(labels.cuda(), inv.cuda())


@pytest.mark.skipif("triton" not in GPU_BACKENDS, reason="the Triton backend is not available")
def test_triton_chosen_pairs_in_rank_order_at_large_k():
    """The finalize kernel's rank order of the chosen pairs (k = 1024): similarities do not
    increase along the list, -1 only at its end."""
    emb, labels = make_batch(3, 300, 32, ["windows", "padding_middle", "sparse_ids"], seed=11)
    pairs = ck.hard_negative_pairs(emb.cuda(), labels.cuda(), k=1024, backend="triton").cpu()
    u = torch.nn.functional.normalize(emb.double(), dim=2)
    for b in range(3):
        p = pairs[b]
        n = int((p[:, 0] >= 0).sum())
        assert n > 0 and (p[n:] == -1).all()
        s = (u[b, p[:n, 0]] * u[b, p[:n, 1]]).sum(1)
        assert (s[1:] <= s[:-1] + 1e-6).all()


def test_cuda_global_mean_in_a_one_rank_nccl_group(tmp_path):
    """`process_group` on CUDA tensors with NCCL: every GPU backend's global mean in a group
    of one equals its per-call mean, values and gradients."""
    import torch.distributed as dist

    dist.init_process_group("nccl", init_method=f"file://{tmp_path}/store", rank=0,
                            world_size=1, device_id=torch.device("cuda", 0))
    try:
        emb, labels = make_batch(len(PATTERNS), 77, 32, list(PATTERNS), seed=3)
        for backend in GPU_BACKENDS:
            crits = [ck.ClipTBPLoss(backend=backend, aux_beta=0.1),
                     ck.ClipTBPLoss(backend=backend, aux_beta=0.1,
                                    process_group=dist.group.WORLD)]
            outs = []
            for crit in crits:
                e = emb.cuda().requires_grad_(True)
                lab = labels.cuda()
                pred = torch.sigmoid(e[..., :2]).sort(-1).values
                out = crit(e, lab, pred_spans=pred, target_spans=pred.detach().flip(-1),
                           span_mask=lab >= 1)
                out["loss"].backward()
                outs.append((out, e.grad))
            for k in ("loss", "loss_clip", "loss_boun", "loss_aux"):
                torch.testing.assert_close(outs[1][0][k], outs[0][0][k])
            torch.testing.assert_close(outs[1][1], outs[0][1])
    finally:
        dist.destroy_process_group()


def test_cuda_training_resumes_exactly_and_its_checkpoint_loads_on_the_cpu(tmp_path):
    """A CUDA run stopped after one epoch and resumed ends as the uninterrupted run (CPU and
    CUDA generators restored, dropout on); its checkpoint resumes on the CPU."""
    from cliptbp_kernels.pipeline.synthetic import generate
    from cliptbp_kernels.pipeline.train import TrainConfig, train

    root = tmp_path / "qvh"
    generate(root, variant="qvh", seed=5, train=32, val=8)
    base = dict(data=str(root), hidden=32, layers=1, heads=2, batch_size=8, epochs=2,
                eval_every=2, progress=False, dropout=0.1, device="cuda")
    full = train(TrainConfig(**base, out=str(tmp_path / "full")))
    train(TrainConfig(**base, out=str(tmp_path / "part")), stop_after=1)
    ck1 = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=False)
    assert "cuda" in ck1["rng"][0] and ck1["device"] == "cuda"
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "checkpoint.pt").write_bytes((tmp_path / "part" / "checkpoint.pt")
                                                     .read_bytes())
    resumed = train(TrainConfig(**base, out=str(tmp_path / "part")), resume=True)
    assert resumed["history"] == full["history"] and resumed["val"] == full["val"]
    on_cpu = train(TrainConfig(**dict(base, device="cpu"), out=str(tmp_path / "cpu")),
                   resume=True)
    assert [r["epoch"] for r in on_cpu["history"]] == [1, 2]


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16,
                                   torch.bfloat16])
def test_cuda_first_use_self_check_passes(backend, dtype):
    """The first-use self-check (docs/losses.md, section 13.3) on the GPU itself."""
    from cliptbp_kernels.backends import selfcheck

    res = selfcheck.compare(backend, torch.device("cuda"), dtype)
    assert res.ok, res.worst
