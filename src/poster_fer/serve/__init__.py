"""Deprecated alias of :mod:`poster_fer_apps.serve` (the server moved out of the library; kept one release).

``from poster_fer.serve import ServeSettings, create_app`` and ``from poster_fer.serve.runner import listen, run``
(the forms docs/serving.md showed) keep working and warn once per import.
"""

from __future__ import annotations

import importlib
from typing import Any

from poster_fer.naming import warn_deprecated

__all__ = ["API_KEY_ENV", "DEFAULT_MAX_BODY_BYTES", "ApiError", "ServeSettings", "create_app"]

warn_deprecated("poster_fer.serve moved to poster_fer_apps.serve; the old name goes in the next release")


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("poster_fer_apps.serve"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
