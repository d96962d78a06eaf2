"""Name patterns shared by the architecture registry and the weight records (torch-free, so listing the
shipped weights needs no PyTorch)."""

from __future__ import annotations

import fnmatch

__all__ = ["name_matches"]


def name_matches(name: str, pattern: str | None) -> bool:
    """``pattern`` with ``*``/``?``/``[`` is a shell wildcard (timm's ``list_models``); otherwise a substring."""
    if not pattern:
        return True
    if any(ch in pattern for ch in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return pattern in name
