"""Deprecated alias of :mod:`poster_fer_apps.serve.app` (kept one release; importing ``poster_fer.serve`` first
already warned)."""

from __future__ import annotations

from poster_fer_apps.serve.app import *  # noqa: F403
from poster_fer_apps.serve.app import __all__  # noqa: F401
