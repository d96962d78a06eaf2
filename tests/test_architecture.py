"""Import direction: the library (``poster_fer``: models, weights, data, faces, evaluation, inference, ...) never
imports the apps (``poster_fer_apps``: the CLI, its commands, the server; ``poster_fer_train``: training), and the
library's top-level parts form no import cycle.

Every import is read from the source, including those inside functions, so a lazy import cannot hide a
dependency that points the wrong way.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import poster_fer

SRC = Path(poster_fer.__file__).parent
LIBRARY = {"_lazy", "architectures", "assets", "bulk", "card", "checksums", "classes", "constants", "data", "devices",
           "distributed", "errors", "evaluation", "export", "faces", "fastpath", "hub", "inference", "jsonable",
           "models", "naming", "options", "precision", "pretrained", "probabilities", "provenance", "samples",
           "web", "weights"}
# Left in the library's folder for one release: deprecated aliases that import the moved app and nothing else.
ALIASES = {"cli", "serve"}
APPS_PACKAGE = "poster_fer_apps"
TRAIN_APP = "poster_fer_train"
APPS = SRC.parent / APPS_PACKAGE
FACADE = "__init__"  # ``poster_fer/__init__.py``: re-exports the library


def _part(rel: Path) -> str:
    return rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 or rel.name != "__init__.py" else FACADE


def import_edges() -> dict[str, set[tuple[str, str]]]:
    """part -> {(imported part, 'file:line')} for every ``poster_fer`` import in the package."""
    edges: dict[str, set[tuple[str, str]]] = defaultdict(set)
    subpackages = {p.name.removesuffix(".py") for p in SRC.iterdir()
                   if p.suffix == ".py" or (p / "__init__.py").exists()}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        part = _part(rel)
        package = ["poster_fer", *rel.parent.parts]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[list[str]] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - node.level + 1]
                    module = base + (node.module.split(".") if node.module else [])
                elif node.module and node.module.split(".")[0] == "poster_fer":
                    module = node.module.split(".")
                else:
                    continue
                if len(module) == 1:  # from poster_fer import x: a subpackage, or a name of the facade
                    targets = [module + [a.name] if a.name in subpackages else module + [FACADE] for a in node.names]
                else:
                    targets = [module]
            elif isinstance(node, ast.Import):
                targets = [a.name.split(".") for a in node.names if a.name.split(".")[0] == "poster_fer"]
            for t in targets:
                target = t[1] if len(t) > 1 else FACADE
                if target != part:
                    edges[part].add((target, f"{rel}:{node.lineno}"))
    return edges


def test_every_part_is_classified():
    parts = {_part(p.relative_to(SRC)) for p in SRC.rglob("*.py")}
    assert parts - LIBRARY - ALIASES - {FACADE} == set(), "classify new top-level parts as LIBRARY or ALIASES"


def test_library_never_imports_the_facade_or_an_alias():
    bad = sorted(f"{where}: {part} -> {target}" for part, es in import_edges().items() if part in LIBRARY
                 for target, where in es if target in ALIASES or target == FACADE)
    assert not bad, "library code importing an alias (or the package facade, which imports it back):\n" + "\n".join(bad)


def absolute_imports(folder: Path) -> list[tuple[str, str]]:
    """(module imported, 'file:line') for every absolute import under ``folder``, inside functions too."""
    found = []
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            found += [(n, f"{path.relative_to(folder.parent)}:{node.lineno}") for n in names]
    return found


def _top(where: str) -> str:
    """'poster_fer/serve/runner.py:7' -> 'serve': the library's top-level part a location is in."""
    return Path(where.split(":")[0]).parts[1].removesuffix(".py")


def test_the_library_imports_no_app():
    """The apps are packages of their own; the library reaches neither (the aliases only point at the app)."""
    bad = [f"{where}: {name}" for name, where in absolute_imports(SRC)
           if name.split(".")[0] in (TRAIN_APP, APPS_PACKAGE) and _top(where) not in ALIASES]
    assert not bad, "poster_fer importing an app:\n" + "\n".join(bad)
    aliased = {name.split(".")[0] for name, where in absolute_imports(SRC) if _top(where) in ALIASES}
    assert aliased <= {"poster_fer", APPS_PACKAGE, "__future__", "importlib", "typing", "sys"}, aliased
    train = SRC.parent / TRAIN_APP
    assert (train / "__init__.py").is_file() and not (SRC / "training").exists() and not (SRC / "experiments").exists()
    assert not (SRC / "commands").exists()
    for alias in (SRC / "cli.py", *(SRC / "serve").glob("*.py")):  # the aliases hold no code of their own
        assert len(alias.read_text().splitlines()) < 40, f"{alias} should only point at poster_fer_apps"


def test_the_cli_finds_the_training_commands_through_entry_points_only():
    """poster_fer_apps never imports the training app: ``train`` and ``ablate`` come from the entry-point group."""
    from poster_fer_apps.cli import command_modules

    bad = [f"{where}: {name}" for name, where in absolute_imports(APPS) if name.split(".")[0] == TRAIN_APP]
    assert not bad, "poster_fer_apps importing poster_fer_train:\n" + "\n".join(bad)
    modules = command_modules()
    assert modules["train"].__name__ == "poster_fer_train.commands.train"
    assert modules["predict"].__name__ == "poster_fer_apps.commands.predict"


def test_facade_reexports_only_the_library():
    assert {t for t, _ in import_edges()[FACADE]} <= LIBRARY


def test_no_cycle_between_top_level_parts():
    edges = {p: {t for t, _ in es if t != FACADE} for p, es in import_edges().items() if p != FACADE}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        for nxt in sorted(edges.get(node, ())):
            if nxt in stack:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif len(stack) < 12:
                visit(nxt, stack + [nxt])

    for start in sorted(edges):
        visit(start, [start])
    assert not cycles, "import cycles between top-level parts: " + "; ".join(" -> ".join(c) for c in cycles[:5])


def test_the_checker_sees_lazy_imports(tmp_path):
    """The walk covers imports inside functions (the kind that used to hide the evaluation -> training cycle)."""
    tree = ast.parse("def f():\n    from ..training import fit\n")
    found = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert found and found[0].module == "training" and found[0].level == 2


def _from_file(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Name) and n.id == "__file__" for n in ast.walk(node))


def _outside_package(tree: ast.AST, depth: int) -> list[int]:
    """Lines where ``Path(__file__)`` is walked up past the package folder (``.parents[k]`` or chained
    ``.parent``); ``depth`` is how many folders below ``poster_fer/`` the module sits."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute)
                and node.value.attr == "parents" and isinstance(node.slice, ast.Constant)
                and isinstance(node.slice.value, int) and node.slice.value > depth and _from_file(node.value)):
            lines.add(node.lineno)
        ups, cur = 0, node
        while isinstance(cur, ast.Attribute) and cur.attr == "parent":
            ups, cur = ups + 1, cur.value
        if ups > depth + 1 and _from_file(cur):
            lines.add(node.lineno)
    return sorted(lines)


def test_library_never_looks_for_the_repository_root():
    """An installed wheel has no repository around it: code finds its own files (recipes, shipped models) inside
    the package and everything else through settings (``POSTER_FER_SHARED``), never by walking up from
    ``__file__`` out of ``poster_fer/``."""
    bad = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        for line in _outside_package(ast.parse(path.read_text(encoding="utf-8")), len(rel.parts) - 1):
            bad.append(f"{rel}:{line}")
    assert not bad, "code walking out of the package to find the repository: " + ", ".join(bad)


def test_the_root_checker_fires():
    assert _outside_package(ast.parse("from pathlib import Path\nR = Path(__file__).resolve().parents[2]\n"), 0)
    assert _outside_package(ast.parse("R = Path(__file__).parent.parent\n"), 0)
    assert not _outside_package(ast.parse("C = Path(__file__).resolve().parents[1] / 'configs'\n"), 1)
    assert not _outside_package(ast.parse("C = Path(__file__).parent / 'pretrained'\n"), 0)
    assert not _outside_package(ast.parse("d = Path(user_file).parent.parent\n"), 0)


def test_every_file_and_function_docs_architecture_names_exists():
    """docs/architecture.md is how a newcomer finds things: every ``file.py`` it names exists (in the library,
    the training app, the repository, tests or benchmarks), and every ``file.py:name`` defines ``name``."""
    import re

    repo = SRC.parents[1]
    text = (repo / "docs" / "architecture.md").read_text()
    roots = [SRC, repo / "src" / TRAIN_APP, repo / "src", repo, repo / "tests", repo / "benchmarks"]
    missing = []
    for path, _, name in set(re.findall(r"((?:[\w]+/)*[\w]+\.py)(:(\w+))?", text)):
        found = [r / path for r in roots if (r / path).is_file()]
        if "/" not in path:  # a bare name in a sentence about its folder: any file of that name in the package
            found += list((repo / "src").rglob(path))
        if not found:
            missing.append(path)
        elif name and not any(re.search(rf"^\s*(def|class) {name}\b|^{name}\s*[:=]", f.read_text(), re.M)
                              for f in found):
            missing.append(f"{path}:{name}")
    assert not missing, f"docs/architecture.md names what does not exist: {sorted(missing)}"


def test_no_module_imports_another_modules_private_names():
    """A leading underscore means "this module's own": what another module needs is public there (issue 36)."""
    import ast

    offenders = []
    for path in sorted((SRC.parent).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                offenders += [f"{path.relative_to(SRC.parent)}: {node.module or '.'} {a.name}" for a in node.names
                              if a.name.startswith("_") and not a.name.startswith("__")]
    assert not offenders, offenders


def test_only_the_card_reads_a_metadata_dict():
    """Issue 36: a model has one typed description; code outside the card's parser (card.py) reads the card, not a
    metadata dict (``meta.get(...)`` / ``meta[...]``), so the two cannot drift apart again."""
    import re

    pattern = re.compile(r"\bmeta\.get\(|\bmeta\[")
    offenders = [f"{path.relative_to(SRC.parent)}:{n}" for path in sorted(SRC.parent.rglob("*.py"))
                 if path != SRC / "card.py"
                 for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert not offenders, "metadata-dict reads outside card.py (read model.card / rec.card instead):\n" + \
        "\n".join(offenders)
    assert pattern.search((SRC / "card.py").read_text())  # the parser is where the check looks (not vacuous)
