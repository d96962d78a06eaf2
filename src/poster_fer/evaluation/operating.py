"""Operating points: how much of the training set's class prior to take out of a model's logits.

A model trained on FER+ (neutral and happiness are 60% of its faces) leans to those classes: on FER+ test the
shipped default calls 5.7% of the non-neutral faces neutral, sadness 14%. Logit adjustment (Menon et al.,
*Long-tail learning via logit adjustment*, ICLR 2021) adds ``-tau * log(prior)`` to the logits: ``tau = 0``
keeps the model as trained (best accuracy on data with FER+'s frequencies), ``tau = 1`` targets balanced error.
Between the two lies a trade of accuracy against per-class recall, chosen here on validation by a named rule
and stored as an operating point (:mod:`poster_fer.probabilities`). Everything here is numpy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["PRIOR_RULES", "TAU_GRID", "called_as", "choose_prior_tau", "prior_bias", "prior_correction_grid"]

TAU_GRID = tuple(round(0.05 * i, 2) for i in range(21))  # 0, 0.05, ..., 1
PRIOR_RULES = {
    "mca_within_accuracy": "the best mean class accuracy among the taus within max_accuracy_drop of the "
                           "uncorrected validation accuracy (the shipped models' default point)",
    "balanced": "the best (accuracy + mean class accuracy) / 2 on validation: per-class recall counts as much as "
                "accuracy",
}


def called_as(confusion: Any, class_names: Sequence[str], target: str = "neutral") -> dict[str, Any]:
    """How many faces of the other classes a confusion matrix (rows true, columns predicted) calls ``target``:
    overall rate and per true class (issue 23's neutral over-prediction)."""
    conf = np.asarray(confusion, dtype=np.int64)
    names = [str(c) for c in class_names]
    if conf.shape != (len(names), len(names)):
        raise ValueError(f"confusion of shape {conf.shape} for {len(names)} classes")
    t = names.index(target)
    others = [i for i in range(len(names)) if i != t]
    called = int(conf[others, t].sum())
    total = int(conf[others].sum())
    return {"rate": called / total if total else None, "called": called, "of": total,
            "per_class": {names[i]: {"called": int(conf[i, t]), "support": int(conf[i].sum())} for i in others}}


def _scores(pred: np.ndarray, y: np.ndarray, n: int, neutral: int | None) -> dict[str, float | None]:
    acc = float((pred == y).mean())
    mca = float(np.mean([(pred[y == c] == c).mean() for c in range(n) if (y == c).any()]))
    rate = None
    if neutral is not None and (y != neutral).any():
        rate = float((pred[y != neutral] == neutral).mean())
    return {"accuracy": acc, "mean_class_accuracy": mca, "balanced": (acc + mca) / 2, "neutral_overprediction": rate}


def prior_bias(prior: Sequence[float], tau: float) -> np.ndarray:
    """``-tau * log(prior)``, centred (a constant does not change a softmax; centring keeps the numbers small)."""
    p = np.asarray(prior, dtype=np.float64)
    if p.ndim != 1 or (p <= 0).any() or not np.isfinite(p).all():
        raise ValueError(f"the class prior must be positive frequencies, got {p.tolist()}")
    b = -float(tau) * np.log(p / p.sum())
    return (b - b.mean()).astype(np.float32)


def prior_correction_grid(logits: Any, y_true: Any, prior: Sequence[float], class_names: Sequence[str] | None = None,
                          taus: Sequence[float] = TAU_GRID) -> list[dict[str, Any]]:
    """Accuracy, mean class accuracy, their mean and the neutral over-prediction (when a class is named
    "neutral") of the logits corrected by each ``tau``."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64)
    n = z.shape[1]
    if len(prior) != n or (class_names is not None and len(class_names) != n):
        raise ValueError(f"{n} logits per row but a prior of {len(prior)} and {len(class_names or [])} names")
    names = [str(c) for c in class_names] if class_names is not None else []
    neutral = names.index("neutral") if "neutral" in names else None
    return [{"tau": float(t), **_scores((z + prior_bias(prior, t)).argmax(1), y, n, neutral)} for t in taus]


def choose_prior_tau(grid: Sequence[Mapping[str, Any]], rule: str, max_accuracy_drop: float = 0.005) -> dict:
    """The grid entry a rule of :data:`PRIOR_RULES` picks (ties: the smaller tau, the smaller change)."""
    if rule not in PRIOR_RULES:
        raise ValueError(f"unknown rule {rule!r}; choose one of {', '.join(PRIOR_RULES)}")
    entries = sorted(grid, key=lambda g: g["tau"])
    if rule == "balanced":
        candidates = entries
        key = "balanced"
    else:
        floor = next(g for g in entries if g["tau"] == 0.0)["accuracy"] - max_accuracy_drop
        candidates = [g for g in entries if g["accuracy"] >= floor - 1e-12]
        key = "mean_class_accuracy"
    best = max(g[key] for g in candidates)
    return dict(next(g for g in candidates if g[key] == best))
