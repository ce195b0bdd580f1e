"""Backend discovery and selection.

| backend     | runs on                     | what it is                                      |
|-------------|-----------------------------|-------------------------------------------------|
| "reference" | any device                  | plain PyTorch, materialises T x T (the baseline) |
| "cpu"       | CPU tensors                 | fused C++/OpenMP kernels (`_C_cpu`)             |
| "triton"    | CUDA tensors (CPU tensors   | fused Triton kernels                            |
|             | under TRITON_INTERPRET=1)   |                                                 |
| "cuda"      | CUDA tensors (CPU tensors   | fused CUDA C++ kernels (`_C_cuda`; the CPU      |
|             | under CLIPTBP_CUDA_EMULATE=1)| emulation `_C_cuda_emu` serves CPU tensors)    |

"auto" picks the fastest backend that can run on the input's device and falls back to
"reference", with a one-time warning, when no fused backend can.
"""

from __future__ import annotations

import warnings
from typing import List, Optional

import torch

from . import _cpu_backend, _cuda_backend, _triton_backend

# Fastest first, per device type, as the benchmarks show. On CUDA tensors neither fused
# backend has been measured on a GPU yet (bench/results/ holds no GPU run): Triton stays first
# until the GPU benchmark (scripts/gpu_check.sh bench) says otherwise.
_AUTO_ORDER = {"cpu": ("cpu",), "cuda": ("triton", "cuda")}
_warned_fallback: set = set()


def _why_not(backend: str, device: torch.device) -> Optional[str]:
    """None if `backend` can run on `device`, else the reason it cannot."""
    if backend == "reference":
        return None
    if backend == "cpu":
        if not _cpu_backend.available():
            return ("the C++ extension cliptbp_kernels._C_cpu is not built "
                    f"({_cpu_backend.IMPORT_ERROR}); reinstall with `pip install .`")
        if device.type != "cpu":
            return f"it runs on CPU tensors only, and the input is on {device}"
        return None
    if backend == "triton":
        return _triton_backend.why_not(device)
    if backend == "cuda":
        return _cuda_backend.why_not(device)
    return f"unknown backend {backend!r}"


def available_backends(device: Optional[torch.device | str] = None) -> List[str]:
    """Backends that can run here: on `device` if given, else on any device of this machine."""
    if device is not None:
        devices = [torch.device(device)]
    else:
        devices = [torch.device("cpu")]
        if torch.cuda.is_available():
            devices.append(torch.device("cuda"))
    names = []
    for name in ("reference", "cpu", "triton", "cuda"):
        if any(_why_not(name, d) is None for d in devices):
            names.append(name)
    return names


def resolve(backend: str, device: torch.device) -> str:
    """The concrete backend to use for `backend` ("auto" or a name) on `device`."""
    if backend != "auto":
        reason = _why_not(backend, device)
        if reason is not None:
            raise ValueError(f"backend={backend!r} cannot run here: {reason}")
        return backend
    for name in _AUTO_ORDER.get(device.type, ()):
        if _why_not(name, device) is None:
            return name
    if device.type not in _warned_fallback:
        _warned_fallback.add(device.type)
        warnings.warn(
            f"cliptbp_kernels: no fused backend can run on {device.type} tensors here; "
            "falling back to the PyTorch reference (slow, O(T^2) memory)",
            RuntimeWarning,
            stacklevel=3,
        )
    return "reference"


def fused_ops(backend: str):
    """The registered custom ops of a fused backend."""
    if backend == "cpu":
        return _cpu_backend.OPS
    if backend == "triton":
        return _triton_backend.OPS
    if backend == "cuda":
        return _cuda_backend.OPS
    raise ValueError(f"backend {backend!r} has no fused ops")
