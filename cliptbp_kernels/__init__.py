"""cliptbp_kernels: fused ClipTBP losses for video moment retrieval."""

__version__ = "0.1.0"
