"""Confidence calibration with one temperature (Guo et al., *On calibration of modern neural networks*, 2017).

Networks trained with cross-entropy are usually over-confident: a face predicted "happy" at 0.95 is right
less often than 95% of the time. Dividing the logits by one scalar ``T > 0`` fitted on held-out data fixes
most of that without changing any prediction (the argmax of ``z / T`` is the argmax of ``z``), so it is
safe to apply everywhere a probability is shown. The fitted value lives in the model's card (its
``temperature``, saved in meta.json; see :func:`poster_fer.probabilities.set_temperature`) and every inference
path divides by it before the softmax.

Inputs may be numpy arrays, nested lists or torch tensors (any device; they are copied to float64 numpy),
so the functions serve the evaluation loop and the trainer alike. Targets are integer class indices.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..probabilities import set_temperature, softmax, validate_temperature
from .metrics import negative_log_likelihood

__all__ = [
    "DEFAULT_BINS",
    "MAX_TEMPERATURE",
    "MIN_TEMPERATURE",
    "apply_temperature",
    "calibrate_model",
    "calibration_metrics",
    "expected_calibration_error",
    "fit_temperature",
    "reliability_bins",
    "softmax_with_temperature",
]

DEFAULT_BINS = 15
# A fitted temperature outside this range means the validation data cannot pin it down (see fit_temperature).
MIN_TEMPERATURE = 1e-3
MAX_TEMPERATURE = 1e3


def _to_numpy(x: Any, dtype: Any = np.float64) -> np.ndarray:
    """numpy copy of an array, list or torch tensor (detached, on the CPU; bf16/fp16 widened first)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu()
        x = (x.double() if x.is_floating_point() else x).numpy()
    return np.asarray(x, dtype=dtype)


def _logits_2d(logits: Any) -> np.ndarray:
    z = _to_numpy(logits)
    if z.ndim != 2:
        raise ValueError(f"logits must be 2-D (N, C), got shape {z.shape}")
    if z.shape[0] == 0:
        raise ValueError("logits are empty: nothing to calibrate on")
    if z.shape[1] < 2:
        raise ValueError(f"need at least 2 classes, got {z.shape[1]}")
    if not np.all(np.isfinite(z)):
        raise ValueError("logits contain NaN or infinite values")
    return z


def _targets(targets: Any, n: int, num_classes: int) -> np.ndarray:
    """Integer class indices of shape (n,) in [0, num_classes); soft or one-hot targets are refused."""
    t = _to_numpy(targets, dtype=None)
    if t.shape != (n,):
        raise ValueError(f"targets must be {n} integer class indices (shape ({n},)), got shape {t.shape}")
    if t.dtype.kind == "f":
        if not np.all(np.isfinite(t)) or not np.all(t == np.round(t)):
            raise ValueError("targets must be integer class indices, not probabilities or soft labels")
    elif t.dtype.kind not in "iu":
        raise ValueError(f"targets must be integer class indices, got dtype {t.dtype}")
    t = t.astype(np.int64)
    if n and (t.min() < 0 or t.max() >= num_classes):
        raise ValueError(f"targets must lie in [0, {num_classes}), got [{t.min()}, {t.max()}]")
    return t


def apply_temperature(logits: Any, temperature: float) -> Any:
    """``logits / temperature``, in the input's own type (torch tensor in, tensor out; otherwise numpy).

    The scaled logits keep every prediction; only the softmax confidences change.
    """
    t = validate_temperature(temperature)
    if hasattr(logits, "detach"):
        return logits / t
    return np.asarray(logits) / t


def softmax_with_temperature(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """Row softmax of ``logits / temperature`` as float64 numpy (max-subtracted, so large logits are safe)."""
    z = _to_numpy(logits) / validate_temperature(temperature)
    if z.ndim != 2:
        raise ValueError(f"logits must be 2-D (N, C), got shape {z.shape}")
    return softmax(z, dtype=np.float64)


def _nll_slope(z: np.ndarray, t: np.ndarray, beta: float) -> float:
    """d/dβ of the mean NLL of softmax(β z): E_p[z] - z_target, averaged; increasing in β (NLL is convex in β)."""
    p = softmax_with_temperature(z * beta)
    return float(np.mean((p * z).sum(axis=1) - z[np.arange(z.shape[0]), t]))


def fit_temperature(logits: Any, targets: Any, *, tol: float = 1e-7) -> float:
    """The temperature ``T`` minimising the mean NLL of ``softmax(logits / T)`` on held-out data.

    The NLL is convex in ``β = 1/T``, so its minimum is the single root of the slope; it is found by bisection
    in ``log T`` (bracketed within [:data:`MIN_TEMPERATURE`, :data:`MAX_TEMPERATURE`]), which is deterministic
    and needs no learning rate or start value, unlike a gradient optimiser. ``tol`` is the relative precision
    of ``T``. Fit on validation logits, never on the split that is reported.

    Raises ``ValueError`` for input that cannot define a temperature: empty or non-finite logits, fewer than two
    classes, targets that are not class indices, logits equal across classes in every row, or data whose NLL
    keeps falling towards ``T -> 0`` (every sample already right with a margin: the labels are separated
    perfectly) or ``T -> inf`` (the logits carry no information about the labels).
    """
    z = _logits_2d(logits)
    y = _targets(targets, z.shape[0], z.shape[1])
    if not tol > 0:
        raise ValueError(f"tol must be positive, got {tol}")
    z = z - z.mean(axis=1, keepdims=True)  # the softmax ignores a per-row shift; this keeps products small
    if not np.any(np.ptp(z, axis=1) > 0):
        raise ValueError("every row of logits is constant across classes: the temperature has no effect")
    lo, hi = math.log(1.0 / MAX_TEMPERATURE), math.log(1.0 / MIN_TEMPERATURE)  # bracket in log β
    if _nll_slope(z, y, math.exp(lo)) >= 0:
        raise ValueError(f"the NLL keeps falling as T grows past {MAX_TEMPERATURE:g}: the logits do not predict "
                         "the targets better than chance (wrong labels or class order?)")
    if _nll_slope(z, y, math.exp(hi)) <= 0:
        raise ValueError(f"the NLL keeps falling as T shrinks below {MIN_TEMPERATURE:g}: the logits separate "
                         "the targets perfectly, so no finite temperature is optimal (use more validation data)")
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if _nll_slope(z, y, math.exp(mid)) < 0:
            lo = mid
        else:
            hi = mid
    return float(math.exp(-0.5 * (lo + hi)))


def reliability_bins(probs: Any, targets: Any, n_bins: int = DEFAULT_BINS) -> dict[str, np.ndarray]:
    """Per confidence bin: sample count, accuracy and mean confidence (the reliability diagram's data).

    Confidence is each sample's largest probability; bins split [0, 1] into ``n_bins`` equal widths, bin ``k``
    holding ``edges[k] < confidence <= edges[k + 1]`` (the first also holds 0). Returns ``edges``
    (n_bins + 1), ``counts`` (int), and ``accuracy`` / ``confidence`` (NaN in empty bins); ``counts`` sums to N.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    p = _to_numpy(probs)
    if p.ndim != 2 or p.shape[1] < 1:
        raise ValueError(f"probs must be 2-D (N, C), got shape {p.shape}")
    if p.shape[0] == 0:
        raise ValueError("probs are empty")
    if not np.all(np.isfinite(p)) or np.any(p < 0) or np.any(p > 1 + 1e-6):
        raise ValueError("probs must be finite and lie in [0, 1] (pass softmax probabilities, not logits)")
    y = _targets(targets, p.shape[0], p.shape[1])
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, int(n_bins) + 1)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, int(n_bins) - 1)
    counts = np.bincount(which, minlength=int(n_bins))
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(which, weights=correct, minlength=int(n_bins)) / counts
        confidence = np.bincount(which, weights=conf, minlength=int(n_bins)) / counts
    return {"edges": edges, "counts": counts.astype(np.int64), "accuracy": accuracy, "confidence": confidence}


def expected_calibration_error(probs: Any, targets: Any, n_bins: int = DEFAULT_BINS) -> float:
    """ECE: the sample-weighted mean over confidence bins of ``|accuracy - mean confidence|``, in [0, 1].

    Equal-width bins on the largest probability, as in Guo et al. (15 bins by default), so numbers compare
    with the literature; see :func:`reliability_bins`.
    """
    bins = reliability_bins(probs, targets, n_bins)
    counts = bins["counts"]
    used = counts > 0
    gaps = np.abs(bins["accuracy"][used] - bins["confidence"][used])
    return float(np.sum(counts[used] * gaps) / counts.sum())


def calibrate_model(model: Any, logits_val: Any, targets_val: Any) -> float:
    """Fit a temperature on validation logits and store it in the model's card (saved by ``save_model``).

    For the trainer after model selection: the logits must be the model's raw (uncalibrated) outputs on a
    split that is not reported. Returns the temperature.
    """
    temperature = fit_temperature(logits_val, targets_val)
    set_temperature(model, temperature)
    return temperature


def _plain_bins(bins: Mapping[str, np.ndarray]) -> dict[str, list[Any]]:
    """Reliability bins as JSON-ready lists (empty bins' NaN -> ``None``), like the rest of the metrics."""
    return {k: [int(v) if k == "counts" else (float(v) if np.isfinite(v) else None) for v in arr.tolist()]
            for k, arr in bins.items()}


def calibration_metrics(y_true: np.ndarray, out: Mapping[str, Any], temperature: float,
                         source: str) -> dict[str, Any]:
    """ECE (and NLL) before and after the temperature, plus the reliability bins behind the diagram."""

    raw, cal = out["probs_uncalibrated"], out["probs"]
    return {
        "temperature": float(temperature),
        "ece": expected_calibration_error(raw, y_true, DEFAULT_BINS),
        "ece_calibrated": expected_calibration_error(cal, y_true, DEFAULT_BINS),
        "nll_uncalibrated": negative_log_likelihood(y_true, raw),
        "calibration": {
            "temperature_source": source,
            "n_bins": DEFAULT_BINS,
            "bins": {"uncalibrated": _plain_bins(reliability_bins(raw, y_true, DEFAULT_BINS)),
                     "calibrated": _plain_bins(reliability_bins(cal, y_true, DEFAULT_BINS))},
        },
    }
