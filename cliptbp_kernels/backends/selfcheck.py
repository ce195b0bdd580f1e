"""First-use self-check of the fused backends (docs/losses.md, section 13.3).

The first time a fused backend runs on a (device, dtype) in a process, its forward and
backward launchers are compared with the reference on a small fixed input that exercises the
hard parts: several windows, padding, exact ties between similarities, `k` larger than the
candidates and `k` cutting through a group of ties, both negative sets and both positive
rules. Values and gradients must agree within docs/losses.md's tolerances (section 9) and
the chosen pairs exactly (their order included). On a mismatch the process warns once
(`SelfCheckWarning`, naming the backend, the device, the worst difference and where to
report it) and never uses that backend on that (device, dtype) again: `"auto"` and an
explicit request both take the next backend of the `"auto"` order, or the reference.

The check runs eagerly: from `resolve` on the eager path, and from inside the custom op on
its first real call otherwise (e.g. a function compiled before any eager call), where it
cannot change the backend of a compiled graph and raises `RuntimeError` instead of returning
a wrong answer. Afterwards it costs one dictionary lookup per call.

`CLIPTBP_SELFCHECK`: `1` (default) once per (backend, device, dtype); `0` never; `always`
at every eager call (debugging). A backend and GPU architecture with a recorded full GPU
validation (`scripts/gpu_check.sh` passed there) may be listed in `VALIDATED` and skip it.
"""

from __future__ import annotations

import os
import threading
import warnings
from typing import Dict, FrozenSet, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .._options import NEGATIVE_CODES, POSITIVE_CODES, FusedOptions

ENV = "CLIPTBP_SELFCHECK"
#: backend name -> GPU architectures ("sm_90", ...) on which the full GPU check passed, so
#: the self-check may be skipped there. Empty: no GPU check has run yet.
VALIDATED: Dict[str, FrozenSet[str]] = {}
REPORT_TO = ("run `python -m cliptbp_kernels.selfcheck` and attach its JSON report to an "
             "issue of the cliptbp_kernels repository")


class SelfCheckWarning(RuntimeWarning):
    """A fused backend disagreed with the reference on this device and dtype."""


class Result(NamedTuple):
    """The outcome of one self-check."""

    ok: bool
    worst: str  # the worst difference, in words ("" when ok)
    seconds: float


_verdicts: Dict[Tuple[str, str, torch.dtype], Result] = {}
#: the fused backends' ops by name, registered by the registry (backends/__init__.py)
OPS: Dict[str, object] = {}
_running = threading.local()
_lock = threading.Lock()


def mode() -> str:
    """`"once"`, `"off"` or `"always"` from CLIPTBP_SELFCHECK."""
    v = os.environ.get(ENV, "1").strip().lower()
    if v in ("0", "off", "false", "no"):
        return "off"
    if v == "always":
        return "always"
    return "once"


def _key(name: str, device: torch.device, dtype: torch.dtype) -> Tuple[str, str, torch.dtype]:
    return (name, str(device), dtype)


def arch(device: torch.device) -> Optional[str]:
    """"sm_XY" of a CUDA device, None for other devices."""
    if device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor}"


def dtype_name(dtype: torch.dtype) -> str:
    """"float32" for torch.float32."""
    return str(dtype).replace("torch.", "")


def _failed(name: str, device: torch.device, dtype: torch.dtype, worst: str) -> str:
    """The start of the failure message: which backend failed where, and by how much."""
    return (f"cliptbp_kernels: backend {name!r} failed its self-check on {device} "
            f"({dtype_name(dtype)}): {worst}")


def reset() -> None:
    """Forget every verdict (tests)."""
    with _lock:
        _verdicts.clear()


def verdicts() -> Dict[Tuple[str, str, torch.dtype], Result]:
    """The verdicts of this process so far."""
    return dict(_verdicts)


# ---- the input ----

# options the check runs: (k, tau, positives, negatives, radius); k = 3 cuts through the
# groups of ties of sample 0, k = 200 exceeds every sample's candidates
_OPTIONS = ((3, 0.1, "any", "cross", 1), (200, 0.5, "same", "all", 2),
            (7, 0.07, "any", "all", 1))


def check_input(device: torch.device, dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
    """(emb [4, 12, 8], labels [4, 12]): sample 0 is built of one-hot clips, so its
    similarities are exactly 0 or 1 (groups of exact ties, in every dtype); sample 1 has two
    windows and padding; sample 2 three windows touching the ends; sample 3 no window."""
    g = torch.Generator().manual_seed(20261207)
    B, T, D = 4, 12, 8
    emb = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    onehot = torch.tensor([0, 0, 1, 1, 0, 2, 2, 3, 3, 0, 1, 2])
    emb[0] = torch.nn.functional.one_hot(onehot, D).to(torch.float64) * 2.0
    labels = torch.tensor([
        [0, 1, 1, 1, 0, 0, 2, 2, 0, 0, 0, 3],
        [0, 0, 1, 1, 1, 0, 2, 2, 0, -1, -1, -1],
        [1, 1, 0, 0, 2, 2, 2, 0, 0, 0, 3, 3],
        [0, 0, 0, 0, 0, 0, 0, 0, -1, -1, -1, -1],
    ])
    emb[1, 9:] = 1e4  # padding content never matters
    return emb.to(dtype).to(device), labels.to(device)


def _opts(k, tau, positives, negatives, radius) -> FusedOptions:
    return FusedOptions(k, float(tau), POSITIVE_CODES[positives], NEGATIVE_CODES[negatives],
                        radius, 0.3, 0.1, 0.1, True, True)


def _reference(emb: Tensor, labels: Tensor, opts: FusedOptions, weights: Tensor):
    """The reference on `emb` (as the reference computes that dtype): (loss_clip, loss_boun,
    gradient of the weighted sum) per sample, in float64."""
    from . import reference

    e = emb.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        lc, _, lb, _ = reference.per_sample(e, labels, opts)
        (lc.double() * weights[0] + lb.double() * weights[1]).sum().backward()
    return lc.detach().double(), lb.detach().double(), e.grad.double()


def _pairs(emb: Tensor, labels: Tensor, opts: FusedOptions, kcap: int) -> Tensor:
    """The reference's chosen pairs as flat indices i * T + j, [B, kcap], -1 padded."""
    from .._options import NEGATIVES, POSITIVES
    from . import reference

    T = labels.shape[1]
    p = reference.hard_negative_pairs(emb, labels.to(torch.int64), k=opts.k,
                                      positives=POSITIVES[opts.positives],
                                      negatives=NEGATIVES[opts.negatives])[:, :kcap]
    return torch.where(p[..., 0] >= 0, p[..., 0] * T + p[..., 1], torch.full_like(p[..., 0], -1))


def compare(name: str, device: torch.device, dtype: torch.dtype, ops=None) -> Result:
    """Run backend `name`'s launchers against the reference on the check input; `ops` (a
    `FusedOps`) replaces the registered ones (tests)."""
    import time

    t0 = time.perf_counter()
    ops = ops if ops is not None else OPS[name]
    emb, labels = check_input(device, dtype)
    emb64 = emb.to(torch.float64)
    low = dtype in (torch.float16, torch.bfloat16)
    weights = torch.tensor([[1.0, -0.5, 2.0, 1.5], [0.5, 1.0, -1.0, 2.0]],
                           dtype=torch.float64, device=device)
    worst, worst_excess = "", 0.0
    _running.active = True
    try:
        for k, tau, pos, neg, radius in _OPTIONS:
            opts = _opts(k, tau, pos, neg, radius)
            out = ops.run_forward(emb, labels, opts)
            grad = ops.run_backward(emb, labels, opts, weights[0].to(out.loss_clip.dtype),
                                    weights[1].to(out.loss_boun.dtype), out.saved)
            rc, rb, rg = _reference(emb64, labels, opts, weights)
            if low:  # docs/losses.md, section 9: twice the reference's own error, plus 1e-3
                lc16, lb16, g16 = _reference(emb, labels, opts, weights)
                tol_c = 2 * (lc16 - rc).abs() + 1e-3
                tol_b = 2 * (lb16 - rb).abs() + 1e-3
                tol_g = 2 * (g16 - rg).flatten(1).norm(dim=1) + 1e-3
            else:
                tol_c = 1e-4 * rc.abs() + 1e-6
                tol_b = 1e-4 * rb.abs() + 1e-6
                tol_g = 1e-4 * rg.flatten(1).norm(dim=1) + 1e-6
            where = f"k={k}, tau={tau}, positives={pos!r}, negatives={neg!r}, radius={radius}"
            for what, got, ref, tol in (
                    ("L_clip", out.loss_clip.double(), rc, tol_c),
                    ("L_boun", out.loss_boun.double(), rb, tol_b),
                    ("gradient", (grad.double() - rg).flatten(1).norm(dim=1), None, tol_g)):
                err = got if ref is None else (got - ref).abs()
                err = torch.where(torch.isnan(err), torch.full_like(err, float("inf")), err)
                excess = float((err / tol).max())
                if excess > 1 and excess > worst_excess:
                    b = int((err / tol).argmax())
                    worst_excess = excess
                    worst = (f"{what} of sample {b} off by {float(err[b]):.3g} (tolerance "
                             f"{float(tol[b]):.3g}) with {where}")
            # the chosen pairs, in rank order: every sample in float32 / float64 (the input's
            # similarities are at least 1e-4 apart, or exactly tied), sample 0 alone (exact
            # ties) in 16 bits
            want = _pairs(emb64, labels, opts, out.pairs.shape[1]).cpu()
            got = out.pairs.cpu()
            if low:
                want, got = want[:1], got[:1]
            if not torch.equal(got, want) and worst_excess < float("inf"):
                bad = (got != want).any(dim=1).nonzero().flatten().tolist()
                worst_excess = float("inf")
                worst = f"chosen pairs of sample(s) {bad} differ from the reference with {where}"
    finally:
        _running.active = False
    return Result(not worst, worst, time.perf_counter() - t0)


def _recording(name: str) -> bool:
    """True while Triton launches are recorded instead of run (`triton.record_launches`, the
    compile check and bench.host): nothing can be checked then."""
    if name != "triton":
        return False
    from .triton import launch

    return launch._RECORDER is not None


def passes(name: str, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether fused backend `name` may run on (device, dtype): runs the check the first time
    (or every time with CLIPTBP_SELFCHECK=always), warns once on a mismatch. Inside a
    `torch.compile` trace an unchecked backend counts as passing: the custom op checks it on
    its first real call (`guard`)."""
    m = mode()
    if m == "off" or getattr(_running, "active", False) or _recording(name):
        return True
    key = _key(name, device, dtype)
    known = _verdicts.get(key)
    if known is not None and m == "once":
        return known.ok
    a = arch(device)
    if a is not None and a in VALIDATED.get(name, frozenset()):
        return True
    if torch.compiler.is_compiling():
        return True if known is None else known.ok
    result = compare(name, device, dtype)
    with _lock:
        first_failure = not result.ok and (known is None or known.ok)
        _verdicts[key] = result
    if first_failure:
        warnings.warn(
            f"{_failed(name, device, dtype, result.worst)}. This process uses the next "
            f"backend of the 'auto' order, or the reference, instead. Please "
            f"{REPORT_TO}.", SelfCheckWarning, stacklevel=4)
    return result.ok


def guard(name: str, emb: Tensor) -> None:
    """Called by the forward custom op: checks an unchecked (backend, device, dtype) on its
    first real call; raises if the backend failed (a compiled graph cannot switch
    backends)."""
    if getattr(_running, "active", False) or mode() == "off" or _recording(name):
        return
    known = _verdicts.get(_key(name, emb.device, emb.dtype))
    if known is not None:
        if not known.ok:
            raise RuntimeError(
                f"{_failed(name, emb.device, emb.dtype, known.worst)}; this call "
                "(compiled or a direct custom-op call) cannot switch backends: use "
                f"backend='reference' or another backend. Please {REPORT_TO}.")
        return
    if type(emb) not in (torch.Tensor, torch.nn.Parameter):  # fake / subclass: no data
        return
    if emb.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return
    # In a thread of its own: inside a custom op autograd is switched off for this thread,
    # and the reference side of the check needs it.
    box: list = []
    worker = threading.Thread(target=lambda: box.append(passes(name, emb.device, emb.dtype)),
                              name="cliptbp-selfcheck")
    worker.start()
    worker.join()
    if not box:  # the check itself failed to run: its exception was printed by the thread
        raise RuntimeError(f"cliptbp_kernels: the self-check of backend {name!r} on "
                           f"{emb.device} could not run (see the error above)")
    if not box[0]:
        guard(name, emb)  # raises
