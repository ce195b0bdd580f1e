"""The fused backends as `torch.library` custom ops, with autograd.

Every compiled backend provides a pair of launchers:

* forward: per-sample L_clip and L_boun, whether each sample has a loss, and what the backward
  needs (`SavedForBackward`: the log-sum-exp of the positives, the sum over the chosen
  negatives, the chosen pair indices, the inverse norms);
* backward: d(loss)/d(emb) from the per-sample upstream gradients, touching only the positive
  pairs, the chosen negatives and the boundary sets.

`register_fused_backend` wraps such a pair into the custom ops `cliptbp::<name>_fwd` and
`cliptbp::<name>_bwd`, with fake (meta) implementations so that `torch.compile(fullgraph=True)`
traces through them, and autograd formulas. Double backward raises a clear error. What every
backend needs around its launchers is done here once: labels as contiguous int64, the
backend's limits, the length of the top-k list, inputs without elements, the output dtypes.

In eager mode the same launchers are also reached through a plain `torch.autograd.Function`
(`FusedOps.call` picks it), which skips the custom-op dispatch: on the GPU at small shapes
that host work is longer than the kernels. Both paths run the same launchers with the same
arguments, so their results are bitwise equal; the custom ops serve `torch.compile`, fake
tensors, dispatch modes and tensor subclasses.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence, get_type_hints

import torch
from torch import Tensor

from .._options import FusedOptions, FusedOutputs, Limits, SavedForBackward, compute_dtype, kcap_for

# forward launcher: (emb, labels, opts, kcap) -> FusedOutputs, for an emb with elements and
# int64 contiguous labels; losses in float64 or already in the output dtype, flags as uint8 or
# bool.
ForwardLauncher = Callable[[Tensor, Tensor, FusedOptions, int], FusedOutputs]
# backward launcher: (emb, labels, opts, grad_clip, grad_boun, saved, grad) -> None, writes
# d(loss)/d(emb) into `grad` (uninitialised, in the compute dtype); `saved` holds uint8 flags
# and contiguous buffers.
BackwardLauncher = Callable[[Tensor, Tensor, FusedOptions, Tensor, Tensor, SavedForBackward,
                             Tensor], None]


def check_limits(backend: str, T: int, k: int, want_clip: bool, limits: Limits) -> None:
    """ValueError when an input exceeds what a backend with `limits` serves."""
    if T > limits.max_t:
        raise ValueError(f"backend={backend!r} supports T up to {limits.max_t} clips (pair "
                         f"indices of 32 bits), got T={T}; use backend='cpu' or 'reference'")
    kcap = kcap_for(k, T) if want_clip else 0
    if kcap > limits.max_k:
        raise ValueError(f"backend={backend!r} supports k up to {limits.max_k} (more precisely "
                         f"min(k, T*(T-1)/2) <= {limits.max_k}), got k={k} with T={T}; use "
                         "backend='cpu' or 'reference'")


def forward_outputs(B: int, T: int, kcap: int, device) -> FusedOutputs:
    """Uninitialised forward outputs as the compiled kernels write them (float64 losses,
    uint8 flags)."""
    f64 = dict(dtype=torch.float64, device=device)
    return FusedOutputs(
        torch.empty(B, **f64),
        torch.empty(B, dtype=torch.uint8, device=device),
        torch.empty(B, **f64),
        torch.empty(B, dtype=torch.uint8, device=device),
        torch.empty(B, **f64),
        torch.empty(B, **f64),
        torch.empty((B, kcap), dtype=torch.int64, device=device),
        torch.empty((B, T), **f64),
    )


def _empty_input_outputs(B: int, T: int, kcap: int, device) -> FusedOutputs:
    """What an input without elements gives: no losses, no pairs."""
    out = forward_outputs(B, T, kcap, device)
    for t in out[:6]:
        t.zero_()
    out.pairs.fill_(-1)
    out.inv_norm.zero_()
    return out


def _as_uint8(flag: Tensor) -> Tensor:
    """A contiguous uint8 flag tensor; a bool one is reinterpreted (a view: no copy, no launch)."""
    flag = flag.contiguous()
    return flag.view(torch.uint8) if flag.dtype == torch.bool else flag.to(torch.uint8)


def _launch_buffers(saved: Sequence[Tensor]) -> SavedForBackward:
    """The saved forward tensors as the launchers read them: uint8 flags, contiguous."""
    has_clip, has_boun, lse, neg_sum, pairs, inv_norm = saved
    return SavedForBackward(_as_uint8(has_clip), _as_uint8(has_boun), lse.contiguous(),
                            neg_sum.contiguous(), pairs.contiguous(), inv_norm.contiguous())


class FusedOps(NamedTuple):
    """A fused backend's entry points.

    `forward` / `backward`: the custom ops (options as separate arguments); `eager(emb, labels,
    opts)`: the same forward as an autograd Function (no custom-op dispatch);
    `run_forward(emb, labels, opts) -> FusedOutputs` and `run_backward(emb, labels, opts,
    grad_clip, grad_boun, saved) -> grad`: the computation of both without autograd. `call`:
    `eager` where it is safe, else `forward` (see `eager_ok`); it takes the checked options
    and returns `FusedOutputs`.
    """

    forward: Callable
    backward: Callable
    eager: Callable
    run_forward: Callable[..., FusedOutputs]
    run_backward: Callable[..., Tensor]

    def call(self, emb: Tensor, labels: Tensor, opts: FusedOptions) -> FusedOutputs:
        if eager_ok(emb, labels):
            return FusedOutputs._make(self.eager(emb, labels, opts))
        return FusedOutputs._make(self.forward(emb, labels, *opts))


_PLAIN = (torch.Tensor, torch.nn.Parameter)

# Called with (backend name, emb) by the forward custom op before its kernels run (compiled
# code, direct custom-op calls): the first-use self-check (backends.selfcheck.guard, set by
# the registry). The eager path is checked by `resolve` instead. None: nothing.
first_use: Optional[Callable[[str, Tensor], None]] = None


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

# the custom ops' schemas, from the field names and types of the named tuples
_OPTION_ARGS = ", ".join(f"{t.__name__} {n}" for n, t in get_type_hints(FusedOptions).items())
_SAVED_ARGS = ", ".join(f"Tensor {n}" for n in SavedForBackward._fields)
_FWD_SCHEMA = (f"(Tensor emb, Tensor labels, {_OPTION_ARGS}) -> "
               f"({', '.join(['Tensor'] * len(FusedOutputs._fields))})")
_BWD_SCHEMA = (f"(Tensor grad_clip, Tensor grad_boun, Tensor emb, Tensor labels, {_SAVED_ARGS}, "
               f"{_OPTION_ARGS}) -> Tensor")
_N_OPTS = len(FusedOptions._fields)
_N_SAVED = len(SavedForBackward._fields)


def register_fused_backend(name: str, device_types, fwd_impl: ForwardLauncher,
                           bwd_impl: BackwardLauncher, limits: Optional[Limits] = None,
                           upstream_as_is: bool = False) -> FusedOps:
    """Register `cliptbp::{name}_fwd` / `cliptbp::{name}_bwd` around a backend's launchers
    (see `ForwardLauncher`, `BackwardLauncher`).

    `limits`: checked before any kernel runs (`check_limits`). The upstream gradients [B]
    reach `bwd_impl` as contiguous float64, or with `upstream_as_is` as autograd hands them
    over (the losses' dtype, any stride).
    """
    qual = f"cliptbp::{name}"

    def run_fwd(emb: Tensor, labels: Tensor, opts) -> tuple:
        """The forward's outputs as a plain tuple in `FusedOutputs` order (the hot path: the
        named tuple is built once, by the caller that wants names)."""
        if type(opts) is not FusedOptions:
            opts = FusedOptions._make(opts)
        labels = labels.to(torch.int64).contiguous()
        T = labels.shape[1]
        if limits is not None:
            check_limits(name, T, opts[0], opts.want_clip, limits)
        kcap = kcap_for(opts[0], T)
        if emb.numel() == 0:
            out = _empty_input_outputs(labels.shape[0], T, kcap, emb.device)
        else:
            out = fwd_impl(emb, labels, opts, kcap)
        dtype = compute_dtype(emb.dtype)
        return (out[0].to(dtype), out[1].bool(), out[2].to(dtype), out[3].bool(), out[4],
                out[5], out[6], out[7])

    def run_bwd(emb: Tensor, labels: Tensor, opts, grad_clip: Tensor, grad_boun: Tensor,
                saved: Sequence[Tensor]) -> Tensor:
        if type(opts) is not FusedOptions:
            opts = FusedOptions._make(opts)
        if not upstream_as_is:
            grad_clip = grad_clip.double().contiguous()
            grad_boun = grad_boun.double().contiguous()
        labels = labels.to(torch.int64).contiguous()
        grad = torch.empty(emb.shape, dtype=compute_dtype(emb.dtype), device=emb.device)
        buffers = _launch_buffers(saved)
        if emb.numel() == 0:
            grad.zero_()
        else:
            bwd_impl(emb, labels, opts, grad_clip, grad_boun, buffers, grad)
        return grad.to(emb.dtype)

    def upstream(grad, emb):
        """An absent upstream gradient (the loss was not used) as zeros."""
        return emb.new_zeros((emb.shape[0],), dtype=torch.float64) if grad is None else grad

    @torch.library.custom_op(f"{qual}_fwd", mutates_args=(), device_types=device_types,
                             schema=_FWD_SCHEMA)
    def fwd(emb, labels, *opts):
        if first_use is not None:  # the eager path was checked when its backend was chosen
            first_use(name, emb)
        return run_fwd(emb, labels, opts)

    @fwd.register_fake
    def _(emb, labels, *opts):
        opts = FusedOptions._make(opts)
        B, T = emb.shape[0], emb.shape[1]
        out = compute_dtype(emb.dtype)
        vec = emb.new_empty((B,), dtype=out)
        flag = emb.new_empty((B,), dtype=torch.bool)
        f64 = emb.new_empty((B,), dtype=torch.float64)
        pairs = emb.new_empty((B, kcap_for(opts.k, T)), dtype=torch.int64)
        inv_norm = emb.new_empty((B, T), dtype=torch.float64)
        return vec, flag, vec.clone(), flag.clone(), f64, f64.clone(), pairs, inv_norm

    @torch.library.custom_op(f"{qual}_bwd", mutates_args=(), device_types=device_types,
                             schema=_BWD_SCHEMA)
    def bwd(grad_clip, grad_boun, emb, labels, *rest):
        saved, opts = rest[:_N_SAVED], rest[_N_SAVED:]
        return run_bwd(emb, labels, opts, grad_clip, grad_boun, saved)

    @bwd.register_fake
    def _(grad_clip, grad_boun, emb, labels, *rest):
        return torch.empty_like(emb, memory_format=torch.contiguous_format)

    def setup_context(ctx, inputs, output):
        emb, labels = inputs[0], inputs[1]
        saved = output[1:2] + output[3:]  # SavedForBackward's fields
        ctx.save_for_backward(emb, labels, *saved)
        ctx.opts = tuple(inputs[2:])
        ctx.mark_non_differentiable(*saved)

    def backward(ctx, grad_clip, _grad_has_clip, grad_boun, *unused):
        emb, labels, *saved = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return (None,) * (2 + _N_OPTS)
        grad = bwd(upstream(grad_clip, emb), upstream(grad_boun, emb), emb, labels, *saved,
                   *ctx.opts)
        return (grad,) + (None,) * (1 + _N_OPTS)

    fwd.register_autograd(backward, setup_context=setup_context)

    def no_double_backward(ctx, *grads):
        raise RuntimeError(_DOUBLE_BACKWARD_MSG)

    def bwd_setup(ctx, inputs, output):
        pass

    bwd.register_autograd(no_double_backward, setup_context=bwd_setup)

    def eager_forward(ctx, emb, labels, opts):
        out = run_fwd(emb, labels, opts)
        saved = out[1:2] + out[3:]  # SavedForBackward's fields
        ctx.save_for_backward(emb, labels, *saved)
        ctx.opts = opts
        ctx.mark_non_differentiable(*saved)
        ctx.set_materialize_grads(False)
        return out

    def eager_backward(ctx, grad_clip, _grad_has_clip, grad_boun, *unused):
        if not ctx.needs_input_grad[0]:
            return None, None, None
        emb, labels, *saved = ctx.saved_tensors
        with torch.no_grad():
            grad = run_bwd(emb, labels, ctx.opts, upstream(grad_clip, emb),
                           upstream(grad_boun, emb), saved)
        if torch.is_grad_enabled():  # create_graph=True: a second backward must fail
            grad = _FirstOrderGrad.apply(grad, emb)
        return grad, None, None

    # the forward custom op's computation and autograd formula without its dispatch; named
    # per backend (its graph node reads e.g. TritonFusedLossesBackward)
    Eager = type(f"{name.capitalize()}FusedLosses", (torch.autograd.Function,), {
        "__doc__": f"Eager path of cliptbp::{name}_fwd (see `FusedOps`).",
        "forward": staticmethod(eager_forward), "backward": staticmethod(eager_backward)})
    def run_forward(emb: Tensor, labels: Tensor, opts) -> FusedOutputs:
        return FusedOutputs._make(run_fwd(emb, labels, opts))

    return FusedOps(fwd, bwd, Eager.apply, run_forward, run_bwd)


class _FirstOrderGrad(torch.autograd.Function):
    """Identity on a gradient computed for `emb`, attached to the graph through `emb`:
    differentiating it raises the double-backward error."""

    @staticmethod
    def forward(ctx, grad, emb):
        return grad.view_as(grad)

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(_DOUBLE_BACKWARD_MSG)
