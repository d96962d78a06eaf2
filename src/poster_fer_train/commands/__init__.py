"""The training app's subcommands, registered into ``poster-fer`` by :mod:`poster_fer.cli`."""

from __future__ import annotations

import importlib.util


def require_training_extra(command: str) -> None:
    """Refuse in one line, naming the extra, when what training needs (PyTorch, PyYAML) is not installed: the
    light runtime (``pip install poster-fer``) registers these commands but cannot run them."""
    from poster_fer.cli import UserError

    missing = []
    for module in ("torch", "yaml"):
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append("PyTorch" if module == "torch" else "PyYAML")
    if missing:
        raise UserError(f"`poster-fer {command}` needs {' and '.join(missing)}, which this install lacks: "
                        "pip install 'poster-fer[train]'")
