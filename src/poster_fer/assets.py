"""Locating the project's shared assets (data, weights, fixtures) by path.

The assets are never shipped with the package (several carry licences that forbid redistribution); tests,
recipes and benchmarks read them from ``$POSTER_FER_SHARED``, defaulting to ``../shared`` beside the
repository root.
"""

from __future__ import annotations

import os
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parents[2]


def shared_dir() -> Path:
    """The shared-asset folder: ``$POSTER_FER_SHARED`` or ``<repo>/../shared``."""
    env = os.environ.get("POSTER_FER_SHARED")
    if env:
        return Path(env).expanduser().resolve()
    return (_REPO_ROOT.parent / "shared").resolve()


def shared_path(*parts: str) -> Path:
    """A path inside the shared folder (it may not exist; callers check)."""
    return shared_dir().joinpath(*parts)


def expand_shared(value: str) -> str:
    """Replace a leading ``${shared}`` in a recipe value with the shared folder, so recipes stay portable."""
    prefix = "${shared}"
    if isinstance(value, str) and value.startswith(prefix):
        return str(shared_dir()) + value[len(prefix):]
    return value
