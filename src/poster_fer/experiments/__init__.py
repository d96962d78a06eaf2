"""Experiments: multi-run studies built on training and evaluation (the paper's Table-4 ablation).

An app-layer package: it may import :mod:`poster_fer.training`; the library (models, weights, data, faces,
evaluation, inference) never imports it.
"""

from .ablation import VARIANTS, Variant, parse_variants, render_ablation_markdown, run_ablation, variant_recipe

__all__ = ["VARIANTS", "Variant", "parse_variants", "render_ablation_markdown", "run_ablation", "variant_recipe"]
