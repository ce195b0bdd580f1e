"""A reference moment retrieval pipeline built on the public API of `cliptbp_kernels`.

Data loaders (`data`: QVHighlights / TACoS annotations and features), a synthetic data set
(`synthetic`), a small model (`model`), the QVHighlights evaluation (`eval`), training
(`train`), the with/without-ClipTBP comparison (`compare`), and the evidence study (`study`:
its command line; `study_design`, `study_run`, `study_stats`, `study_plots`, `diagnostics`).
It shows the losses working end to end; the losses library never imports it. Commands:
``cliptbp-synthetic``, ``cliptbp-train``, ``cliptbp-eval``, ``cliptbp-compare`` (or
``python -m cliptbp_kernels.pipeline.<module>``).
"""
