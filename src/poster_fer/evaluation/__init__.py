"""poster_fer.evaluation: metrics, report files and figures for evaluation runs, the evaluation loop,
confidence calibration (one softmax temperature, ECE, reliability diagrams) and relevance maps (the paper's
Fig. 7). The Table-4 ablation runner, which trains, is an app: :mod:`poster_fer_train.ablation`.

The metrics need only numpy; the figures import matplotlib / scikit-learn lazily (the ``analysis`` extra).
"""

from .calibration import (
    apply_temperature,
    calibrate_model,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
    softmax_with_temperature,
)
from .class_match import ClassMismatchError, match_classes
from .evaluate import EvalOptions, evaluate_dataset, fit_dataset_temperature, run_evaluation
from .explain import explain_figure, relevance_maps
from .loop import EvalOutput, PredictOptions, predict_split
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
from .plots import (
    TsneOptions,
    plot_confusion,
    plot_curves,
    plot_reliability,
    tsne_subsample_indices,
    write_tsne,
)
from .report import load_metrics, render_markdown, write_eval_outputs

__all__ = [
    "ClassMismatchError",
    "EvalOutput",
    "PredictOptions",
    "TsneOptions",
    "accuracy",
    "apply_temperature",
    "calibrate_model",
    "compute_metrics",
    "confusion_matrix",
    "EvalOptions",
    "evaluate_dataset",
    "expected_calibration_error",
    "explain_figure",
    "fit_dataset_temperature",
    "fit_temperature",
    "load_metrics",
    "macro_f1",
    "match_classes",
    "mean_class_accuracy",
    "negative_log_likelihood",
    "per_class_accuracy",
    "plot_confusion",
    "predict_split",
    "plot_curves",
    "plot_reliability",
    "precision_recall_f1",
    "relevance_maps",
    "reliability_bins",
    "render_markdown",
    "row_normalised",
    "run_evaluation",
    "softmax_with_temperature",
    "top_k_accuracy",
    "tsne_subsample_indices",
    "write_eval_outputs",
    "write_tsne",
]
