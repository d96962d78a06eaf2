"""Calibrated probabilities: the one place that turns logits and a weight set's calibration into probabilities.

A weight set records two calibration values chosen on validation data (``meta["logit_bias"]``, per class, and
``meta["temperature"]``); every path that reports probabilities (the plain model's
:meth:`~poster_fer.models.base.FERModel.predict_proba`, the Recognizer's torch and ONNX backends, evaluation)
computes ``softmax((logits + logit_bias) / temperature)`` through these functions, so they cannot drift apart.
The module needs numpy only: the ONNX runtime path uses it without torch.

A weight set may also record other *operating points* (``meta["operating_points"]``: name -> its own
``logit_bias`` and ``temperature``, chosen on validation by a stated rule). The top-level values are the point
named ``"default"``; :func:`with_operating_point` swaps another in before any backend reads the calibration.
Why: the shipped FER+ models lean to neutral, and how much of that lean to remove is a trade of accuracy against
per-class recall that depends on the application, so the trade is offered as data, measured, not as a hidden
constant.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["DEFAULT_POINT", "calibrate_logits", "calibrated_probabilities", "get_logit_bias", "get_temperature",
           "operating_points", "set_temperature", "softmax", "validate_temperature", "with_operating_point"]

DEFAULT_POINT = "default"
POINTS_KEY = "operating_points"
_POINT_FIELDS = ("logit_bias", "temperature")


def get_temperature(meta: Any) -> float:
    """The calibration temperature a metadata record (or a model with ``.meta``) stores; 1.0 when it has none.

    Every inference path divides logits by this before the softmax, so one stored number calibrates them all.
    """
    record = meta if isinstance(meta, dict) else (getattr(meta, "meta", None) or {})
    value = record.get("temperature")
    return 1.0 if value is None else validate_temperature(value)


def set_temperature(target: Any, temperature: float) -> dict[str, Any]:
    """Store ``temperature`` in a metadata dict, or in a model's card; returns the metadata dict.

    The value is saved by :func:`save_model` and carried into ONNX exports.
    """
    value = validate_temperature(temperature)
    if isinstance(target, dict):
        target["temperature"] = value
        return target
    import dataclasses

    card = target.card  # a model: its card gets the temperature (the one description)
    target.card = dataclasses.replace(card, calibration={**card.calibration, "temperature": value})
    return target.meta


def get_logit_bias(meta: Any) -> list[float] | None:
    """The per-class logit offsets a record stores (``meta["logit_bias"]``), or None.

    Why: a model trained on FER+ inherits its class frequencies (neutral and happiness are 60% of the faces) and
    leans towards them on balanced or posed data. Adding ``-tau * log(prior)`` to the logits (logit adjustment)
    removes that lean; ``tau`` is chosen on validation data. Every inference path computes
    ``softmax((logits + logit_bias) / temperature)``.
    """
    record = meta if isinstance(meta, dict) else (getattr(meta, "meta", None) or {})
    value = record.get("logit_bias")
    if value is None:
        return None
    try:
        bias = [float(v) for v in value]
    except (TypeError, ValueError):
        raise ValueError(f"logit_bias must be a list of numbers, got {value!r}") from None
    if not all(math.isfinite(v) for v in bias):
        raise ValueError(f"logit_bias must be finite, got {value!r}")
    classes = record.get("classes")
    if classes is not None and len(classes) != len(bias):
        raise ValueError(f"logit_bias has {len(bias)} values for {len(classes)} classes")
    return bias


def calibrate_logits(logits: np.ndarray, temperature: float = 1.0,
                     logit_bias: np.ndarray | Sequence[float] | None = None) -> np.ndarray:
    """``(logits + logit_bias) / temperature`` in float32: the deployed calibration, computed in one place for
    the torch and ONNX backends and for evaluation, so their probabilities cannot drift apart."""
    out = np.asarray(logits, dtype=np.float32)
    if logit_bias is not None:
        out = out + np.asarray(logit_bias, dtype=np.float32)
    return out if temperature == 1.0 else out / np.float32(temperature)


def validate_temperature(value: Any) -> float:
    """``value`` as a float, refusing what cannot scale logits (zero, negative, NaN, inf, not a number)."""
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"temperature must be a positive number, got {value!r}") from None
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be a positive finite number, got {value!r}")
    return t


def softmax(logits: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """Row softmax over the last axis, stable for large logits: the project's one softmax (inference in float32;
    temperature fitting asks for float64)."""
    z = np.asarray(logits, dtype=dtype)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(dtype)


def calibrated_probabilities(logits: np.ndarray, meta: Any) -> np.ndarray:
    """``softmax((logits + logit_bias) / temperature)`` with the calibration a record (or a model's ``meta``)
    stores; raw softmax when it stores none."""
    bias = get_logit_bias(meta)
    return softmax(calibrate_logits(logits, get_temperature(meta), bias))


def operating_points(meta: Any) -> dict[str, dict[str, Any]]:
    """Every operating point a record offers, ``"default"`` (its top-level calibration) first; each entry is
    checked (a known name, a ``logit_bias`` of one number per class, a positive temperature)."""
    record = meta if isinstance(meta, dict) else (getattr(meta, "meta", None) or {})
    points: dict[str, dict[str, Any]] = {DEFAULT_POINT: {k: record.get(k) for k in _POINT_FIELDS}}
    extra = record.get(POINTS_KEY)
    if extra is None:
        return points
    if not isinstance(extra, dict):
        raise ValueError(f"{POINTS_KEY} must be an object of name -> calibration, got {type(extra).__name__}")
    for name, point in extra.items():
        if name == DEFAULT_POINT or not isinstance(name, str) or not name:
            raise ValueError(f"{POINTS_KEY}: {name!r} is not a usable name (a non-empty string other than "
                             f"{DEFAULT_POINT!r}, which is the top-level calibration)")
        if not isinstance(point, dict):
            raise ValueError(f"{POINTS_KEY}.{name} must be an object, got {type(point).__name__}")
        scoped = {"classes": record.get("classes"), **{k: point.get(k) for k in _POINT_FIELDS}}
        try:
            get_logit_bias(scoped)
            get_temperature(scoped)
        except ValueError as err:
            raise ValueError(f"{POINTS_KEY}.{name}: {err}") from None
        points[name] = dict(point)
    return points


def with_operating_point(meta: dict[str, Any], name: str | None) -> dict[str, Any]:
    """A copy of ``meta`` whose calibration (``logit_bias``, ``temperature``) is operating point ``name``'s, and
    which records the choice in ``meta["operating_point"]``; ``None`` or ``"default"`` return ``meta`` as it is.
    Raises ValueError naming the points the record has when ``name`` is not one of them."""
    if name is None or name == DEFAULT_POINT:
        return meta
    points = operating_points(meta)
    if name not in points:
        raise ValueError(f"no operating point {name!r} in this model's calibration; it has: {', '.join(points)}")
    out = dict(meta)
    for key in _POINT_FIELDS:
        if points[name].get(key) is None:
            out.pop(key, None)
        else:
            out[key] = points[name][key]
    out["operating_point"] = name
    return out
