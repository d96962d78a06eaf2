"""Locating the project's shared assets (data, weights, fixtures) by path.

The assets are never shipped with the package (several carry licences that forbid redistribution); tests,
recipes and benchmarks read them from ``$POSTER_FER_SHARED``. Without it the folder is ``../shared`` beside the
*working directory*, which is the checkout when commands run from its root, as the README's do.

Why the working directory and not this file's location: an installed wheel lives in ``site-packages``, where
"the repository around this file" does not exist, and the library does not look for a repository root
(issue 13). The test suite sets ``POSTER_FER_SHARED`` from its own location when it is unset
(``tests/conftest.py``), so tests find the assets from any directory.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "POSTER_FER_SHARED"


def shared_dir() -> Path:
    """The shared-asset folder: ``$POSTER_FER_SHARED``, else ``../shared`` beside the working directory."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser().resolve()
    return (Path.cwd().parent / "shared").resolve()


def shared_path(*parts: str) -> Path:
    """A path inside the shared folder (it may not exist; callers check)."""
    return shared_dir().joinpath(*parts)


def expand_shared(value: str) -> str:
    """Replace a leading ``${shared}`` in a recipe value with the shared folder, so recipes stay portable."""
    prefix = "${shared}"
    if isinstance(value, str) and value.startswith(prefix):
        return str(shared_dir()) + value[len(prefix):]
    return value
