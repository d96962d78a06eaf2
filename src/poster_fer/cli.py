"""The ``poster-fer`` command: one subcommand per module in :mod:`poster_fer.commands` (and the training app's
:mod:`poster_fer_train.commands`).

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
from .errors import UserError, missing_extra

__all__ = ["COMMANDS", "UserError", "build_parser", "main"]

# Subcommands in the order --help lists them, each the module that registers it: the library's own, and the
# training app's (poster_fer_train, a second package of the same project), named as strings so the library never
# imports the app. A module missing here simply is not offered.
COMMANDS: dict[str, str] = {
    "info": "poster_fer.commands.info", "convert": "poster_fer.commands.convert",
    "train": "poster_fer_train.commands.train", "eval": "poster_fer.commands.eval",
    "explain": "poster_fer.commands.explain", "ablate": "poster_fer_train.commands.ablate",
    "predict": "poster_fer.commands.predict", "serve": "poster_fer.commands.serve",
    "export": "poster_fer.commands.export",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="poster-fer", description="POSTER / POSTER++ facial expression "
                                     "recognition: models, official checkpoints, training, evaluation, inference.")
    parser.add_argument("--version", action="version", version=f"poster-fer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for path in COMMANDS.values():
        try:
            module = importlib.import_module(path)
        except ModuleNotFoundError as e:
            if e.name is not None and (path == e.name or path.startswith(e.name + ".")):
                continue
            raise
        module.register(sub)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types whose message is enough for the user (each names the file and the problem); from the
    torch-free :mod:`poster_fer.errors`, so reporting them needs no PyTorch."""
    from .errors import USER_ERRORS

    return USER_ERRORS


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
    except ModuleNotFoundError as e:  # an optional dependency this command needs: name the extra, no traceback
        fix = missing_extra(e)
        if fix is None:
            raise
        print(f"poster-fer {args.command}: error: this command {fix}", file=sys.stderr)
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
