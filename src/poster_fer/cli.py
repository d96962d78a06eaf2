"""Deprecated alias of :mod:`poster_fer_apps.cli` (the command line moved out of the library; kept one release).

``python -m poster_fer.cli ...`` and ``from poster_fer.cli import main`` keep working and say where it went; the
``poster-fer`` command itself never comes here.
"""

from __future__ import annotations

import sys
from typing import Any

from poster_fer.naming import warn_deprecated
from poster_fer_apps.cli import UserError, build_parser, command_modules, main

__all__ = ["UserError", "build_parser", "main"]  # and COMMANDS, on first use

_MOVED = ("poster_fer.cli moved to poster_fer_apps.cli (python -m poster_fer_apps.cli); the old name goes in the "
          "next release")
warn_deprecated(_MOVED)


def __getattr__(name: str) -> Any:
    if name == "COMMANDS":  # name -> module, as the old table was; now read from the entry points
        return {command: module.__name__ for command, module in command_modules().items()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":  # pragma: no cover
    # run as a script, the warning is attributed to runpy, which Python's default filter hides: say it plainly
    print(f"poster-fer: note: {_MOVED}", file=sys.stderr)
    sys.exit(main())
