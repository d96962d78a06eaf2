"""``import poster_fer`` and every ``poster-fer ... --help`` stay light: no torch, OpenCV, ONNX Runtime, matplotlib
or FastAPI until a name that needs them is used (issue 25, item 2).

Why subprocesses: the test process has long imported torch, so only a fresh interpreter shows what an import
really pulls in. Each check prints the heavy modules it finds in ``sys.modules`` as JSON.
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import poster_fer
from poster_fer_apps.cli import build_parser, command_modules

HEAVY = ("torch", "cv2", "onnxruntime", "matplotlib", "fastapi")
REPORT = f"import json, sys; print('HEAVY=' + json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def heavy_loaded(stdout: str) -> list[str]:
    line = [x for x in stdout.splitlines() if x.startswith("HEAVY=")][-1]
    return json.loads(line.removeprefix("HEAVY="))


def subcommands() -> list[str]:
    """The subcommands the parser offers (read from it, so a new command is covered without editing this file)."""
    actions = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return sorted(actions[0].choices)


def test_import_loads_no_heavy_module():
    done = run_python(f"import poster_fer\nassert poster_fer.__version__\n{REPORT}")
    assert heavy_loaded(done.stdout) == []


def test_every_public_name_resolves():
    code = ("import poster_fer\n"
            "for name in poster_fer.__all__:\n"
            "    exec(f'from poster_fer import {name}')\n"
            "    assert getattr(poster_fer, name) is not None, name\n"
            "    assert name in poster_fer.__dict__, name  # cached after the first lookup\n"
            "from poster_fer import *  # noqa\n"
            "assert set(poster_fer.__all__) <= set(dir(poster_fer))\n"
            "import poster_fer.hub, poster_fer.inference, poster_fer.inference.frames, poster_fer.weights\n"
            "assert poster_fer.DEFAULT_MODEL == poster_fer.hub.DEFAULT_MODEL == 'poster_v1_mfn64_image.ferplus'\n"
            "assert poster_fer.create_model is poster_fer.hub.create_model\n"
            "assert poster_fer.Recognizer is poster_fer.inference.Recognizer\n"
            "assert poster_fer.predict is poster_fer.inference.predict\n"
            "assert poster_fer.to_frame is poster_fer.inference.frames.to_frame\n"
            "assert poster_fer.load_model is poster_fer.weights.load_model\n"
            f"{REPORT}")
    assert "torch" in heavy_loaded(run_python(code).stdout)  # the names really were imported


def test_unknown_names_and_submodules():
    code = ("import poster_fer\n"
            "try:\n"
            "    poster_fer.no_such_name\n"
            "except AttributeError as e:\n"
            "    assert 'no_such_name' in str(e)\n"
            "else:\n"
            "    raise SystemExit('no AttributeError')\n"
            "assert not hasattr(poster_fer, '_private')\n"
            "assert poster_fer.options.check_count('n', 3) == 3  # a submodule loads on attribute access, as before\n"
            f"{REPORT}")
    assert heavy_loaded(run_python(code).stdout) == []


def test_constants_the_help_shows_keep_their_old_homes():
    code = ("from poster_fer import constants\n"
            "from poster_fer.faces import DEFAULT_MAX_PIXELS as a\n"
            "from poster_fer.faces.io import DEFAULT_MAX_PIXELS as b\n"
            "from poster_fer.hub import DEFAULT_MODEL\n"
            "from poster_fer_apps.serve import ServeSettings\n"
            "assert a == b == ServeSettings().max_pixels == constants.DEFAULT_MAX_PIXELS == 50_000_000\n"
            "assert DEFAULT_MODEL == constants.DEFAULT_MODEL\n")
    run_python(code)


@pytest.mark.parametrize("command", [None, *subcommands()])
def test_help_loads_no_heavy_module(command):
    argv = ([command] if command else []) + ["--help"]
    code = ("import contextlib, io\n"
            "from poster_fer_apps.cli import main\n"
            "out = io.StringIO()\n"
            "with contextlib.redirect_stdout(out):\n"
            "    try:\n"
            f"        main({argv!r})\n"
            "    except SystemExit as e:\n"
            "        assert e.code == 0, e.code\n"
            "assert 'usage: poster-fer' in out.getvalue(), out.getvalue()\n"
            f"{REPORT}")
    assert heavy_loaded(run_python(code).stdout) == []


@pytest.mark.parametrize("command", subcommands())
def test_each_command_registers_without_heavy_modules(command):
    """One command's ``register`` alone, so a failure names the command whose parser pulls in a heavy module."""
    code = ("import argparse, importlib\n"
            f"module = importlib.import_module({command_modules()[command].__name__!r})\n"
            "module.register(argparse.ArgumentParser().add_subparsers())\n"
            f"{REPORT}")
    assert heavy_loaded(run_python(code).stdout) == []


def test_module_entry_point_help_loads_no_heavy_module():
    """``python -m poster_fer_apps.cli --help`` (runpy imports the package first, then runs the module as __main__)."""
    code = ("import contextlib, io, runpy, sys\n"
            "sys.argv = ['poster_fer_apps.cli', '--help']\n"
            "out = io.StringIO()\n"
            "with contextlib.redirect_stdout(out):\n"
            "    try:\n"
            "        runpy.run_module('poster_fer_apps.cli', run_name='__main__', alter_sys=True)\n"
            "    except SystemExit as e:\n"
            "        assert e.code == 0, e.code\n"
            "assert 'predict' in out.getvalue() and 'serve' in out.getvalue(), out.getvalue()\n"
            f"{REPORT}")
    assert heavy_loaded(run_python(code).stdout) == []


def test_subcommands_are_enumerated():
    assert {"predict", "serve", "train", "eval", "export", "info"} <= set(subcommands())


def _type_checking_imports(tree: ast.Module) -> dict[str, str]:
    """name -> module (relative to the package) of the imports under ``if TYPE_CHECKING:``."""
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom) and imp.level == 1 and imp.module
                found.update({a.asname or a.name: imp.module for a in imp.names})
    return found


def test_lazy_map_matches_all_and_the_type_checking_imports():
    """The lazy map, ``__all__`` and the imports type checkers (and tests/test_architecture.py) read agree, so a
    name added to one and not the others fails here instead of at a user's first access."""
    tree = ast.parse(Path(poster_fer.__file__).read_text(encoding="utf-8"))
    exports = poster_fer._EXPORTS
    assert set(exports) | {"__version__"} == set(poster_fer.__all__)
    assert _type_checking_imports(tree) == exports
