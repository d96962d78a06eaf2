"""Classification metrics for facial expression recognition, as pure numpy functions.

Everything is sized by ``num_classes`` (RAF-DB and FERPlus use 7 and 8 classes, AffectNet 7 or 8), so no
function assumes a particular dataset. Labels are integer class indices in ``[0, num_classes)``.

Conventions, chosen so the numbers match how the POSTER paper reports them:

* Per-class accuracy is the recall of that class (the diagonal of the row-normalised confusion matrix,
  Table 2 of the paper). A class with no samples has no defined accuracy: it is ``NaN`` and
  :func:`mean_class_accuracy` averages over the classes that do have samples.
* Precision is ``NaN`` for a class that is never predicted and recall is ``NaN`` for a class with no
  samples. F1 is ``2·TP / (2·TP + FP + FN)``, which equals the harmonic mean of precision and recall
  where both exist and is 0 where only one side exists (the class was missed entirely or only predicted
  wrongly). F1 is ``NaN`` only for a class with neither samples nor predictions; :func:`macro_f1` leaves
  such classes out, because nothing about them was tested. (scikit-learn's ``f1_score`` with
  ``labels=range(C)`` would count them as 0 instead; the two agree whenever every class occurs.)
* :func:`compute_metrics` returns plain Python types with ``NaN`` replaced by ``None`` so the result can
  be written as strict JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "accuracy",
    "compute_metrics",
    "confusion_matrix",
    "macro_f1",
    "mean_class_accuracy",
    "negative_log_likelihood",
    "per_class_accuracy",
    "precision_recall_f1",
    "row_normalised",
    "top_k_accuracy",
]


def _as_labels(values: ArrayLike, name: str) -> np.ndarray:
    """Turn labels into a 1-D int64 array, refusing non-integral values rather than silently truncating."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(np.int64)
    if arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{name} must hold integer class indices, got non-integral values")
        return arr.astype(np.int64)
    raise ValueError(f"{name} must hold integer class indices, got dtype {arr.dtype}")


def _check_num_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    return int(num_classes)


def _check_pair(
    y_true: ArrayLike, y_pred: ArrayLike, num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Validate a pair of label vectors: same length and, when ``num_classes`` is given, in range."""
    t = _as_labels(y_true, "y_true")
    p = _as_labels(y_pred, "y_pred")
    if t.shape[0] != p.shape[0]:
        raise ValueError(f"y_true and y_pred differ in length: {t.shape[0]} vs {p.shape[0]}")
    if num_classes is not None:
        c = _check_num_classes(num_classes)
        for name, arr in (("y_true", t), ("y_pred", p)):
            bad = (arr < 0) | (arr >= c)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise ValueError(
                    f"{name} has {int(bad.sum())} label(s) outside [0, {c}); "
                    f"first is {int(arr[i])} at index {i}"
                )
    return t, p


def confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int) -> np.ndarray:
    """Counts ``conf[i, j]`` of true class ``i`` predicted as ``j``: rows are truth, columns predictions."""
    t, p = _check_pair(y_true, y_pred, num_classes)
    c = int(num_classes)
    return np.bincount(t * c + p, minlength=c * c).reshape(c, c).astype(np.int64)


def _check_confusion(conf: ArrayLike) -> np.ndarray:
    arr = np.asarray(conf)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] == 0:
        raise ValueError(f"confusion matrix must be square (C, C) with C >= 1, got shape {arr.shape}")
    if np.any(arr < 0):
        raise ValueError("confusion matrix must not have negative counts")
    return arr


def accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Fraction of samples predicted correctly, in [0, 1]; ``NaN`` for empty input (nothing was tested)."""
    t, p = _check_pair(y_true, y_pred)
    if t.size == 0:
        return float("nan")
    return float(np.mean(t == p))


def _recall_from_confusion(conf: np.ndarray) -> np.ndarray:
    support = conf.sum(axis=1).astype(np.float64)
    diag = np.diag(conf).astype(np.float64)
    out = np.full(conf.shape[0], np.nan)
    np.divide(diag, support, out=out, where=support > 0)
    return out


def per_class_accuracy(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int) -> np.ndarray:
    """Recall per class (the paper's per-class accuracy), shape (C,); ``NaN`` for a class with no samples."""
    return _recall_from_confusion(confusion_matrix(y_true, y_pred, num_classes))


def _nanmean_or_nan(values: np.ndarray) -> float:
    """Mean over the defined entries, ``NaN`` when none is defined (without numpy's empty-slice warning)."""
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def mean_class_accuracy(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int) -> float:
    """Unweighted mean of per-class accuracy over the classes that have samples, so it is not skewed by
    class imbalance (as in the paper's "mean accuracy" column)."""
    return _nanmean_or_nan(per_class_accuracy(y_true, y_pred, num_classes))


def _prf_from_confusion(conf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    conf = conf.astype(np.float64)
    tp = np.diag(conf)
    support = conf.sum(axis=1)
    predicted = conf.sum(axis=0)
    fp = predicted - tp
    fn = support - tp
    precision = np.full(tp.shape, np.nan)
    np.divide(tp, predicted, out=precision, where=predicted > 0)
    recall = np.full(tp.shape, np.nan)
    np.divide(tp, support, out=recall, where=support > 0)
    denom = 2 * tp + fp + fn
    f1 = np.full(tp.shape, np.nan)
    np.divide(2 * tp, denom, out=f1, where=denom > 0)
    return precision, recall, f1, support.astype(np.int64)


def precision_recall_f1(
    y_true: ArrayLike, y_pred: ArrayLike, num_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-class ``(precision, recall, f1, support)``, each shape (C,); see the module docstring for NaNs."""
    return _prf_from_confusion(confusion_matrix(y_true, y_pred, num_classes))


def macro_f1(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int) -> float:
    """Unweighted mean F1 over classes that occur as a label or a prediction (untested classes left out)."""
    _, _, f1, _ = precision_recall_f1(y_true, y_pred, num_classes)
    return _nanmean_or_nan(f1)


def row_normalised(conf: ArrayLike) -> np.ndarray:
    """The paper's "prediction percentage given ground truth": each row as percentages summing to 100.

    A row with no samples is left all zeros (there is nothing to distribute); per-class accuracy reports
    such a class as ``NaN``, so the two are not confused.
    """
    arr = _check_confusion(conf).astype(np.float64)
    totals = arr.sum(axis=1, keepdims=True)
    out = np.zeros_like(arr)
    np.divide(100.0 * arr, totals, out=out, where=totals > 0)
    return out


def _check_probs(probs: ArrayLike, n: int, num_classes: int) -> np.ndarray:
    """Validate class probabilities; catches the common mistake of passing logits instead of softmax."""
    arr = np.asarray(probs, dtype=np.float64)
    if arr.shape != (n, num_classes):
        raise ValueError(f"probs must have shape ({n}, {num_classes}), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("probs contain NaN or infinite values")
    if np.any(arr < 0) or np.any(arr > 1 + 1e-6):
        raise ValueError("probs must lie in [0, 1] (pass softmax probabilities, not logits)")
    if n and not np.allclose(arr.sum(axis=1), 1.0, atol=1e-2):
        raise ValueError("each row of probs must sum to 1 (pass softmax probabilities, not logits)")
    return arr


def top_k_accuracy(y_true: ArrayLike, probs: ArrayLike, k: int) -> float:
    """Fraction of samples whose true class is among the ``k`` most probable classes.

    A sample counts as a hit when fewer than ``k`` classes score strictly higher than its true class, so
    ties are resolved in the sample's favour (order-independent, unlike an argsort).
    """
    t = _as_labels(y_true, "y_true")
    arr = np.asarray(probs)
    if arr.ndim != 2:
        raise ValueError(f"probs must be 2-D (N, C), got shape {arr.shape}")
    c = arr.shape[1]
    t, _ = _check_pair(t, t, c)
    p = _check_probs(arr, t.shape[0], c)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= c:
        raise ValueError(f"k must be an integer in [1, {c}], got {k!r}")
    if t.size == 0:
        return float("nan")
    true_score = p[np.arange(t.size), t]
    rank = (p > true_score[:, None]).sum(axis=1)
    return float(np.mean(rank < k))


def negative_log_likelihood(y_true: ArrayLike, probs: ArrayLike, eps: float = 1e-12) -> float:
    """Mean ``-log p(true class)`` in nats (cross-entropy of the probabilities), clipped at ``eps``."""
    t = _as_labels(y_true, "y_true")
    arr = np.asarray(probs)
    if arr.ndim != 2:
        raise ValueError(f"probs must be 2-D (N, C), got shape {arr.shape}")
    t, _ = _check_pair(t, t, arr.shape[1])
    p = _check_probs(arr, t.shape[0], arr.shape[1])
    if t.size == 0:
        return float("nan")
    return float(-np.mean(np.log(np.clip(p[np.arange(t.size), t], eps, None))))


def _json_float(x: float) -> float | None:
    """NaN/inf are not valid JSON: report an undefined metric as ``None``."""
    x = float(x)
    return x if np.isfinite(x) else None


def compute_metrics(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    class_names: Sequence[str],
    probs: ArrayLike | None = None,
    top_k: Sequence[int] = (2, 3),
) -> dict[str, Any]:
    """All evaluation numbers for one run as a JSON-ready dict (fractions in [0, 1], ``None`` = undefined).

    Keys: ``num_samples``, ``num_classes``, ``class_names``, ``accuracy``, ``mean_class_accuracy``,
    ``macro_f1``, ``per_class`` ({name: {accuracy, precision, recall, f1, support, predicted}}),
    ``confusion`` (counts, rows true) and ``confusion_normalised`` (row percentages). When ``probs``
    (softmax output, shape (N, C)) is given, also ``nll`` and ``top_k_accuracy`` ({"k": value} for each
    ``k`` in ``top_k`` below C).
    """
    names = [str(n) for n in class_names]
    if not names:
        raise ValueError("class_names must not be empty")
    if len(set(names)) != len(names):
        raise ValueError(f"class_names must be unique, got {names}")
    c = len(names)
    t, p = _check_pair(y_true, y_pred, c)
    if t.size == 0:
        raise ValueError("cannot compute metrics for zero samples")
    conf = confusion_matrix(t, p, c)
    precision, recall, f1, support = _prf_from_confusion(conf)
    predicted = conf.sum(axis=0)
    per_class = {
        name: {
            "accuracy": _json_float(recall[i]),
            "precision": _json_float(precision[i]),
            "recall": _json_float(recall[i]),
            "f1": _json_float(f1[i]),
            "support": int(support[i]),
            "predicted": int(predicted[i]),
        }
        for i, name in enumerate(names)
    }
    out: dict[str, Any] = {
        "num_samples": int(t.size),
        "num_classes": c,
        "class_names": names,
        "accuracy": _json_float(np.trace(conf) / t.size),
        "mean_class_accuracy": _json_float(_nanmean_or_nan(recall)),
        "macro_f1": _json_float(_nanmean_or_nan(f1)),
        "per_class": per_class,
        "confusion": conf.tolist(),
        "confusion_normalised": [[float(v) for v in row] for row in row_normalised(conf)],
    }
    if probs is not None:
        probs = _check_probs(probs, t.shape[0], c)
        out["nll"] = _json_float(negative_log_likelihood(t, probs))
        out["top_k_accuracy"] = {str(k): top_k_accuracy(t, probs, k) for k in top_k if 1 < k < c}
    return out
