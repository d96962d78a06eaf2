"""The training app's subcommands, registered into ``poster-fer`` by :mod:`poster_fer_apps.cli`."""

from __future__ import annotations

from poster_fer._lazy import module_available
from poster_fer.errors import EXTRAS, UserError


def require_training_extra(command: str) -> None:
    """Refuse in one line, naming the extra, when what training needs (PyTorch, PyYAML) is not installed: the
    light runtime (``pip install poster-fer``) registers these commands but cannot run them."""
    missing = [EXTRAS[module][0] for module in ("torch", "yaml") if not module_available(module)]
    if missing:
        raise UserError(f"`poster-fer {command}` needs {' and '.join(missing)}, which this install lacks: "
                        "pip install 'poster-fer[train]'")
