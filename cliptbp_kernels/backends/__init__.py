"""The backends and the registry that chooses among them.

| backend     | runs on                      | what it is                                       |
|-------------|------------------------------|--------------------------------------------------|
| "reference" | any device                   | plain PyTorch, materialises T x T (the baseline) |
| "cpu"       | CPU tensors                  | fused C++ kernels (`_C_cpu`)                     |
| "triton"    | CUDA tensors (CPU tensors    | fused Triton kernels                             |
|             | under TRITON_INTERPRET=1)    |                                                  |
| "cuda"      | CUDA tensors (CPU tensors    | fused CUDA C++ kernels (`_C_cuda`; the CPU       |
|             | under CLIPTBP_CUDA_EMULATE=1)| emulation `_C_cuda_emu` serves CPU tensors)     |

Each backend module declares its `NAME`, `why_not(device)` (None when it can run on that
device, else the reason) and `OPS` (its custom ops, `_ops.FusedOps`; None for the reference,
which autograd differentiates). `AUTO_ORDER` is the order in which `"auto"` tries them per
device type, fastest first as the benchmarks rank them; when none can run, `"auto"` falls back
to the reference with a one-time warning. This package never imports the package's public
modules.
"""

from __future__ import annotations

import warnings
from typing import Callable, Dict, List, NamedTuple, Optional, Union

import torch

from . import _ops, cpu, cuda, reference, selfcheck, triton
from ._ops import FusedOps


class Backend(NamedTuple):
    """A backend as the registry knows it."""

    name: str
    why_not: Callable[[torch.device], Optional[str]]
    ops: Optional[FusedOps]


REGISTRY: Dict[str, Backend] = {
    m.NAME: Backend(m.NAME, m.why_not, m.OPS) for m in (reference, cpu, triton, cuda)
}
NAMES = tuple(REGISTRY)  # ("reference", "cpu", "triton", "cuda")
CHOICES = ("auto",) + NAMES  # what `backend=` accepts

# Fastest first, per device type. On CUDA tensors: Triton, then CUDA C++, until a GPU
# benchmark ranks them (bench/results/ holds no GPU run yet).
AUTO_ORDER = {"cpu": ("cpu",), "cuda": ("triton", "cuda")}
_warned_fallback: set = set()


def why_not(name: str, device: torch.device) -> Optional[str]:
    """None if backend `name` can run on `device`, else the reason it cannot."""
    backend = REGISTRY.get(name)
    if backend is None:
        return f"unknown backend {name!r}"
    return backend.why_not(device)


def available_backends(device: Optional[Union[torch.device, str]] = None) -> List[str]:
    """Backends that can run here: on `device` if given, else on any device of this machine."""
    if device is not None:
        devices = [torch.device(device)]
    else:
        devices = [torch.device("cpu")]
        if torch.cuda.is_available():
            devices.append(torch.device("cuda"))
    return [name for name, b in REGISTRY.items()
            if any(b.why_not(d) is None for d in devices)]


def resolve(backend: str, device: torch.device, dtype: Optional[torch.dtype] = None) -> str:
    """The concrete backend to use for `backend` ("auto" or a name) on `device`.

    With `dtype`, a fused backend must also pass its first-use self-check on (device, dtype)
    (`selfcheck.passes`, run here the first time); one that fails is replaced by the next
    backend of the "auto" order, or the reference, whether it was asked for by name or not.
    """
    if backend != "auto":
        reason = why_not(backend, device)
        if reason is not None:
            raise ValueError(f"backend={backend!r} cannot run here: {reason}")
        if (dtype is None or REGISTRY[backend].ops is None
                or selfcheck.passes(backend, device, dtype)):
            return backend
    checked_out = False
    for name in AUTO_ORDER.get(device.type, ()):
        if name == backend or REGISTRY[name].why_not(device) is not None:
            continue
        if dtype is None or selfcheck.passes(name, device, dtype):
            return name
        checked_out = True
    if backend != "auto" or checked_out:
        return "reference"  # the self-check has warned
    if device.type not in _warned_fallback:
        _warned_fallback.add(device.type)
        warnings.warn(
            f"cliptbp_kernels: no fused backend can run on {device.type} tensors here; "
            "falling back to the PyTorch reference (slow, O(T^2) memory)",
            RuntimeWarning,
            stacklevel=3,
        )
    return "reference"


def fused_ops(name: str) -> FusedOps:
    """The registered custom ops of a fused backend."""
    backend = REGISTRY.get(name)
    if backend is None or backend.ops is None:
        raise ValueError(f"backend {name!r} has no fused ops")
    return backend.ops


selfcheck.OPS.update({name: b.ops for name, b in REGISTRY.items() if b.ops is not None})
_ops.first_use = selfcheck.guard
