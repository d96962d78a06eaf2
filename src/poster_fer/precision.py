"""Numeric precision: one place that turns a precision name into an autocast dtype and a context.

Training (``train.amp``), inference backends (``autocast=``) and benchmarks all accept the same names, so
``"bf16"`` means the same thing everywhere and ``"auto"`` makes the same choice everywhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["PRECISION_NAMES", "autocast", "cpu_has_fast_bf16", "resolve_precision"]

_NAMES: dict[str, torch.dtype | None] = {
    "none": None, "fp32": None, "float32": None, "off": None,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
}
PRECISION_NAMES = ("auto", *_NAMES)


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU runs bf16 natively (AVX512-BF16/AMX). Without it bf16 autocast is emulated and, on the
    2-core AVX2 machines used here, about 10x slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(name: Any, device: torch.device | str, setting: str = "precision") -> torch.dtype | None:
    """``auto`` | ``bf16`` | ``fp16`` | ``fp32``/``none`` (and their long names) -> an autocast dtype or None.

    ``auto`` picks bf16 on CUDA cards that support it (else fp16) and on CPUs with native bf16, and full
    precision elsewhere. ``setting`` names the option in the error message (e.g. ``train.amp``).
    """
    if name is None or name is False:
        return None
    key = str(name).lower()
    if key == "auto":
        dev = torch.device(device)
        if dev.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if dev.type == "cpu" and cpu_has_fast_bf16() else None
    if key not in _NAMES:
        raise ValueError(f"{setting} must be one of {', '.join(PRECISION_NAMES)}, not {name!r}")
    return _NAMES[key]


def autocast(device: torch.device | str, dtype: torch.dtype | None) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of autocast contexts for ``device``'s type (``dtype`` None: full precision, a no-op)."""
    if dtype is None:
        return contextlib.nullcontext
    device_type = torch.device(device).type
    return lambda: torch.autocast(device_type=device_type, dtype=dtype)
