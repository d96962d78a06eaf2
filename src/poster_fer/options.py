"""Numeric options checked once, where they enter: the command line, the Python API and the server use these.

Why: an out-of-range number used to pass straight through to where it did damage quietly (``max_faces=-1``
slicing off the last face, ``detect_size=-5`` finding nothing, a threshold of 2 calling every face "no face",
NaN reaching OpenCV's assertion text). Each function returns the clean value or raises ``ValueError`` naming the
option, its range and the value; :func:`arg` turns one into an argparse ``type`` so the command line reports a
usage error (exit 2) before any model loads.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["arg", "check_count", "check_detect_size", "check_limit", "check_probability", "count_arg",
           "probability_arg"]

T = TypeVar("T")

#: Smallest detector input side: below this YuNet's coarsest feature map has no cells.
MIN_DETECT_SIZE = 32


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"{name} must be a whole number, got {value!r}")
        return int(value)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number, got {value!r}") from None


def check_count(name: str, value: Any, minimum: int = 1, optional: bool = False) -> int | None:
    """A whole number ``>= minimum`` (``None`` passes when ``optional``): batch sizes, face and frame caps."""
    if value is None and optional:
        return None
    n = _as_int(name, value)
    if n < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value!r}")
    return n


def check_limit(name: str, value: Any) -> int | None:
    """A resource limit: ``None`` or 0 mean no limit, otherwise a positive whole number (never negative)."""
    if value is None:
        return None
    n = _as_int(name, value)
    if n < 0:
        raise ValueError(f"{name} must be a positive number (0 or none: no limit), got {value!r}")
    return n or None


def check_detect_size(value: Any) -> int | None:
    """The detector's longest side: ``None`` or 0 for full resolution, else at least :data:`MIN_DETECT_SIZE`."""
    if value is None:
        return None
    n = _as_int("detect_size", value)
    if n == 0:
        return None
    if n < MIN_DETECT_SIZE:
        raise ValueError(f"detect_size must be 0 (full resolution) or at least {MIN_DETECT_SIZE} px, got {value!r}")
    return n


def check_probability(name: str, value: Any, low_open: bool = True, high_open: bool = True) -> float:
    """A finite number in the unit interval (open or closed at each end as asked): thresholds, EMA weights."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
    ok = math.isfinite(x) and (x > 0 if low_open else x >= 0) and (x < 1 if high_open else x <= 1)
    if not ok:
        raise ValueError(f"{name} must be in {lo}0, 1{hi}, got {value!r}")
    return x


def arg(check: Callable[..., T], *args: Any, **kwargs: Any) -> Callable[[str], T]:
    """An argparse ``type`` from a check: ``type=arg(check_count, "--max-faces")``. The option's own name goes
    first for the checks that take one."""

    def parse(text: str) -> T:
        try:
            return check(*args, text, **kwargs)
        except ValueError as err:
            msg = str(err)
            for name in (*args[:1], "detect_size"):  # argparse already says "argument --flag:"
                if isinstance(name, str) and msg.startswith(name + " "):
                    msg = msg[len(name) + 1:]
            raise argparse.ArgumentTypeError(msg) from None

    parse.__name__ = getattr(check, "__name__", "value")  # argparse names the type in its messages
    return parse


def count_arg(flag: str, minimum: int = 1) -> Callable[[str], int | None]:
    """argparse ``type`` for a whole-number option ``>= minimum``."""
    return arg(check_count, flag, minimum=minimum)


def probability_arg(flag: str, high_open: bool = True) -> Callable[[str], float]:
    """argparse ``type`` for a number in (0, 1) (or (0, 1] with ``high_open=False``)."""
    return arg(check_probability, flag, high_open=high_open)
