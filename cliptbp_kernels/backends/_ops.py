"""Registration of the fused backends as `torch.library` custom ops.

Every compiled backend provides the same pair of kernels:

* forward: per-sample L_clip and L_boun, whether each sample has a loss, and what the backward
  needs (the log-sum-exp of the positives, the sum over the chosen negatives, the chosen pair
  indices);
* backward: d(loss)/d(emb) from the per-sample upstream gradients, touching only the positive
  pairs, the chosen negatives and the boundary sets.

`register_fused_backend` wraps such a pair into the custom ops `cliptbp::<name>_fwd` and
`cliptbp::<name>_bwd` with fake (meta) implementations, so that `torch.compile(fullgraph=True)`
traces through them, and with autograd formulas. Double backward raises a clear error.

In eager mode the same launchers are also reachable through a plain `torch.autograd.Function`
(`FusedOps.call` picks it): a custom op call costs about 100 us of Python dispatch on the host
each way, which at small shapes (B=32, T=75) is more than the GPU kernels themselves take. The
two paths run the same launchers with the same arguments, so their results are bitwise equal;
the custom ops serve `torch.compile`, fake tensors, dispatch modes and tensor subclasses.
"""

from typing import Callable, NamedTuple, Tuple

import torch
from torch import Tensor

POSITIVE_CODES = {"any": 0, "same": 1}
NEGATIVE_CODES = {"cross": 0, "all": 1}


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 inputs, float32 for the others (SPEC.md "Inputs")."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def kcap_for(k: int, T: int) -> int:
    """Length of the stored top-k list: k, or the number of unordered pairs if smaller."""
    return min(k, T * (T - 1) // 2) if T > 1 else 0


def check_limits(backend: str, T: int, k: int, want_clip: bool, max_t: int, max_k: int) -> None:
    """ValueError when an input exceeds what a backend with limits (T <= max_t,
    min(k, T (T - 1) / 2) <= max_k) serves."""
    if T > max_t:
        raise ValueError(f"backend={backend!r} supports T up to {max_t} clips (pair indices "
                         f"of 32 bits), got T={T}; use backend='cpu' or 'reference'")
    kcap = kcap_for(k, T) if want_clip else 0
    if kcap > max_k:
        raise ValueError(f"backend={backend!r} supports k up to {max_k} (more precisely "
                         f"min(k, T*(T-1)/2) <= {max_k}), got k={k} with T={T}; use "
                         "backend='cpu' or 'reference'")


def forward_outputs(B: int, T: int, kcap: int, device, empty: bool):
    """Uninitialised forward outputs of a fused backend (see `register_fused_backend`); when
    `empty` (an input without elements), filled with what such an input gives."""
    f64 = dict(dtype=torch.float64, device=device)
    out = (
        torch.empty(B, **f64),
        torch.empty(B, dtype=torch.uint8, device=device),
        torch.empty(B, **f64),
        torch.empty(B, dtype=torch.uint8, device=device),
        torch.empty(B, **f64),
        torch.empty(B, **f64),
        torch.empty((B, kcap), dtype=torch.int64, device=device),
        torch.empty((B, T), **f64),
    )
    if empty:
        for t in out[:6]:
            t.zero_()
        out[6].fill_(-1)
        out[7].zero_()
    return out


def backward_buffers(emb: Tensor, saved: Tuple[Tensor, ...]):
    """(gradient buffer in the compute dtype, the saved forward tensors as contiguous uint8 /
    float64 / int64 buffers) for a backward launcher. `saved` is (has_clip, has_boun, lse,
    neg_sum, pairs, inv_norm); the caller keeps the returned tensors alive while their
    pointers are in use."""
    grad = torch.empty(emb.shape, dtype=compute_dtype(emb.dtype), device=emb.device)
    has_clip, has_boun, lse, neg_sum, pairs, inv_norm = saved
    return grad, (_as_uint8(has_clip), _as_uint8(has_boun), lse.contiguous(),
                  neg_sum.contiguous(), pairs.contiguous(), inv_norm.contiguous())


def _as_uint8(flag: Tensor) -> Tensor:
    """A contiguous uint8 flag tensor; a bool one is reinterpreted (a view: no copy, no launch)."""
    flag = flag.contiguous()
    return flag.view(torch.uint8) if flag.dtype == torch.bool else flag.to(torch.uint8)


class FusedOps(NamedTuple):
    """A fused backend's entry points. `forward` / `backward`: the custom ops; `eager`: the
    same forward as an autograd Function (no custom-op dispatch); `call`: `eager` where it is
    safe, else `forward` (see `eager_ok`). All take the custom op's forward arguments."""

    forward: Callable
    backward: Callable
    eager: Callable

    def call(self, emb: Tensor, labels: Tensor, *opts):
        return (self.eager if eager_ok(emb, labels) else self.forward)(emb, labels, *opts)


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def eager_ok(emb: Tensor, labels: Tensor) -> bool:
    """True when the launchers can be called directly: plain tensors, nothing tracing or
    compiling, no torch dispatch mode (fake tensors, make_fx, flop counters) and no functorch
    transform active. Otherwise the custom ops, which those mechanisms understand, are used."""
    return (type(emb) in _PLAIN and type(labels) in _PLAIN
            and not torch.compiler.is_compiling() and not torch.jit.is_tracing()
            and torch._C._len_torch_dispatch_stack() == 0
            and torch._C._functorch.peek_interpreter_stack() is None)


_DOUBLE_BACKWARD_MSG = (
    "cliptbp_kernels: double backward (second derivatives) of the ClipTBP losses is not "
    "supported"
)


def register_fused_backend(name: str, device_types, fwd_impl: Callable, bwd_impl: Callable,
                           upstream_as_is: bool = False) -> FusedOps:
    """Register `cliptbp::{name}_fwd` / `cliptbp::{name}_bwd` around kernel launchers.

    `fwd_impl(emb, labels, opts) -> (loss_clip, has_clip, loss_boun, has_boun, lse, neg_sum,
    pairs, inv_norm)` with float64 (or already the output dtype) losses, uint8 (or bool)
    flags, float64 lse/neg_sum, int64 pairs [B, kcap] and float64 inverse norms [B, T];
    `bwd_impl(emb, labels, opts, grad_clip, grad_boun, has_clip, has_boun, lse, neg_sum,
    pairs, inv_norm)` returns the gradient in the compute dtype. The upstream gradients
    [B] come as contiguous float64, or with `upstream_as_is` as autograd hands them over (the
    losses' dtype, any stride). `opts` is the tuple of scalar options below.
    """
    qual = f"cliptbp::{name}"

    def run_fwd(emb: Tensor, labels: Tensor, opts: tuple):
        lc, hc, lb, hb, lse, neg, pairs, inv_norm = fwd_impl(emb, labels, opts)
        out = compute_dtype(emb.dtype)
        return lc.to(out), hc.bool(), lb.to(out), hb.bool(), lse, neg, pairs, inv_norm

    def run_bwd(grad_clip, grad_boun, emb, labels, saved, opts):
        if not upstream_as_is:
            grad_clip = grad_clip.double().contiguous()
            grad_boun = grad_boun.double().contiguous()
        return bwd_impl(emb, labels, opts, grad_clip, grad_boun, *saved).to(emb.dtype)

    def upstream(grad, emb):
        """An absent upstream gradient (the loss was not used) as zeros."""
        return emb.new_zeros((emb.shape[0],), dtype=torch.float64) if grad is None else grad

    @torch.library.custom_op(f"{qual}_fwd", mutates_args=(), device_types=device_types)
    def fwd(
        emb: Tensor, labels: Tensor, k: int, tau: float, positives: int, negatives: int,
        radius: int, margin_max: float, margin_base: float, margin_scale: float,
        want_clip: bool, want_boun: bool,
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        return run_fwd(emb, labels, (k, tau, positives, negatives, radius, margin_max,
                                     margin_base, margin_scale, want_clip, want_boun))

    @fwd.register_fake
    def _(emb, labels, k, tau, positives, negatives, radius, margin_max, margin_base,
          margin_scale, want_clip, want_boun):
        B, T = emb.shape[0], emb.shape[1]
        out = compute_dtype(emb.dtype)
        vec = emb.new_empty((B,), dtype=out)
        flag = emb.new_empty((B,), dtype=torch.bool)
        f64 = emb.new_empty((B,), dtype=torch.float64)
        pairs = emb.new_empty((B, kcap_for(k, T)), dtype=torch.int64)
        inv_norm = emb.new_empty((B, T), dtype=torch.float64)
        return vec, flag, vec.clone(), flag.clone(), f64, f64.clone(), pairs, inv_norm

    @torch.library.custom_op(f"{qual}_bwd", mutates_args=(), device_types=device_types)
    def bwd(
        grad_clip: Tensor, grad_boun: Tensor, emb: Tensor, labels: Tensor, has_clip: Tensor,
        has_boun: Tensor, lse: Tensor, neg_sum: Tensor, pairs: Tensor, inv_norm: Tensor,
        k: int, tau: float,
        positives: int, negatives: int, radius: int, margin_max: float, margin_base: float,
        margin_scale: float, want_clip: bool, want_boun: bool,
    ) -> Tensor:
        opts = (k, tau, positives, negatives, radius, margin_max, margin_base, margin_scale,
                want_clip, want_boun)
        return run_bwd(grad_clip, grad_boun, emb, labels,
                       (has_clip, has_boun, lse, neg_sum, pairs, inv_norm), opts)

    @bwd.register_fake
    def _(grad_clip, grad_boun, emb, labels, has_clip, has_boun, lse, neg_sum, pairs, inv_norm,
          *opts):
        return torch.empty_like(emb, memory_format=torch.contiguous_format)

    def setup_context(ctx, inputs, output):
        emb, labels = inputs[0], inputs[1]
        _, has_clip, _, has_boun, lse, neg_sum, pairs, inv_norm = output
        ctx.save_for_backward(emb, labels, has_clip, has_boun, lse, neg_sum, pairs, inv_norm)
        ctx.opts = tuple(inputs[2:])
        ctx.mark_non_differentiable(has_clip, has_boun, lse, neg_sum, pairs, inv_norm)

    def backward(ctx, grad_clip, _grad_has_clip, grad_boun, *unused):
        emb, labels, has_clip, has_boun, lse, neg_sum, pairs, inv_norm = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return (None,) * 12
        grad = bwd(upstream(grad_clip, emb), upstream(grad_boun, emb), emb, labels, has_clip,
                   has_boun, lse, neg_sum, pairs, inv_norm, *ctx.opts)
        return (grad,) + (None,) * 11

    fwd.register_autograd(backward, setup_context=setup_context)

    def no_double_backward(ctx, *grads):
        raise RuntimeError(_DOUBLE_BACKWARD_MSG)

    def bwd_setup(ctx, inputs, output):
        pass

    bwd.register_autograd(no_double_backward, setup_context=bwd_setup)

    def eager_forward(ctx, emb, labels, *opts):
        out = run_fwd(emb, labels, opts)
        ctx.save_for_backward(emb, labels, *out[1:2], *out[3:])
        ctx.opts = opts
        ctx.mark_non_differentiable(*out[1:2], *out[3:])
        ctx.set_materialize_grads(False)
        return out

    def eager_backward(ctx, grad_clip, _grad_has_clip, grad_boun, *unused):
        if not ctx.needs_input_grad[0]:
            return (None,) * (2 + len(ctx.opts))
        emb, labels, *saved = ctx.saved_tensors
        with torch.no_grad():
            grad = run_bwd(upstream(grad_clip, emb), upstream(grad_boun, emb), emb, labels,
                           saved, ctx.opts)
        if torch.is_grad_enabled():  # create_graph=True: a second backward must fail
            grad = _FirstOrderGrad.apply(grad, emb)
        return (grad,) + (None,) * (1 + len(ctx.opts))

    # the forward custom op's computation and autograd formula without its dispatch; named
    # per backend (its graph node reads e.g. TritonFusedLossesBackward)
    Eager = type(f"{name.capitalize()}FusedLosses", (torch.autograd.Function,), {
        "__doc__": f"Eager path of cliptbp::{name}_fwd (see `FusedOps`).",
        "forward": staticmethod(eager_forward), "backward": staticmethod(eager_backward)})
    return FusedOps(fwd, bwd, Eager.apply)


class _FirstOrderGrad(torch.autograd.Function):
    """Identity on a gradient computed for `emb`, attached to the graph through `emb`:
    differentiating it raises the double-backward error."""

    @staticmethod
    def forward(ctx, grad, emb):
        return grad.view_as(grad)

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(_DOUBLE_BACKWARD_MSG)
