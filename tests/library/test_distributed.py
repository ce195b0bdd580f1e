"""Global means over a process group (docs/losses.md, section 7), with two gloo processes
spawned by the tests: every rank returns the mean over the union of the ranks' samples, and
after backward() under DDP the gradients are those of one process on the union batch."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from hypothesis import given
from hypothesis import strategies as st

import cliptbp_kernels as ck
from cliptbp_kernels import ClipTBPLoss
from cliptbp_kernels.distributed import loss_counts

dw = pytest.importorskip("dist_workers")

BACKENDS = [b for b in ("reference", "cpu", "triton", "cuda")
            if b in ck.available_backends(torch.device("cpu"))]
TOL = dict(rtol=1e-9, atol=1e-12)  # float64: SPEC's float64 tolerance is far looser


def _single(backend):
    """Values and parameter gradients of one process on the union batch."""
    model, x, labels, spans, mask = dw.problem()
    crit = ClipTBPLoss(w_basic=0.0, k=4, aux_beta=0.1, backend=backend)
    emb, pred = dw.forward(model, x)
    out = crit(emb, labels, pred_spans=pred, target_spans=spans, span_mask=mask)
    out["loss"].backward()
    return ({k: v.detach() for k, v in out.items()},
            {n: q.grad.clone() for n, q in model.named_parameters()})


def _single_float32(backend):
    """(model with its gradients, loss) of one process on the union batch, in float32."""
    model, x, labels, spans, mask = dw.problem(torch.float32)
    crit = ClipTBPLoss(w_basic=0.0, k=4, aux_beta=0.1, backend=backend)
    emb, pred = dw.forward(model, x)
    loss = crit(emb, labels, pred_spans=pred, target_spans=spans, span_mask=mask)["loss"]
    loss.backward()
    return model, loss


def _close(a, b, **tol):
    torch.testing.assert_close(a, b, **(tol or TOL))


def test_the_problem_has_a_rank_without_positive_pairs():
    _, _, labels, _, _ = dw.problem()
    share = labels[dw.SHARES[2][1]]
    assert [int(c) for c in loss_counts(share)] == [0, 0]
    assert [int(c) for c in loss_counts(labels)] == [4, 4]


@pytest.mark.parametrize("ddp_kw", [{}, {"find_unused_parameters": True},
                                    {"static_graph": True}],
                         ids=["plain", "find_unused", "static_graph"])
def test_ddp_gradients_equal_one_process_on_the_union(tmp_path, ddp_kw):
    backend = "cpu" if "cpu" in BACKENDS else "reference"
    values, grads = _single(backend)
    ranks = dw.spawn(dw.loss_terms, 2, tmp_path, backend, ddp_kw)
    for r in ranks:
        for k in ("loss", "loss_clip", "loss_boun", "loss_aux"):
            _close(r["values"][k], values[k].to(r["values"][k].dtype))
        for n, g in grads.items():
            _close(r["grads"][n], g)


def test_gradient_accumulation_with_no_sync(tmp_path):
    values, grads = _single("reference")
    ranks = dw.spawn(dw.loss_terms, 2, tmp_path, "reference", {}, True)
    _, _, labels, _, mask = dw.problem()
    for r in ranks:
        assert r["counts"].tolist() == [4.0, 4.0, float(mask.sum())]
        for k in ("loss", "loss_clip", "loss_boun", "loss_aux"):
            _close(r["values"][k], values[k])
        for n, g in grads.items():
            _close(r["grads"][n], g)


def test_functional_losses_every_backend(tmp_path):
    """Every backend's global mean and its per-rank gradient (world_size x the union's)."""
    model, x, labels, spans, mask = dw.problem()
    for backend in BACKENDS:
        emb, pred = dw.forward(model, x)
        emb = emb.detach().requires_grad_(True)
        pred = pred.detach().requires_grad_(True)
        lc = ck.clip_pair_loss(emb, labels, k=4, backend=backend)
        lb = ck.boundary_margin_loss(emb, labels, backend=backend)
        la = ck.boundary_aux_loss(pred, spans, mask, beta=0.1)
        (lc + lb + la).backward()
        ranks = dw.spawn(dw.functional, 2, tmp_path / backend, backend)
        for rank, r in enumerate(ranks):
            idx = dw.SHARES[2][rank]
            for got, want in zip(r["values"], [lc, lb, lc, lb, la]):
                _close(got, want.detach())
            _close(r["emb_grad"], 2 * emb.grad[idx])
            _close(r["pred_grad"], 2 * pred.grad[idx])


def test_compiled_criterion_with_process_group(tmp_path):
    """`torch.compile(fullgraph=True)` of a step whose criterion all-reduces; the summed
    per-rank gradients (what DDP averages) are twice those of one process."""
    backend = "cpu" if "cpu" in BACKENDS else "reference"
    model, loss = _single_float32(backend)
    ranks = dw.spawn(dw.compiled, 2, tmp_path, backend)
    tol = dict(rtol=1e-5, atol=1e-6)
    for r in ranks:
        _close(r["loss"], loss.detach(), **tol)
    for n, q in model.named_parameters():
        _close((ranks[0]["grads"][n] + ranks[1]["grads"][n]) / 2, q.grad, **tol)


# ---- no process needed ----

@given(st.lists(st.lists(st.integers(-1, 3), min_size=1, max_size=12), min_size=1,
                max_size=5).filter(lambda rows: len({len(r) for r in rows}) == 1),
       st.sampled_from(["any", "same"]), st.integers(1, 3))
def test_loss_counts_match_the_losses(rows, positives, radius):
    """The label-only counts equal the number of samples the reference gives a loss."""
    labels = torch.tensor(rows)
    emb = torch.randn(*labels.shape, 4, dtype=torch.float64)
    from cliptbp_kernels.api import per_sample_terms

    parts = per_sample_terms(
        emb, labels, backend="reference", check_labels=True,
        clip_options=dict(k=3, tau=0.1, positives=positives, negatives="cross"),
        boundary_options=dict(radius=radius, margin_max=0.3, margin_base=0.1,
                              margin_scale=0.1))
    n_clip, n_boun = loss_counts(labels, positives=positives, radius=radius)
    assert int(n_clip) == int(parts["loss_clip"][1].sum())
    assert int(n_boun) == int(parts["loss_boun"][1].sum())


def test_process_group_errors():
    emb = torch.randn(2, 4, 3)
    labels = torch.tensor([[0, 1, 1, 0], [1, 1, 0, 0]])
    assert not dist.is_initialized()
    with pytest.raises(ValueError, match="not initialised"):
        ck.clip_pair_loss(emb, labels, process_group=object())
    with pytest.raises(ValueError, match="counts needs process_group"):
        ClipTBPLoss()(emb, labels, counts=torch.zeros(3))
    with pytest.raises(ValueError, match="global_counts needs"):
        ClipTBPLoss().global_counts(labels)
    with pytest.raises(TypeError, match="labels must be a torch.Tensor"):
        loss_counts([[0, 1]])
    with pytest.raises(ValueError, match="found -2"):
        loss_counts(torch.tensor([[0, 1, 1, -2]]))


def test_process_group_type_and_reduction_errors(tmp_path):
    """With an initialised group: a wrong type and a reduction other than "mean" are errors."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0,
                            world_size=1)
    try:
        emb = torch.randn(2, 4, 3)
        labels = torch.tensor([[0, 1, 1, 0], [1, 1, 0, 0]])
        with pytest.raises(TypeError, match="ProcessGroup"):
            ck.clip_pair_loss(emb, labels, process_group="world")
        with pytest.raises(ValueError, match="reduction='mean'"):
            ck.boundary_margin_loss(emb, labels, reduction="sum",
                                    process_group=dist.group.WORLD)
        with pytest.raises(ValueError, match="reduction='mean'"):
            ClipTBPLoss(reduction="sum", process_group=dist.group.WORLD)
        crit = ClipTBPLoss(process_group=dist.group.WORLD)
        for masks in (None, [labels >= 1, None]):  # the aux count needs every span mask
            with pytest.raises(ValueError, match="span_mask is required"):
                crit.global_counts([labels, labels], masks)
        assert crit.global_counts([labels], [labels >= 1]).tolist() == [2.0, 2.0, 4.0]
        # one rank: the global mean is the per-call mean
        a = ck.clip_pair_loss(emb, labels, process_group=dist.group.WORLD)
        torch.testing.assert_close(a, ck.clip_pair_loss(emb, labels))
    finally:
        dist.destroy_process_group()


def test_compiled_ddp_model(tmp_path):
    """`torch.compile(DDP(model))` with the global-mean criterion: DDP's averaged gradients
    equal one process's on the union batch."""
    backend = "cpu" if "cpu" in BACKENDS else "reference"
    model, loss = _single_float32(backend)
    tol = dict(rtol=1e-5, atol=1e-6)
    for r in dw.spawn(dw.compiled_ddp, 2, tmp_path, backend):
        _close(r["loss"], loss.detach(), **tol)
        for n, q in model.named_parameters():
            _close(r["grads"][n], q.grad, **tol)


def test_spawn_returns_each_ranks_result(tmp_path):
    assert dw.spawn(dw.fail_on, 2, tmp_path, -1, "raise") == [0, 1]


def test_spawn_names_a_rank_that_raised(tmp_path):
    with pytest.raises(AssertionError) as e:
        dw.spawn(dw.fail_on, 2, tmp_path, 1, "raise")
    text = str(e.value)
    assert "ValueError: rank 1 failed on purpose" in text  # rank1.err: the traceback
    assert "step: exit 1" in text  # rank1.fault: it got through destroy_process_group


def test_spawn_names_where_a_rank_crashed(tmp_path):
    """A rank that dies on a signal leaves the step it was in and its Python stack."""
    with pytest.raises(AssertionError) as e:
        dw.spawn(dw.fail_on, 2, tmp_path, 0, "abort")
    text = str(e.value)
    assert "---- rank0.fault\nstep: init_process_group\nstep: fail_on\n" in text
    assert "Fatal Python error: Aborted" in text
    assert "in fail_on" in text  # the stack of the thread that aborted
