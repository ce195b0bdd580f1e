"""cliptbp_kernels: fused ClipTBP losses for video moment retrieval.

The three losses of ClipTBP (clip-pair contrastive loss with top-k hard negatives, boundary
margin loss, auxiliary boundary regression loss) as a readable PyTorch reference and as fused
kernels that never build the T x T similarity matrix (docs/losses.md), plus adapters for
common baselines (docs/integrations.md).

Layout: this module and `api`, `criterion`, `aux_loss`, `labels`, `adapters`, `distributed`
are the public face; `backends` holds the reference and the fused backends (cpu, triton,
cuda) and the registry that picks one; `pipeline` is a reference moment retrieval pipeline
(data, model, evaluation, training) built on the public face, which the library never
imports.
"""

from . import adapters, distributed
from .api import boundary_margin_loss, clip_boundary_losses, clip_pair_loss, hard_negative_pairs
from .aux_loss import boundary_aux_loss
from .backends import available_backends
from .criterion import ClipTBPLoss
from .labels import windows_to_labels

__version__ = "0.2.0"

__all__ = [
    "ClipTBPLoss",
    "adapters",
    "available_backends",
    "boundary_aux_loss",
    "boundary_margin_loss",
    "clip_boundary_losses",
    "clip_pair_loss",
    "distributed",
    "hard_negative_pairs",
    "windows_to_labels",
]
