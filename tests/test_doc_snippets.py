"""Every Python snippet in README.md and docs/ runs (issue 39): what a reader copies works as written.

Each ```python block is executed in order, the blocks of one page sharing a namespace (a page builds on its
earlier blocks), in a folder where the files the docs name exist: ``photo.jpg``, ``a.jpg``, ``b.jpg`` and
``photos/`` are the shipped sample; every ``runs/*/best`` a saved copy of the shipped default model; ``model.onnx``
its ONNX export; ``rafdb_best.pth`` an official-format checkpoint made from the parity fixtures' weight recipe
(``shared/parity``: the authors' checkpoints cannot ship). Names a page leaves to the reader (``pil_image``,
``batch``, ...) are bound beforehand in :func:`placeholders`.

Where a snippet cannot run here as written, ``ADJUST`` says what the test replaces and why; a replacement whose
text is no longer in the page fails, so the table cannot drift from the docs. Where a page shows an output (the
columns ``to_frame`` prints), ``CHECKS`` compares it with what the snippet produced.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import poster_fer
from conftest import need_shared
from poster_fer.samples import sample_path

REPO = Path(__file__).resolve().parents[1]
PAGES = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").rglob("*.md"))]
OFFICIAL = ("parity", "poster_v1_rafdb.keys.json")  # what rafdb_best.pth is made from
RUNS = ("my_model", "x", "ferplus_cpu", "my_ferplus", "rafdb")

# (page, block index) -> what changes here and why
ADJUST: dict[tuple[str, int], dict[str, Any]] = {
    ("README.md", 1): {"needs": [OFFICIAL]},
    ("docs/inference.md", 2): {"needs": [OFFICIAL]},
    # a local Ray instance over the sample folder instead of the reader's archive
    ("docs/bulk.md", 0): {"replace": {'"/archive"': '"photos/"'}},
    # CI has no GPU
    ("docs/serving.md", 0): {"replace": {'device="cuda"': 'device="cpu"'}},
    # any free port: 8000 may be taken on the test machine
    ("docs/serving.md", 1): {"replace": {'listen("127.0.0.1", 8000)': 'listen("127.0.0.1", 0)'}},
    # the smoke recipe for one epoch instead of an hour-long run; it reads FER+ (cannot ship)
    ("docs/training.md", 0): {"replace": {'fit("ferplus_cpu", "runs/x", overrides={"train.epochs": 2})':
                                          'fit("tiny", "runs/x", overrides={"train.progress": False})'},
                              "needs": [("data", "fer2013", "fer2013.csv.gz")]},
}


def blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / page).read_text(encoding="utf-8"), re.S)


SNIPPETS = [(page, i) for page in PAGES for i in range(len(blocks(page)))]


def check_to_frame_columns(code: str, ns: dict) -> None:
    """docs/inference.md prints the first columns of ``to_frame`` in a comment: they are the real ones."""
    shown = re.search(r"#\s+(image\s+face[^\n]*?)\s*\.\.\.", code).group(1).split()
    df = poster_fer.to_frame(ns["rec"].predict(["a.jpg", "b.jpg"]))
    assert list(df.columns[:len(shown)]) == shown
    assert "source" in ns["df"].columns  # the last line's claim


CHECKS = {("docs/inference.md", 4): check_to_frame_columns}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("docs")
    for name in ("photo.jpg", "a.jpg", "b.jpg", "photos/one.jpg", "photos/two.jpg"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(sample_path(), root / name)
    shipped = poster_fer.get_weights(poster_fer.DEFAULT_MODEL).verify()
    for run in RUNS:
        shutil.copytree(shipped, root / "runs" / run / "best")
    shutil.copy(shipped / "model.onnx", root / "model.onnx")
    return root


def make_official_checkpoint(path: Path) -> None:
    import torch

    from poster_fer.models import create_model
    from poster_fer.weights.parity import recipe_state_dict

    ints = {k: v for k, v in create_model("poster_v1", num_classes=7).state_dict().items()
            if not v.is_floating_point()}
    state = recipe_state_dict(need_shared(*OFFICIAL), ints)
    torch.save({"iter": 1, "model_state_dict": {"module." + k: v for k, v in state.items()}}, path)


def placeholders(root: Path) -> dict[str, Any]:
    """The names the docs use without defining: what a reader would have at hand."""
    import torch
    from PIL import Image

    pil_image = Image.open(root / "b.jpg")
    crop = poster_fer.predict(str(root / "photo.jpg"), return_crops=True)[0].crop
    return {"pil_image": pil_image, "grey_array": np.asarray(pil_image.convert("L")), "array": np.asarray(pil_image),
            "aligned_crop1": crop, "aligned_crop2": crop[:, ::-1].copy(), "paths": ["a.jpg", "b.jpg"],
            "batch": torch.rand(2, 3, 48, 48)}


_NAMESPACES: dict[str, tuple[dict[str, Any], list[int]]] = {}


def run_block(page: str, index: int, root: Path) -> dict[str, Any]:
    """Run block ``index`` of ``page`` after the page's earlier ones (each once per session), and return the page's
    namespace. A block whose assets are missing is skipped (failed in CI, as every shared asset)."""
    ns, done = _NAMESPACES.setdefault(page, ({"__name__": f"docs:{page}"}, []))
    if not done:
        ns.update(placeholders(root))
    for i in range(len(done), index + 1):
        adjust = ADJUST.get((page, i), {})
        done.append(i)
        if any(not shared_exists(parts) for parts in adjust.get("needs", ())):
            if i == index:
                for parts in adjust["needs"]:
                    need_shared(*parts)
            continue
        if adjust.get("needs") and OFFICIAL in adjust["needs"] and not (root / "rafdb_best.pth").exists():
            make_official_checkpoint(root / "rafdb_best.pth")
        code = blocks(page)[i]
        for old, new in adjust.get("replace", {}).items():
            assert old in code, f"{page} block {i} no longer contains {old!r}: update ADJUST"
            code = code.replace(old, new)
        exec(compile(code, f"{page}[python block {i}]", "exec"), ns)  # noqa: S102 - the docs are ours
        if (page, i) in CHECKS:
            CHECKS[(page, i)](code, ns)
    return ns


def shared_exists(parts: tuple[str, ...]) -> bool:
    from conftest import shared_path

    return shared_path(*parts).exists()


@pytest.fixture
def stubs(monkeypatch):
    """Servers that would block the test: record what they were given instead of serving forever."""
    calls: list[tuple] = []
    import uvicorn

    import poster_fer_apps.serve.runner as runner

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(("uvicorn", app, kw)))
    monkeypatch.setattr(runner, "run", lambda app, sockets, **kw: calls.append(("runner", app, sockets, kw)))
    return calls


@pytest.mark.parametrize("page,index", SNIPPETS, ids=[f"{p}#{i}" for p, i in SNIPPETS])
def test_doc_snippet_runs(page, index, workspace, monkeypatch, stubs):
    monkeypatch.chdir(workspace)
    ns = run_block(page, index, workspace)
    if page == "docs/serving.md":
        assert stubs and all(call[1] is ns["app"] for call in stubs)
    if page == "docs/bulk.md" and index == 0:
        assert ns["result"].inputs == 2 and ns["result"].rows == {"ok": 2} and not ns["result"].failures
        assert (workspace / "faces.parquet").is_file() and list((workspace / "faces").glob("*.parquet"))


def test_every_adjustment_names_a_real_block():
    assert set(ADJUST) | set(CHECKS) <= set(SNIPPETS)


def teardown_module() -> None:
    try:
        import ray
    except ImportError:
        return
    if ray.is_initialized():
        ray.shutdown()
