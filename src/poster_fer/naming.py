"""Name patterns shared by the architecture registry and the weight records (torch-free, so listing the
shipped weights needs no PyTorch)."""

from __future__ import annotations

import fnmatch
import os
import sys
import warnings
from pathlib import Path

__all__ = ["name_matches", "warn_deprecated"]

# The project's three packages (the library, its apps, the training app): a warning is attributed past all of them.
_PACKAGES = tuple(str(Path(__file__).resolve().parent.with_name(name)) + os.sep
                  for name in ("poster_fer", "poster_fer_apps", "poster_fer_train"))


def name_matches(name: str, pattern: str | None) -> bool:
    """``pattern`` with ``*``/``?``/``[`` is a shell wildcard (timm's ``list_models``); otherwise a substring."""
    if not pattern:
        return True
    if any(ch in pattern for ch in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return pattern in name


def warn_deprecated(message: str) -> None:
    """A DeprecationWarning attributed to the first caller outside poster_fer.

    Why not a fixed ``stacklevel``: a retired name reaches the check through different call depths
    (``create_model``, ``get_weights``, ``Recognizer``, the CLI), and Python's default filter shows a
    DeprecationWarning only when it is attributed to ``__main__``, so a warning pinned to our own line is hidden
    from exactly the script that should change."""
    level, frame = 2, sys._getframe(1)  # stacklevel 1 is this function, 2 its caller
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(_PACKAGES):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, DeprecationWarning, stacklevel=level)
