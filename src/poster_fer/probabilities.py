"""Calibrated probabilities: the one place that turns logits and a weight set's calibration into probabilities.

A weight set records two calibration values chosen on validation data (its card's ``logit_bias``, per class,
and ``temperature``; :attr:`poster_fer.card.ModelCard.calibration`); every path that reports probabilities (the
plain model's :meth:`~poster_fer.models.base.FERModel.predict_proba`, the Recognizer's torch and ONNX backends,
evaluation) computes ``softmax((logits + logit_bias) / temperature)`` through these functions, so they cannot
drift apart. The module needs numpy only: the ONNX runtime path uses it without torch.

A weight set may also record other *operating points* (the calibration's ``operating_points``: name -> its own
``logit_bias`` and ``temperature``, chosen on validation by a stated rule). The top-level values are the point
named ``"default"``; :func:`with_operating_point` swaps another in before any backend reads the calibration.
Why: the shipped FER+ models lean to neutral, and how much of that lean to remove is a trade of accuracy against
per-class recall that depends on the application, so the trade is offered as data, measured, not as a hidden
constant.

Each function takes a :class:`~poster_fer.card.ModelCard`, anything that has one (a model, a backend, a
Recognizer), or a metadata dict as earlier releases passed it (parsed into a card once, on entry).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .card import OPERATING_POINT_KEY, ModelCard, card_of, thaw

__all__ = ["DEFAULT_POINT", "POINT_FIELDS", "calibrate_logits", "calibrated_probabilities",
           "get_logit_bias", "get_temperature", "operating_points", "set_temperature", "softmax",
           "validate_temperature", "with_operating_point"]

DEFAULT_POINT = "default"
POINTS_KEY = "operating_points"
#: What an operating point sets: the calibration values every inference path applies.
POINT_FIELDS = ("logit_bias", "temperature")


def get_temperature(meta: Any) -> float:
    """The calibration temperature a card (or a model, or a metadata dict) stores; 1.0 when it has none.

    Every inference path divides logits by this before the softmax, so one stored number calibrates them all.
    """
    value = card_of(meta).temperature
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
    """The per-class logit offsets a card (or a model, or a metadata dict) stores (``logit_bias``), or None.

    Why: a model trained on FER+ inherits its class frequencies (neutral and happiness are 60% of the faces) and
    leans towards them on balanced or posed data. Adding ``-tau * log(prior)`` to the logits (logit adjustment)
    removes that lean; ``tau`` is chosen on validation data. Every inference path computes
    ``softmax((logits + logit_bias) / temperature)``.
    """
    card = card_of(meta)
    return _bias_values(card.calibration.get("logit_bias"), card.classes)


def _bias_values(value: Any, classes: Sequence[str]) -> list[float] | None:
    """A stored ``logit_bias`` as floats (None when absent), refusing what is not one finite number per class."""
    if value is None:
        return None
    try:
        bias = [float(v) for v in value]
    except (TypeError, ValueError):
        raise ValueError(f"logit_bias must be a list of numbers, got {thaw(value)!r}") from None
    if not all(math.isfinite(v) for v in bias):
        raise ValueError(f"logit_bias must be finite, got {thaw(value)!r}")
    if classes and len(classes) != len(bias):
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
    """``softmax((logits + logit_bias) / temperature)`` with the calibration a card (or a model, or a metadata
    dict) stores; raw softmax when it stores none."""
    card = card_of(meta)
    return softmax(calibrate_logits(logits, get_temperature(card), get_logit_bias(card)))


def operating_points(meta: Any) -> dict[str, dict[str, Any]]:
    """Every operating point a card (or a model, or a metadata dict) offers, ``"default"`` (its top-level
    calibration) first; each entry is checked (a known name, a ``logit_bias`` of one number per class, a positive
    temperature)."""
    card = card_of(meta)
    points: dict[str, dict[str, Any]] = {DEFAULT_POINT: {k: thaw(card.calibration.get(k)) for k in POINT_FIELDS}}
    extra = card.calibration.get(POINTS_KEY)
    if extra is None:
        return points
    if not isinstance(extra, Mapping):
        raise ValueError(f"{POINTS_KEY} must be an object of name -> calibration, got {_json_type(extra)}")
    for name, point in extra.items():
        if name == DEFAULT_POINT or not isinstance(name, str) or not name:
            raise ValueError(f"{POINTS_KEY}: {name!r} is not a usable name (a non-empty string other than "
                             f"{DEFAULT_POINT!r}, which is the top-level calibration)")
        if not isinstance(point, Mapping):
            raise ValueError(f"{POINTS_KEY}.{name} must be an object, got {_json_type(point)}")
        try:
            _bias_values(point.get("logit_bias"), card.classes)
            if point.get("temperature") is not None:
                validate_temperature(point.get("temperature"))
        except ValueError as err:
            raise ValueError(f"{POINTS_KEY}.{name}: {err}") from None
        points[name] = thaw(point)
    return points


def _json_type(value: Any) -> str:
    """The name of a stored value's type as the file has it (a card holds a JSON list as a tuple)."""
    return "list" if isinstance(value, tuple) else type(value).__name__


def with_operating_point(meta: Any, name: str | None) -> Any:
    """``meta`` with operating point ``name``'s calibration (``logit_bias``, ``temperature``), the choice
    recorded (``operating_point``, :attr:`~poster_fer.card.ModelCard.operating_point`): a card gives a card, a
    metadata dict a changed copy of the dict. ``None`` or ``"default"`` return ``meta`` as it is. Raises
    ValueError naming the points the record has when ``name`` is not one of them."""
    if name is None or name == DEFAULT_POINT:
        return meta
    card = card_of(meta)
    points = operating_points(card)
    if name not in points:
        raise ValueError(f"no operating point {name!r} in this model's calibration; it has: {', '.join(points)}")
    chosen = {k: points[name][k] for k in POINT_FIELDS if points[name].get(k) is not None}
    if isinstance(meta, ModelCard):
        calibration = {**{k: v for k, v in card.calibration.items() if k not in POINT_FIELDS}, **chosen}
        return dataclasses.replace(card, calibration=calibration, extra={**card.extra, OPERATING_POINT_KEY: name})
    out = {k: v for k, v in meta.items() if k not in POINT_FIELDS}
    return {**out, **chosen, OPERATING_POINT_KEY: name}
