"""Input checks of the public functions: a clear `TypeError` / `ValueError` naming the argument,
the expected and the received value, before any kernel runs."""

from __future__ import annotations

import math
import numbers

import torch

from ._options import FLOAT_DTYPES, LABEL_DTYPES, MAX_T, NEGATIVES, POSITIVES, REDUCTIONS
from .backends import CHOICES


def check_choice(name: str, value: object, choices: tuple) -> str:
    if not isinstance(value, str) or value not in choices:
        expected = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {expected}; got {value!r}")
    return value


def check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int; got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value}")
    return int(value)


def check_real(name: str, value: object, *, positive: bool = False,
               nonnegative: bool = False) -> float:
    """`value` as a finite float (> 0 with `positive`, >= 0 with `nonnegative`)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite; got {value}")
    if positive and not v > 0:
        raise ValueError(f"{name} must be > 0; got {value}")
    if nonnegative and not v >= 0:
        raise ValueError(f"{name} must be >= 0; got {value}")
    return v


def scalar_item(value: object) -> object:
    """A one-element tensor as its Python number; anything else unchanged."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return value


def check_reals(name: str, value: object, length: int, what: str, *,
                nonnegative: bool = False) -> list:
    """A sequence (or tensor) of `length` finite reals, e.g. the aux loss's weights."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().reshape(-1).tolist()
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise TypeError(f"{name} must be a sequence of {length} numbers {what}; got "
                        f"{type(value).__name__}")
    value = list(value)
    if len(value) != length:
        raise ValueError(f"{name} must hold {length} numbers {what}; got {len(value)}")
    return [check_real(f"{name}[{i}]", scalar_item(v), nonnegative=nonnegative)
            for i, v in enumerate(value)]


def check_reduction(reduction: object) -> str:
    return check_choice("reduction", reduction, REDUCTIONS)


def check_backend(backend: object) -> str:
    return check_choice("backend", backend, CHOICES)


def check_emb_labels(emb: object, labels: object, *, check_labels: bool = True) -> None:
    """Check `emb` [B, T, D] (floating) and `labels` [B, T] (signed integer)."""
    if not isinstance(emb, torch.Tensor):
        raise TypeError(f"emb must be a torch.Tensor; got {type(emb).__name__}")
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor; got {type(labels).__name__}")
    if emb.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"emb must be float16, bfloat16, float32 or float64; got {emb.dtype}"
        )
    if labels.dtype not in LABEL_DTYPES:
        raise TypeError(
            f"labels must be a signed integer tensor (int8/int16/int32/int64); got {labels.dtype}"
        )
    if emb.dim() != 3:
        raise ValueError(f"emb must have shape [B, T, D]; got {tuple(emb.shape)}")
    if emb.shape[2] < 1:
        raise ValueError(f"emb must have D >= 1; got shape {tuple(emb.shape)}")
    if emb.shape[1] > MAX_T:
        raise ValueError(
            f"emb has T = {emb.shape[1]} clips per sample; at most T = 2^31 - 1 = {MAX_T} "
            "are supported (32-bit clip indices)"
        )
    if labels.dim() != 2:
        raise ValueError(f"labels must have shape [B, T]; got {tuple(labels.shape)}")
    if tuple(labels.shape) != tuple(emb.shape[:2]):
        raise ValueError(
            f"labels must have shape [B, T] = {tuple(emb.shape[:2])} to match emb; "
            f"got {tuple(labels.shape)}"
        )
    if labels.device != emb.device:
        raise ValueError(
            f"emb and labels must be on the same device; got emb on {emb.device}, "
            f"labels on {labels.device}"
        )
    if check_labels:
        check_label_values(labels)


def check_label_values(labels: torch.Tensor) -> None:
    """ValueError if a label is below -1 (one device sync on a GPU; skipped while compiling)."""
    if labels.numel() > 0 and not torch.compiler.is_compiling():
        low = int(labels.min())
        if low < -1:
            raise ValueError(
                "labels must be -1 (padding), 0 (background) or a window id >= 1; "
                f"found {low}"
            )


def check_clip_options(k: object, tau: object, positives: object, negatives: object) -> None:
    check_int("k", k, 0)
    check_real("tau", tau, positive=True)
    check_choice("positives", positives, POSITIVES)
    check_choice("negatives", negatives, NEGATIVES)


def check_boundary_options(radius: object, margin_max: object, margin_base: object,
                           margin_scale: object) -> None:
    check_int("radius", radius, 1)
    check_real("margin_max", margin_max)
    check_real("margin_base", margin_base)
    check_real("margin_scale", margin_scale)
