"""Deprecated alias of :mod:`poster_fer_apps.cli` (the command line moved out of the library; kept one release).

``python -m poster_fer.cli ...`` and ``from poster_fer.cli import main`` keep working and warn; the ``poster-fer``
command itself never comes here.
"""

from __future__ import annotations

import sys

from poster_fer.naming import warn_deprecated
from poster_fer_apps.cli import UserError, build_parser, main

__all__ = ["UserError", "build_parser", "main"]

warn_deprecated("poster_fer.cli moved to poster_fer_apps.cli (python -m poster_fer_apps.cli); the old name goes "
                "in the next release")

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
