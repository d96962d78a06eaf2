"""Facts about the machine and the code that every results record carries (training, evaluation, benchmarks).

One place reads them, so a training record and a benchmark record describe the same machine the same way.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["cpu_flags", "cpu_model", "git_revision", "git_state", "load_average"]

# git is asked from this package's own folder and finds the enclosing checkout itself (none for an installed
# wheel, so the record says None); the library never computes a repository root (issue 13).
_PACKAGE_DIR = Path(__file__).resolve().parent


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


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=_PACKAGE_DIR, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


@functools.cache
def _pinned_git_state() -> tuple[str | None, bool | None]:
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return commit, None if status is None else bool(status)


def git_state() -> dict[str, Any]:
    """``{commit, dirty}`` of the checkout this package was imported from (``None`` values outside git).

    Read once per process: a process runs the code it imported, so a commit made while a long run trains must
    not be credited with that run's results. Long jobs call it at their start to pin it. Each call returns a
    new dict, so a record that edits its copy cannot change what later records say.
    """
    commit, dirty = _pinned_git_state()
    return {"commit": commit, "dirty": dirty}


def git_revision() -> str | None:
    """:func:`git_state` as one string for run records: the commit, ``+dirty`` when tracked files differ."""
    state = git_state()
    if state["commit"] is None:
        return None
    return state["commit"] + ("+dirty" if state["dirty"] else "")
