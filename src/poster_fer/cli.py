"""The ``poster-fer`` command: one subcommand per module in :mod:`poster_fer.commands`.

Each command module defines ``register(subparsers)`` (adding its parser with ``func`` set) and does its heavy
imports inside the function it runs, so ``poster-fer --help`` stays fast. Errors a user can act on
(``UserError``, checkpoint and dataset errors) print one line and exit with status 2 instead of a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from . import __version__

# Subcommands in the order --help lists them; a module missing here simply is not offered.
COMMANDS = ("info", "convert", "train", "eval", "explain", "ablate", "predict", "serve", "export")


class UserError(Exception):
    """A problem with the user's input, reported without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="poster-fer", description="POSTER / POSTER++ facial expression "
                                     "recognition: models, official checkpoints, training, evaluation, inference.")
    parser.add_argument("--version", action="version", version=f"poster-fer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"poster_fer.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"poster_fer.commands.{name}":
                continue
            raise
        module.register(sub)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types whose message is enough for the user (each names the file and the problem)."""
    from .weights.safe_load import CheckpointError

    found: list[type[BaseException]] = [UserError, CheckpointError, FileNotFoundError]
    for module, name in (("poster_fer.data", "DatasetError"), ("poster_fer.faces", "ImageLoadError"),
                         ("poster_fer.faces", "DetectorError")):
        cls = getattr(importlib.import_module(module), name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            found.append(cls)
    return tuple(found)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    known = _user_errors()
    try:
        return int(args.func(args) or 0)
    except known as e:
        print(f"poster-fer {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the disk is full, a folder is not writable, ...: the file and the reason, no traceback
        where = f"{e.filename}: " if e.filename else ""
        print(f"poster-fer {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"poster-fer {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    # `python -m poster_fer.cli`: run the imported module's main, so UserError is the class commands raise
    from poster_fer.cli import main as _main

    sys.exit(_main())
