"""Auxiliary boundary loss L_b_aux (docs/losses.md, section 3)."""

import math

import pytest
import torch
import torch.nn.functional as F

from cliptbp_kernels.aux_loss import boundary_aux_loss


def sl1(x, beta):
    """Smooth L1 of one Python float, straight from docs/losses.md."""
    if beta == 0:
        return abs(x)
    return 0.5 * x * x / beta if abs(x) < beta else abs(x) - 0.5 * beta


def element_loss(p, t, weights=(1, 1, 1, 1), beta=1.0):
    (ps, pe), (ts, te) = p, t
    ws, we, wc, wl = weights
    return (
        ws * sl1(ps - ts, beta)
        + we * sl1(pe - te, beta)
        + wc * sl1((ps + pe) / 2 - (ts + te) / 2, beta)
        + wl * sl1((pe - ps) - (te - ts), beta)
    )


def test_hand_computed_values():
    pred = torch.tensor([[0.0, 2.0]], dtype=torch.float64)
    target = torch.tensor([[0.5, 2.0]], dtype=torch.float64)
    # ds = -0.5, de = 0, dc = -0.25, dl = 0.5
    expected = 0.5 * 0.25 + 0.0 + 0.5 * 0.0625 + 0.5 * 0.25
    assert boundary_aux_loss(pred, target).item() == pytest.approx(expected, rel=1e-14)
    # beta = 0: plain |x|
    assert boundary_aux_loss(pred, target, beta=0).item() == pytest.approx(1.25, rel=1e-14)
    # beyond beta: |x| - beta / 2
    pred = torch.tensor([[3.0, 10.0]], dtype=torch.float64)
    target = torch.tensor([[0.0, 10.0]], dtype=torch.float64)
    # ds = 3 -> 2.5, de = 0, dc = 1.5 -> 1.0, dl = -3 -> 2.5
    assert boundary_aux_loss(pred, target).item() == pytest.approx(6.0, rel=1e-14)
    assert boundary_aux_loss(pred, target, weights=(1, 0, 0, 0)).item() == pytest.approx(2.5)
    assert boundary_aux_loss(pred, target, weights=(0, 0, 2, 0)).item() == pytest.approx(2.0)
    assert boundary_aux_loss(pred, target, weights=(0, 0, 0, 1)).item() == pytest.approx(2.5)
    # beta = 4: everything quadratic
    expected = (0.5 * 9 / 4) + 0 + (0.5 * 2.25 / 4) + (0.5 * 9 / 4)
    assert boundary_aux_loss(pred, target, beta=4.0).item() == pytest.approx(expected)


def test_matches_torch_smooth_l1_per_term():
    gen = torch.Generator().manual_seed(0)
    pred = torch.randn(5, 7, 2, dtype=torch.float64, generator=gen) * 2
    target = torch.randn(5, 7, 2, dtype=torch.float64, generator=gen) * 2
    for beta in (0.3, 1.0, 2.5):
        terms = [
            F.smooth_l1_loss(pred[..., 0], target[..., 0], reduction="none", beta=beta),
            F.smooth_l1_loss(pred[..., 1], target[..., 1], reduction="none", beta=beta),
            F.smooth_l1_loss(pred.mean(-1), target.mean(-1), reduction="none", beta=beta),
            F.smooth_l1_loss(
                pred[..., 1] - pred[..., 0], target[..., 1] - target[..., 0],
                reduction="none", beta=beta,
            ),
        ]
        w = (0.5, 1.5, 2.0, 0.25)
        expected = sum(wi * t for wi, t in zip(w, terms))
        got = boundary_aux_loss(pred, target, weights=w, beta=beta, reduction="none")
        assert got.shape == (5, 7)
        assert torch.allclose(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("mask_kind", [None, "bool", "float"])
def test_reductions_and_masks(reduction, mask_kind):
    gen = torch.Generator().manual_seed(1)
    pred = torch.randn(4, 3, 2, dtype=torch.float64, generator=gen)
    target = torch.randn(4, 3, 2, dtype=torch.float64, generator=gen)
    if mask_kind is None:
        mask, weights = None, [[1.0] * 3] * 4
    elif mask_kind == "bool":
        mask = torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 1], [0, 1, 0]], dtype=torch.bool)
        weights = mask.double().tolist()
    else:
        mask = torch.tensor([[0.5, 0, 2], [0, 0, 0], [1, 3, 1], [0, 0.25, 0]], dtype=torch.float64)
        weights = mask.tolist()
    out = boundary_aux_loss(pred, target, mask, beta=0.7, reduction=reduction)
    per = [
        [weights[a][b] * element_loss(pred[a, b].tolist(), target[a, b].tolist(), beta=0.7)
         for b in range(3)]
        for a in range(4)
    ]
    if reduction == "none":
        assert out.shape == (4, 3)
        assert torch.allclose(out, torch.tensor(per, dtype=torch.float64), rtol=1e-12)
    else:
        total = math.fsum(v for row in per for v in row)
        if reduction == "mean":
            total /= math.fsum(v for row in weights for v in row)
        assert out.shape == ()
        assert out.item() == pytest.approx(total, rel=1e-12)


def test_mean_with_empty_mask_is_zero_with_zero_gradient():
    pred = torch.randn(3, 2, requires_grad=True)
    target = torch.randn(3, 2)
    for mask in (torch.zeros(3, dtype=torch.bool), torch.zeros(3)):
        out = boundary_aux_loss(pred, target, mask)
        assert out.item() == 0.0
        (grad,) = torch.autograd.grad(out, pred)
        assert torch.equal(grad, torch.zeros_like(pred))
    empty = torch.zeros(0, 2, requires_grad=True)
    out = boundary_aux_loss(empty, torch.zeros(0, 2))
    assert out.item() == 0.0
    out.backward()
    assert empty.grad.shape == (0, 2)


def test_masked_out_garbage_has_no_influence():
    pred = torch.tensor([[1.0, 2.0], [float("nan"), float("inf")]], requires_grad=True)
    target = torch.tensor([[1.5, 2.0], [0.0, 1.0]])
    mask = torch.tensor([True, False])
    out = boundary_aux_loss(pred, target, mask)
    assert out.item() == pytest.approx(element_loss([1.0, 2.0], [1.5, 2.0]))
    out.backward()
    assert torch.isfinite(pred.grad).all() and (pred.grad[1] == 0).all()


def test_beta_zero_gradient_at_zero():
    pred = torch.tensor([[1.0, 3.0], [2.0, 5.0]], dtype=torch.float64, requires_grad=True)
    target = pred.detach().clone()
    out = boundary_aux_loss(pred, target, beta=0.0, reduction="sum")
    assert out.item() == 0.0
    out.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))
    # away from zero the gradient is the sign: ds = +1 only -> d/dps of |ds| + |dc| - |dl|
    pred.grad = None
    target2 = target.clone()
    target2[0, 0] -= 1.0  # ds = 1, de = 0, dc = 0.5, dl = -1
    boundary_aux_loss(pred, target2, beta=0.0, reduction="sum").backward()
    # d/dps: sign(ds) + 0.5 sign(dc) - sign(dl) = 1 + 0.5 + 1; d/dpe: 0 + 0.5 + sign(dl) = -0.5
    assert pred.grad[0].tolist() == [2.5, -0.5]
    assert pred.grad[1].tolist() == [0.0, 0.0]


def test_gradcheck_and_gradient_to_pred_only():
    gen = torch.Generator().manual_seed(2)
    pred = torch.randn(6, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    target = torch.randn(6, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    mask = torch.tensor([1.0, 0.5, 0.0, 2.0, 1.0, 1.0], dtype=torch.float64)
    for beta in (0.0, 0.5, 1.0):
        for reduction in ("none", "sum", "mean"):
            assert torch.autograd.gradcheck(
                lambda p, beta=beta, reduction=reduction: boundary_aux_loss(
                    p, target, mask, weights=(1.0, 2.0, 0.5, 1.5), beta=beta, reduction=reduction
                ),
                (pred,),
            )
    out = boundary_aux_loss(pred, target, mask)
    out.backward()
    assert target.grad is None and pred.grad is not None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16bit_pred(dtype):
    pred = torch.tensor([[0.0, 2.0], [1.0, 4.0]]).to(dtype).requires_grad_(True)
    target = torch.tensor([[0.5, 2.0], [1.0, 3.0]]).to(dtype)
    out = boundary_aux_loss(pred, target, reduction="none")
    assert out.dtype == torch.float32
    assert out[0].item() == pytest.approx(element_loss([0.0, 2.0], [0.5, 2.0]))
    out.sum().backward()
    assert pred.grad.dtype == dtype


def test_extra_leading_dims_and_scalar_element():
    pred = torch.randn(2, 3, 4, 2)
    target = torch.randn(2, 3, 4, 2)
    assert boundary_aux_loss(pred, target, reduction="none").shape == (2, 3, 4)
    one = boundary_aux_loss(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 3.0]), reduction="none")
    assert one.shape == () and one.item() == pytest.approx(element_loss([1, 2], [1, 3]))


@pytest.mark.parametrize(
    "kwargs,exc,name",
    [
        (dict(pred=torch.zeros(3, 2, dtype=torch.long)), TypeError, "pred"),
        (dict(target=torch.zeros(3, 2, dtype=torch.int32)), TypeError, "target"),
        (dict(pred=[[0.0, 1.0]]), TypeError, "pred"),
        (dict(target=torch.zeros(4, 2)), ValueError, "target"),
        (dict(pred=torch.zeros(3, 3), target=torch.zeros(3, 3)), ValueError, "pred"),
        (dict(pred=torch.zeros(()), target=torch.zeros(())), ValueError, "pred"),
        (dict(mask=torch.ones(4)), ValueError, "mask"),
        (dict(mask=torch.ones(3, 1)), ValueError, "mask"),
        (dict(mask=torch.tensor([1.0, -0.5, 1.0])), ValueError, "mask"),
        (dict(mask=torch.tensor([1.0, float("nan"), 1.0])), ValueError, "mask"),
        (dict(mask=[1, 1, 1]), TypeError, "mask"),
        (dict(mask=torch.ones(3, dtype=torch.complex64)), TypeError, "mask"),
        (dict(weights=(1.0, 1.0, 1.0)), ValueError, "weights"),
        (dict(weights=(1.0, -1.0, 1.0, 1.0)), ValueError, "weights"),
        (dict(weights=(1.0, float("inf"), 1.0, 1.0)), ValueError, "weights"),
        (dict(weights=(1.0, "a", 1.0, 1.0)), TypeError, "weights"),
        (dict(weights=1.0), TypeError, "weights"),
        (dict(beta=-0.1), ValueError, "beta"),
        (dict(beta=float("nan")), ValueError, "beta"),
        (dict(beta="1"), TypeError, "beta"),
        (dict(reduction="avg"), ValueError, "reduction"),
        (dict(reduction=None), ValueError, "reduction"),
        (dict(target=torch.zeros(3, 2, device="meta")), ValueError, "target"),
        (dict(mask=torch.ones(3, device="meta")), ValueError, "mask"),
    ],
)
def test_bad_inputs(kwargs, exc, name):
    args = dict(pred=torch.zeros(3, 2), target=torch.zeros(3, 2), mask=None)
    opts = {}
    for key, value in kwargs.items():
        (args if key in args else opts)[key] = value
    with pytest.raises(exc, match=name):
        boundary_aux_loss(args["pred"], args["target"], args["mask"], **opts)


def test_accepted_option_forms():
    pred, target = torch.randn(3, 2), torch.randn(3, 2)
    a = boundary_aux_loss(pred, target, weights=[1, 2, 3, 4], beta=1)
    b = boundary_aux_loss(pred, target, weights=torch.tensor([1.0, 2.0, 3.0, 4.0]), beta=1.0)
    assert torch.equal(a, b)
