"""One conversion of Python, numpy and PyTorch values to strict JSON, for every record the project writes.

Results files, run logs, model configs, API responses and reports all go through :func:`to_jsonable`, so a
numpy scalar, a tensor, a path or a NaN is written the same way everywhere (NaN and infinities as ``null``,
since strict JSON has no such numbers and browsers' ``JSON.parse`` refuses them). Imports nothing heavy.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

import numpy as np

__all__ = ["to_jsonable"]


def to_jsonable(obj: Any) -> Any:
    """``obj`` as JSON types: mappings (keys as strings), lists (from tuples, arrays, tensors; sets sorted), bools,
    ints, finite floats (else ``None``), strings; paths and dates as text; anything else as ``str(obj)``."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((to_jsonable(v) for v in obj), key=str)
    if isinstance(obj, np.ndarray) or (hasattr(obj, "detach") and hasattr(obj, "tolist")):  # a torch.Tensor
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, (_dt.datetime, _dt.date)):
        return obj.isoformat()
    return str(obj)
