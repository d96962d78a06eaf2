"""Facts about the machine that every results record carries (training, evaluation, benchmarks).

One place reads them, so a training record and a benchmark record describe the same machine the same way.
"""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path

__all__ = ["cpu_flags", "cpu_model", "load_average"]


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo``), else what ``platform`` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> dict[str, bool]:
    """The instruction-set flags that decide which fast paths exist (bf16 and AMX above all)."""
    flags: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    return {name: name in flags for name in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni")}


def load_average() -> list[float] | None:
    """1/5/15-minute load averages: other work competing for the cores while something was measured."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None
