"""PEP 562 lazy exports for a package's ``__init__``: a public name imports its module on first use.

Why: a package ``__init__`` that imports its submodules eagerly makes every ``import`` of anything inside the
package pay for all of them; here that meant PyTorch and OpenCV for ``poster-fer --help`` and for the torch-free
ONNX runtime. Each package lists ``name -> submodule`` once; its ``TYPE_CHECKING`` imports name the same objects
for type checkers (tests/test_lazy_imports.py keeps the two equal).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def lazy_exports(package: str, namespace: dict[str, Any], exports: Mapping[str, str],
                 public: Iterable[str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` whose globals are ``namespace``.

    ``exports`` maps each public name to the submodule of ``package`` that defines it (``"io"``; a relative name
    such as ``"..errors"`` reaches outside the package); the value is
    cached in ``namespace`` on first lookup, so later lookups cost nothing. Other non-private attributes load
    the submodule of that name (``poster_fer.models``), as an eager ``__init__`` would have made them available.
    """
    public = tuple(public)

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is not None:
            value = getattr(importlib.import_module(module if module.startswith(".") else f".{module}", package), name)
            namespace[name] = value
            return value
        if not name.startswith("_"):
            try:
                return importlib.import_module(f".{name}", package)
            except ModuleNotFoundError as e:
                if e.name != f"{package}.{name}":
                    raise
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(public))

    return __getattr__, __dir__


def module_available(name: str) -> bool:
    """Whether top-level module ``name`` is installed, found without importing it (PyTorch's import costs a
    second); False for a broken install or a module masked with ``sys.modules[name] = None``."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False
