"""Triton kernels of L_clip and L_boun (docs/losses.md, sections 1 and 2), forward and backward.

Launched by `cliptbp_kernels.backends.triton.launch`; this module needs `triton` and is imported
only when it is installed. Every kernel reads the embeddings where they lie (any dtype, any
strides) and normalises on the fly, ``u_i = v_i * inv_norm_i``, with the inverse norms of
`_norm_kernel`; nothing of size ``T x T`` and no normalised copy of the embeddings is ever
written to memory.

Forward:

* `_norm_kernel`: 1 / max(||v_i||, 1e-8) per clip (float64, scaled by the largest magnitude
  so that no square overflows), 0 for padding, NaN for a clip holding NaN or Inf.
* `_prep_kernel`, one program per sample: the index lists (GT clips in (label, clip) order,
  valid clips, the window table) and the per-sample non-finite flag. The backward launches it
  again rather than keeping its lists.
* `_clip_fwd_kernel`, one program per (row block, column split, sample): the rows are the GT
  clips (``negatives="cross"``) or the valid clips (``"all"``). For each column tile it
  computes the similarity tile with ``tl.dot`` (``input_precision="ieee"``: true float32
  products), classifies every pair by label, keeps an online log-sum-exp of the positives per
  row and a running top-k of the negative candidates as int64 keys (order-preserving bits of
  the float32 similarity above the complement of the 32-bit pair index, so one integer
  top-k gives the tie rule of docs/losses.md, section 1), and writes one partial log-sum-exp
  and one partial top-k.
* `_finalize_kernel`, one program per sample: merges the partial results in a fixed order,
  recomputes the chosen similarities, computes the boundary terms (per window, the means of
  ``s_ci`` over ``I_pos`` and ``I_neg``), and writes the losses, the flags, the two values the
  backward needs and the chosen pairs in rank order.

Backward (exactly sparse, no atomics, bitwise deterministic):

* `_pos_bwd_kernel`: the GT x GT block of positive pairs, one program per GT row block and
  output column chunk, each gradient row written by exactly one program.
* `_sparse_bwd_kernel`, one program per sample: the chosen negatives' coefficients, then the
  boundary terms (the window sums recomputed as in the forward), applied window after window
  in a fixed order.
* `_chain_kernel`: the chain rule through the normalisation.
"""

from .backward import _chain_kernel, _pos_bwd_kernel, _sparse_bwd_kernel
from .forward import _clip_fwd_kernel, _finalize_kernel
from .prep import _norm_kernel, _prep_kernel

__all__ = ["_chain_kernel", "_clip_fwd_kernel", "_finalize_kernel", "_norm_kernel",
           "_pos_bwd_kernel", "_prep_kernel", "_sparse_bwd_kernel"]
