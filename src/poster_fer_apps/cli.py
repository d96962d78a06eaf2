"""The ``poster-fer`` command. Its subcommands are found through the ``poster_fer.commands`` entry-point group
(pyproject.toml): this app's own (:mod:`poster_fer_apps.commands`), the training app's
(:mod:`poster_fer_train.commands`), and any installed plug-in's. Neither the library nor this module lists them.

Each command module defines ``register(subparsers)`` (adding its parser with ``func`` set) and does its heavy
imports inside the function it runs, so ``poster-fer --help`` stays fast. Errors a user can act on
(``UserError``, checkpoint and dataset errors) print one line and exit with status 2 instead of a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from poster_fer import __version__
from poster_fer.errors import UserError, missing_extra

__all__ = ["COMMAND_GROUP", "HELP_ORDER", "UserError", "build_parser", "command_entry_points", "command_modules",
           "main"]

COMMAND_GROUP = "poster_fer.commands"
# The order --help lists the project's own commands in (the order a newcomer meets them); commands from other
# packages follow, alphabetically. A name here that no entry point provides is simply not offered.
HELP_ORDER = ("info", "convert", "train", "eval", "explain", "ablate", "predict", "serve", "export")


def _help_rank(point: tuple[str, str]) -> tuple[int, str]:
    name = point[0]
    return (HELP_ORDER.index(name) if name in HELP_ORDER else len(HELP_ORDER), name)


def _group_in(path: str, group: str) -> list[tuple[str, str]]:
    """The ``name = value`` lines of section ``[group]`` of one entry_points.txt (none when it is absent)."""
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return []
    found, inside = [], False
    for raw in lines:
        line = raw.strip()
        if line.startswith("["):
            inside = line == f"[{group}]"
        elif inside and "=" in line and not line.startswith(("#", ";")):
            name, _, value = line.partition("=")
            found.append((name.strip(), value.split("[")[0].strip()))  # "module:attr [extra]" -> "module:attr"
    return found


def command_entry_points(group: str = COMMAND_GROUP) -> list[tuple[str, str]]:
    """(name, "module[:attr]") of every installed distribution's ``group`` entry points, in sys.path order.

    Why not ``importlib.metadata.entry_points``: importing it costs about 55 ms (email, zipfile, csv ...), which
    was half of ``poster-fer --help``. This reads the same files (``*.dist-info`` / ``*.egg-info``
    ``entry_points.txt`` on sys.path, the standard format) with nothing but ``os``; the metadata API is the
    fallback when nothing is found this way (an installer that keeps metadata elsewhere), and a test checks both
    agree."""
    points: list[tuple[str, str]] = []
    for folder in sys.path:
        try:
            entries = list(os.scandir(folder or "."))
        except OSError:
            continue
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.name.endswith((".dist-info", ".egg-info")) and entry.is_dir():
                points += _group_in(os.path.join(entry.path, "entry_points.txt"), group)
    if not any(name in HELP_ORDER for name, _ in points):  # not even our own: ask the metadata API
        from importlib.metadata import entry_points

        points = [(point.name, point.value) for point in entry_points(group=group)]
    return points


def _load(value: str) -> ModuleType:
    module, _, attr = value.partition(":")
    loaded = importlib.import_module(module.strip())
    return getattr(loaded, attr.strip()) if attr else loaded


def command_modules() -> dict[str, ModuleType]:
    """name -> the module that registers the command, in --help order. A command whose module cannot be imported
    because the module itself is absent (a partial install) is left out; any other import error propagates."""
    points = sorted(command_entry_points(), key=_help_rank)
    if not points:
        raise SystemExit("poster-fer: no commands are registered: install the project (pip install . or "
                         "pip install -e .) so its entry points exist")
    modules: dict[str, ModuleType] = {}
    for name, value in points:
        if name in modules:  # the same project installed twice (editable + wheel): the first one wins
            continue
        try:
            modules[name] = _load(value)
        except ModuleNotFoundError as e:
            if e.name is not None and (value == e.name or value.startswith(e.name + ".")):
                continue
            raise
    return modules


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="poster-fer", description="POSTER / POSTER++ facial expression "
                                     "recognition: models, official checkpoints, training, evaluation, inference.")
    parser.add_argument("--version", action="version", version=f"poster-fer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in command_modules().values():
        module.register(sub)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types whose message is enough for the user (each names the file and the problem); from the
    torch-free :mod:`poster_fer.errors`, so reporting them needs no PyTorch."""
    from poster_fer.errors import USER_ERRORS

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
    # `python -m poster_fer_apps.cli` (torchrun uses it): run the imported module's main
    from poster_fer_apps.cli import main as _main

    sys.exit(_main())
