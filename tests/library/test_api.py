"""Public API: bad input gives clear errors before any kernel runs; backends; the criterion."""

from __future__ import annotations

import warnings

import pytest
import torch

import cliptbp_kernels as ck
from cases import make_batch
from cliptbp_kernels import backends as _backends
from cliptbp_kernels.backends import cuda as _cuda_backend
from cliptbp_kernels.backends import triton as _triton_backend

BACKENDS = ck.available_backends("cpu")
FUNCS = {
    "clip_pair_loss": ck.clip_pair_loss,
    "boundary_margin_loss": ck.boundary_margin_loss,
    "clip_boundary_losses": ck.clip_boundary_losses,
    "hard_negative_pairs": ck.hard_negative_pairs,
}


def good():
    emb, labels = make_batch(2, 10, 4, ["windows"], seed=0)
    return emb, labels


@pytest.mark.parametrize("fn", list(FUNCS.values()), ids=list(FUNCS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_tensors(fn, backend):
    emb, labels = good()
    cases = [
        ((emb[0], labels), ValueError, "emb must have shape"),
        ((emb, labels[0]), ValueError, "labels must have shape"),
        ((emb, labels[:, :5]), ValueError, "labels must have shape"),
        ((emb, labels.float()), TypeError, "labels must be a signed integer"),
        ((emb, labels.to(torch.uint8)), TypeError, "labels must be a signed integer"),
        ((emb, labels.bool()), TypeError, "labels must be a signed integer"),
        ((emb.to(torch.int32), labels), TypeError, "emb must be float16"),
        ((emb.numpy(), labels), TypeError, "emb must be a torch.Tensor"),
        ((emb, labels.tolist()), TypeError, "labels must be a torch.Tensor"),
        ((emb[:, :, :0], labels), ValueError, "D >= 1"),
        ((emb, torch.where(labels == 0, -2, labels)), ValueError, "found -2"),
    ]
    for args, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            fn(*args, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_options(backend):
    emb, labels = good()
    bad = [
        (ck.clip_pair_loss, dict(k=-1), ValueError, "k must be >= 0"),
        (ck.clip_pair_loss, dict(k=2.0), TypeError, "k must be an int"),
        (ck.clip_pair_loss, dict(k=True), TypeError, "k must be an int"),
        (ck.clip_pair_loss, dict(tau=0.0), ValueError, "tau must be > 0"),
        (ck.clip_pair_loss, dict(tau=-1), ValueError, "tau must be > 0"),
        (ck.clip_pair_loss, dict(tau=float("nan")), ValueError, "tau must be finite"),
        (ck.clip_pair_loss, dict(positives="all"), ValueError, "positives must be one of"),
        (ck.clip_pair_loss, dict(negatives="any"), ValueError, "negatives must be one of"),
        (ck.clip_pair_loss, dict(reduction="avg"), ValueError, "reduction must be one of"),
        (ck.clip_pair_loss, dict(backend="gpu"), ValueError, "backend must be one of"),
        (ck.boundary_margin_loss, dict(radius=0), ValueError, "radius must be >= 1"),
        (ck.boundary_margin_loss, dict(radius=1.5), TypeError, "radius must be an int"),
        (ck.boundary_margin_loss, dict(margin_max="0.3"), TypeError, "margin_max must be a real"),
        (ck.boundary_margin_loss, dict(margin_base=float("inf")), ValueError, "margin_base"),
        (ck.clip_boundary_losses, dict(k=-3), ValueError, "k must be >= 0"),
        (ck.clip_boundary_losses, dict(radius=-1), ValueError, "radius must be >= 1"),
        (ck.hard_negative_pairs, dict(k=-1), ValueError, "k must be >= 0"),
    ]
    for fn, kw, exc, msg in bad:
        kw.setdefault("backend", backend)
        with pytest.raises(exc, match=msg):
            fn(emb, labels, **kw)


def test_unavailable_backends_raise_with_reason():
    emb, labels = good()
    for name in ("triton", "cuda"):
        if name in ck.available_backends():
            continue
        with pytest.raises(ValueError, match=f"backend='{name}' cannot run here"):
            ck.clip_pair_loss(emb, labels, backend=name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cpu_backend_refuses_cuda_tensors():
    emb, labels = good()
    with pytest.raises(ValueError, match="CPU tensors only"):
        ck.clip_pair_loss(emb.cuda(), labels.cuda(), backend="cpu")


def test_devices_must_match():
    emb, labels = good()
    meta = labels.to("meta")
    with pytest.raises(ValueError, match="same device"):
        ck.clip_pair_loss(emb, meta)


def test_auto_falls_back_to_reference_once(monkeypatch):
    monkeypatch.setattr(_backends, "AUTO_ORDER", {"cpu": ()})
    monkeypatch.setattr(_backends, "_warned_fallback", set())
    emb, labels = good()
    with pytest.warns(RuntimeWarning, match="falling back to the PyTorch reference"):
        a = ck.clip_pair_loss(emb, labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b = ck.clip_pair_loss(emb, labels)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, ck.clip_pair_loss(emb, labels, backend="reference"))


def test_check_labels_false_skips_the_check():
    emb, labels = good()
    lab = labels.clone()
    lab[0, 0] = -5
    with pytest.raises(ValueError):
        ck.clip_pair_loss(emb, lab)
    ck.clip_pair_loss(emb, lab, check_labels=False)  # counts as padding, no error


def test_available_backends():
    names = ck.available_backends()
    assert names[0] == "reference"
    assert set(names) <= {"reference", "cpu", "triton", "cuda"}
    on_cpu = ["reference", "cpu"]
    if _triton_backend.interpreting():
        on_cpu.append("triton")
    if _cuda_backend.emulating() and _cuda_backend._emu is not None:
        on_cpu.append("cuda")
    assert ck.available_backends("cpu") == [n for n in names if n in on_cpu]


@pytest.mark.skipif(not _triton_backend.available(), reason="triton is not installed")
def test_triton_backend_on_cpu_needs_the_interpreter(monkeypatch):
    emb, labels = good()
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "triton" not in ck.available_backends("cpu")
    with pytest.raises(ValueError, match="backend='triton' cannot run here: .*TRITON_INTERPRET"):
        ck.clip_pair_loss(emb, labels, backend="triton")
    # on CUDA tensors "auto" takes the Triton kernels (no GPU is needed to decide that)
    assert _backends.resolve("auto", torch.device("cuda")) == "triton"


@pytest.mark.skipif("triton" not in ck.available_backends("cpu"), reason="needs the interpreter")
def test_triton_limits_raise_before_any_kernel():
    emb = torch.randn(1, 8, 4)
    labels = torch.zeros(1, 8, dtype=torch.long)
    labels[0, :2] = 1
    from cliptbp_kernels.backends.triton import MAX_K, MAX_T, check_limits
    with pytest.raises(ValueError, match=f"k up to {MAX_K}"):
        check_limits(2000, MAX_K + 1)
    check_limits(2000, MAX_K)  # the limit itself is served
    check_limits(40, 5000)  # k above the number of pairs (780) is fine
    with pytest.raises(ValueError, match=f"T up to {MAX_T}"):
        check_limits(MAX_T + 1, 20)
    big = torch.zeros(1, MAX_T + 1, 1)
    big_labels = torch.full((1, MAX_T + 1), -1, dtype=torch.long)
    with pytest.raises(ValueError, match=f"T up to {MAX_T}"):
        ck.clip_pair_loss(big, big_labels, backend="triton")
    with pytest.raises(ValueError, match=f"k up to {MAX_K}"):
        ck.clip_pair_loss(torch.randn(1, 60, 4), torch.ones(1, 60, dtype=torch.long),
                          k=MAX_K + 1, backend="triton")
    assert torch.isfinite(ck.clip_pair_loss(emb, labels, backend="triton"))


# --- ClipTBPLoss ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_criterion_total_is_eq8(backend):
    emb, labels = make_batch(3, 20, 8, ["windows", "padding_middle"], seed=3)
    emb.requires_grad_(True)
    g = torch.Generator().manual_seed(1)
    pred = torch.rand(3, 20, 2, generator=g).sort(-1).values.requires_grad_(True)
    target = torch.rand(3, 20, 2, generator=g).sort(-1).values
    mask = labels >= 1
    basic = {"loss_span": torch.tensor(0.7), "loss_giou": torch.tensor(0.2)}
    crit = ck.ClipTBPLoss(backend=backend)
    out = crit(emb, labels, basic=basic, pred_spans=pred, target_spans=target, span_mask=mask)
    lc, lb = ck.clip_boundary_losses(emb, labels, backend=backend)
    aux = ck.boundary_aux_loss(pred, target, mask)
    torch.testing.assert_close(out["loss_clip"], lc)
    torch.testing.assert_close(out["loss_boun"], lb)
    torch.testing.assert_close(out["loss_aux"], aux)
    torch.testing.assert_close(out["loss_basic"], torch.tensor(0.9))
    assert out["loss_span"] is basic["loss_span"]
    expect = 1.0 * 0.9 + 3.0 * lc + 3.0 * lb + 2.0 * aux
    torch.testing.assert_close(out["loss"], expect)
    out["loss"].backward()
    assert emb.grad is not None and pred.grad is not None


def test_criterion_weights_and_tensor_basic():
    emb, labels = make_batch(2, 15, 8, ["windows"], seed=4)
    crit = ck.ClipTBPLoss(w_basic=0.5, w_clip=1.0, w_boun=0.0, k=3, tau=0.2)
    out = crit(emb, labels, basic=torch.tensor([2.0]))
    lc = ck.clip_pair_loss(emb, labels, k=3, tau=0.2)
    torch.testing.assert_close(out["loss"], 0.5 * 2.0 + lc)
    assert "loss_aux" not in out and "loss_boun" not in out  # weight 0: not computed
    assert "k=3" in repr(crit)
    # a NaN in a term whose weight is 0 does not reach the total
    nan_emb = emb.clone()
    nan_emb[0, 0, 0] = float("nan")
    only_boun = ck.ClipTBPLoss(w_clip=0.0, w_aux=0.0)
    out = only_boun(nan_emb[1:], labels[1:])
    assert set(out) == {"loss", "loss_boun"}
    torch.testing.assert_close(out["loss"], 3.0 * ck.boundary_margin_loss(emb[1:], labels[1:]))
    pred = torch.rand(2, 15, 2)
    out = only_boun(emb, labels, pred_spans=pred, target_spans=pred)
    assert "loss_aux" not in out


def test_criterion_sum_reduction():
    emb, labels = make_batch(3, 15, 8, ["windows", "no_gt", "windows"], seed=6)
    crit = ck.ClipTBPLoss(reduction="sum", w_aux=1.0)
    pred = torch.rand(3, 15, 2)
    target = torch.rand(3, 15, 2)
    out = crit(emb, labels, pred_spans=pred, target_spans=target)
    lc, lb = ck.clip_boundary_losses(emb, labels, reduction="sum")
    torch.testing.assert_close(out["loss_clip"], lc)
    torch.testing.assert_close(out["loss_boun"], lb)
    torch.testing.assert_close(out["loss_aux"],
                               ck.boundary_aux_loss(pred, target, reduction="sum"))


def test_criterion_bad_input():
    with pytest.raises(ValueError, match="k must be >= 0"):
        ck.ClipTBPLoss(k=-1)
    with pytest.raises(TypeError, match="w_clip must be a real"):
        ck.ClipTBPLoss(w_clip="3")
    emb, labels = good()
    crit = ck.ClipTBPLoss()
    with pytest.raises(ValueError, match="given together"):
        crit(emb, labels, pred_spans=torch.rand(2, 10, 2))
    with pytest.raises(ValueError, match="scalar loss"):
        crit(emb, labels, basic=torch.ones(3))
    with pytest.raises(TypeError, match="basic must be a tensor"):
        crit(emb, labels, basic=1.0)
    with pytest.raises(TypeError, match=r"basic\['x'\] must be a tensor or a number"):
        crit(emb, labels, basic={"x": "1.0"})
    out = crit(emb, labels, basic={"x": 0.0, "y": torch.tensor(2.0)})  # literal numbers too
    torch.testing.assert_close(out["loss_basic"], torch.tensor(2.0))
    with pytest.raises(ValueError, match="must not have the key 'loss_clip'"):
        crit(emb, labels, basic={"loss_clip": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="reduction must be one of"):
        ck.ClipTBPLoss(reduction="none")


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast_16bit_in_float32_out(backend):
    emb, labels = make_batch(2, 16, 8, ["windows"], seed=5)
    lin = torch.nn.Linear(8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = lin(emb)
        assert h.dtype == torch.bfloat16
        lc, lb = ck.clip_boundary_losses(h, labels, backend=backend)
    assert lc.dtype == torch.float32 and lb.dtype == torch.float32
    (lc + lb).backward()
    assert lin.weight.grad is not None and torch.isfinite(lin.weight.grad).all()
