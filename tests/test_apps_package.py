"""Issue 36 item 6: the CLI, its commands and the server live in ``poster_fer_apps``; the old import paths are
deprecated aliases for one release: they keep working, hand out the same objects, and say where things went."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest


def _fresh(name: str) -> None:
    for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[mod]


def test_the_old_server_imports_warn_and_give_the_same_objects():
    pytest.importorskip("fastapi")
    import poster_fer_apps.serve as new
    import poster_fer_apps.serve.runner as new_runner

    _fresh("poster_fer.serve")
    with pytest.warns(DeprecationWarning, match="poster_fer_apps.serve") as caught:
        from poster_fer.serve import ServeSettings, create_app
        from poster_fer.serve.runner import listen, run
    assert caught[0].filename == __file__  # attributed to this line, not to the alias module
    assert ServeSettings is new.ServeSettings and create_app is new.create_app
    assert listen is new_runner.listen and run is new_runner.run
    from poster_fer.serve.app import create_app as old_create_app
    from poster_fer.serve.settings import API_KEY_ENV

    assert old_create_app is new.create_app and API_KEY_ENV == new.API_KEY_ENV
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        import poster_fer.serve as old

        old.nothing  # noqa: B018


def test_the_old_cli_module_warns_and_runs_the_same_main():
    from poster_fer_apps import cli

    _fresh("poster_fer.cli")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from poster_fer.cli import UserError, main
    assert main is cli.main and UserError is cli.UserError
    assert any("poster_fer_apps.cli" in str(w.message) for w in caught)
    # under Python's default warning filters (as torchrun runs it): the note still reaches the person
    done = subprocess.run([sys.executable, "-m", "poster_fer.cli", "info", "--list"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "poster_v1_mfn64_image.ferplus" in done.stdout and "moved to poster_fer_apps.cli" in done.stderr
    import poster_fer.cli as old_cli

    assert old_cli.COMMANDS["predict"] == "poster_fer_apps.commands.predict"
    assert old_cli.COMMANDS["train"] == "poster_fer_train.commands.train"


def test_python_m_of_the_new_cli_runs_a_command():
    done = subprocess.run([sys.executable, "-m", "poster_fer_apps.cli", "info", "--list"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "DeprecationWarning" not in done.stderr, done.stderr
    assert "poster_v1_mfn64_image.ferplus" in done.stdout


def test_help_lists_the_commands_in_the_documented_order():
    """Entry points come back in no particular order: the CLI sorts its own by HELP_ORDER."""
    from poster_fer_apps.cli import HELP_ORDER, command_modules

    assert list(command_modules()) == list(HELP_ORDER)


def test_the_fast_entry_point_reader_agrees_with_importlib_metadata():
    """command_entry_points reads entry_points.txt itself (importlib.metadata costs ~55 ms of --help): the commands
    it finds, first occurrence of each name, are the ones the metadata API reports."""
    from importlib.metadata import entry_points

    from poster_fer_apps.cli import COMMAND_GROUP, command_entry_points

    fast: dict[str, str] = {}
    for name, value in command_entry_points():
        fast.setdefault(name, value)
    slow = {point.name: point.value for point in entry_points(group=COMMAND_GROUP)}
    assert fast == slow and {"predict", "train", "serve"} <= set(fast)


def test_the_entry_point_reader_parses_the_standard_format(tmp_path, monkeypatch):
    from poster_fer_apps.cli import command_entry_points

    info = tmp_path / "plugin-1.0.dist-info"
    info.mkdir()
    (info / "entry_points.txt").write_text("[console_scripts]\nx = y:z\n\n[poster_fer.commands]\n# a comment\n"
                                           "predict = plugin.predict\nbye = plugin.cli:bye [extra]\n\n[other]\n"
                                           "q = r\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path)])
    assert command_entry_points() == [("predict", "plugin.predict"), ("bye", "plugin.cli:bye")]
    # none of the project's own commands on sys.path this way: the metadata API is asked instead
    (info / "entry_points.txt").write_text("[poster_fer.commands]\nbye = plugin.cli:bye\n")
    assert ("bye", "plugin.cli:bye") in command_entry_points()
