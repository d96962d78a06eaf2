"""Deprecated alias of :mod:`poster_fer_apps.serve.runner` (kept one release; importing ``poster_fer.serve``
first already warned)."""

from __future__ import annotations

from poster_fer_apps.serve.runner import build_server, is_loopback, listen, run

__all__ = ["build_server", "is_loopback", "listen", "run"]
