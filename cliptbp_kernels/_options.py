"""Named definitions shared by the public functions and the backends.

The accepted option values and their integer codes in the kernels, the supported dtypes and
their codes, the limits, and the named tuples in which a fused call's options and outputs
travel (flattened only where a custom-op schema needs plain arguments). This module imports
nothing from the package: every other module may depend on it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
LABEL_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64)
# dtype of the embeddings as the compiled kernels take it
DTYPE_CODES = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2, torch.float64: 3}

POSITIVES = ("any", "same")
NEGATIVES = ("cross", "all")
REDUCTIONS = ("mean", "sum", "none")
POSITIVE_CODES = {name: code for code, name in enumerate(POSITIVES)}
NEGATIVE_CODES = {name: code for code, name in enumerate(NEGATIVES)}

# Longest video (clips per sample) any backend accepts: T < 2^31. Clip indices then fit in 32
# bits, and a canonical pair index i * T + j (i < j < T) stays below 2^62, inside the int64
# the kernels store it in (the CPU ranking keys are 128-bit).
MAX_T = 2**31 - 1
# The GPU backends (Triton and CUDA C++) pack a pair index into the low 32 bits of a ranking
# key, and keep the running top-k list on chip.
GPU_MAX_T = 65536
GPU_MAX_K = 1024


class Limits(NamedTuple):
    """What a backend serves: T up to `max_t` clips, min(k, T (T - 1) / 2) up to `max_k`."""

    max_t: int
    max_k: int


class FusedOptions(NamedTuple):
    """The scalar options of one fused call, in the order of the custom ops' arguments.

    `positives` / `negatives` are codes (`POSITIVE_CODES`, `NEGATIVE_CODES`); `want_clip` /
    `want_boun` say which losses the call computes.
    """

    k: int
    tau: float
    positives: int
    negatives: int
    radius: int
    margin_max: float
    margin_base: float
    margin_scale: float
    want_clip: bool
    want_boun: bool


class SavedForBackward(NamedTuple):
    """What a fused forward keeps for its backward, besides `emb` and `labels`."""

    has_clip: Tensor  # [B] bool (uint8 in the compiled kernels): the sample has an L_clip
    has_boun: Tensor  # [B] bool: the sample has an L_boun
    lse: Tensor  # [B] float64: log-sum-exp over the positive pairs
    neg_sum: Tensor  # [B] float64: the sum over the chosen negatives
    pairs: Tensor  # [B, kcap] int64: chosen pair indices i * T + j in rank order, -1 padded
    inv_norm: Tensor  # [B, T] float64: 1 / max(||v_i||, eps), 0 for padding


class FusedOutputs(NamedTuple):
    """The outputs of a fused forward: per-sample losses and flags, and what the backward
    needs (`saved`)."""

    loss_clip: Tensor
    has_clip: Tensor
    loss_boun: Tensor
    has_boun: Tensor
    lse: Tensor
    neg_sum: Tensor
    pairs: Tensor
    inv_norm: Tensor

    @property
    def saved(self) -> SavedForBackward:
        return SavedForBackward(self.has_clip, self.has_boun, self.lse, self.neg_sum,
                                self.pairs, self.inv_norm)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 inputs, float32 for the others (docs/losses.md, section 9)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def kcap_for(k: int, T: int) -> int:
    """Length of the stored top-k list: k, or the number of unordered pairs if smaller."""
    return min(k, T * (T - 1) // 2) if T > 1 else 0
