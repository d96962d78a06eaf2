"""poster_fer.evaluation: metrics, report files and figures for evaluation runs.

The metrics need only numpy; the figures import matplotlib / scikit-learn lazily (the ``analysis`` extra).
"""

from .metrics import (
    accuracy,
    compute_metrics,
    confusion_matrix,
    macro_f1,
    mean_class_accuracy,
    negative_log_likelihood,
    per_class_accuracy,
    precision_recall_f1,
    row_normalised,
    top_k_accuracy,
)
from .plots import plot_confusion, plot_curves, tsne_subsample_indices, write_tsne
from .report import load_metrics, render_markdown, write_eval_outputs

__all__ = [
    "accuracy",
    "compute_metrics",
    "confusion_matrix",
    "load_metrics",
    "macro_f1",
    "mean_class_accuracy",
    "negative_log_likelihood",
    "per_class_accuracy",
    "plot_confusion",
    "plot_curves",
    "precision_recall_f1",
    "render_markdown",
    "row_normalised",
    "top_k_accuracy",
    "tsne_subsample_indices",
    "write_eval_outputs",
    "write_tsne",
]
