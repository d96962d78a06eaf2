"""``poster-fer serve``: an HTTP API and a web page over a :class:`~poster_fer.inference.Recognizer`.

Typical use (needs the ``serve`` extra: ``pip install 'poster-fer[serve]'``)::

    from poster_fer import Recognizer
    from poster_fer_apps.serve import ServeSettings, create_app

    app = create_app(Recognizer(), ServeSettings(api_key="secret"))   # any ASGI server runs it

This package is an application on top of the library; the library never imports it. ``create_app`` is imported
on first use, so the settings (and ``poster-fer --help``) work without the optional web dependencies.
See docs/serving.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import ApiError
from .settings import API_KEY_ENV, DEFAULT_MAX_BODY_BYTES, ServeSettings

if TYPE_CHECKING:
    from .app import create_app

__all__ = ["API_KEY_ENV", "DEFAULT_MAX_BODY_BYTES", "ApiError", "ServeSettings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
