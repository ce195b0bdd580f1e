"""One loader for the compiled extension modules (`_C_cpu`, `_C_cuda`, `_C_cuda_emu`).

The modules are built next to the package's `__init__.py` by setup.py. A module that was not
built (no nvcc, `CLIPTBP_CUDA_EMU=0`, a broken install) is reported, not raised: its backend
then says why it cannot run.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import NamedTuple, Optional

PACKAGE = __name__.rsplit(".", 2)[0]  # "cliptbp_kernels"


class Extension(NamedTuple):
    """A compiled module, or None with the reason it could not be imported."""

    module: Optional[ModuleType]
    error: Optional[str]


def load(name: str) -> Extension:
    """Import `cliptbp_kernels.<name>`; on failure the error text instead of the module."""
    try:
        return Extension(importlib.import_module(f"{PACKAGE}.{name}"), None)
    except ImportError as exc:
        return Extension(None, str(exc))
