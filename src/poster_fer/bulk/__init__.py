"""Archive-scale labelling: resumable outputs, Parquet, input lists, and the Ray Data engine.

``poster-fer predict`` and :func:`label` share this: a run writing ``--output`` can be killed at any moment and
resumed (``--resume``), losing at most the inputs in flight and writing each input exactly once, in JSON lines,
CSV (:mod:`.text`, a journal beside the file) or Parquet (:mod:`.parquet`, parts that are whole or absent); the
Ray engine (:mod:`.ray_engine`) runs the same pipeline over all the cores of a machine or a cluster.

PyArrow (the ``[parquet]`` extra) and Ray (the ``[ray]`` extra) are imported only when asked for, so the light
runtime stays light. docs/bulk.md is the user's guide::

    from poster_fer.bulk import label
    result = label(["photos/", "talk.mp4"], "faces/", engine="ray")     # Parquet parts under faces/
    result = label(["photos/"], "faces.parquet", engine="local", resume=True)
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._lazy import module_available
from ..errors import EXTRAS

if TYPE_CHECKING:
    from ..inference.job import JobOptions
    from ..inference.sources import Source
    from .ray_engine import RayOptions

__all__ = ["BulkResult", "ENGINES", "label", "need", "open_output", "read_list", "run_metadata"]

ENGINES = ("local", "ray")
LIST_COLUMN = "path"  # the column --from-list reads from a CSV or Parquet file unless told otherwise


def need(module: str, what: str) -> None:
    """Raise ImportError naming the extra to install when ``module`` is missing."""
    if not module_available(module):
        extra = EXTRAS[module][1] if module in EXTRAS else module
        raise ImportError(f"{what} needs {module}: pip install 'poster-fer[{extra}]'")


def read_list(path: str | os.PathLike[str], column: str | None = None) -> list[str]:
    """Input paths from a file: a CSV or Parquet column (``column``, default ``path``), else one path a line
    (blank lines skipped). Entries are kept as written; a missing file becomes an error row when labelled."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        need("pyarrow", f"--from-list {p}")
        import pyarrow.parquet as pq

        names = pq.read_schema(p).names
        col = column or LIST_COLUMN
        if col not in names:
            raise ValueError(f"{p}: no column {col!r} (columns: {', '.join(names)}); name one with --list-column")
        return [str(v) for v in pq.read_table(p, columns=[col]).column(col).to_pylist() if v]
    with open(p, encoding="utf-8", newline="") as f:
        if suffix == ".csv":
            reader = csv.DictReader(f)
            col = column or LIST_COLUMN
            if col not in (reader.fieldnames or []):
                raise ValueError(f"{p}: no column {col!r} in its header ({', '.join(reader.fieldnames or [])}); "
                                 "name one with --list-column")
            return [row[col] for row in reader if row.get(col)]
        if column is not None:
            raise ValueError(f"{p}: --list-column applies to a .csv or .parquet list, not a text file")
        return [line.rstrip("\r\n") for line in f if line.strip()]


def run_metadata(rec: Any, weights: str | os.PathLike[str] | None, operating_point: str | None,
                 engine: str, command: str | None = None) -> dict[str, Any]:
    """What an output's metadata records: the weights (name, file, sha256), operating point, classes,
    poster-fer version, engine and command. Resuming checks the weights and classes against it."""
    from importlib.metadata import PackageNotFoundError, version

    from ..checksums import sha256_of
    from ..constants import ONNX_FILE
    from ..hub import resolve_weights

    path = Path(resolve_weights(weights))
    if path.is_dir():
        onnx = getattr(rec.backend, "path", None)
        path = Path(onnx) if onnx is not None else path / "model.safetensors"
        if not path.is_file():
            path = path.parent / ONNX_FILE
    from ..card import card_of

    card = card_of(rec)  # its card (a recognizer written before cards: its metadata read once)
    return {"weights": card.display_name, "weights_file": str(path),
            "weights_sha256": sha256_of(path) if path.is_file() else None,
            "operating_point": operating_point or "default", "classes": list(rec.classes),
            "poster_fer_version": _version(version, PackageNotFoundError), "engine": engine,
            "command": command if command is not None else " ".join(["poster-fer", *sys.argv[1:]])}


def _version(version: Any, missing: type[Exception]) -> str | None:
    """The installed poster-fer's version (None from a source tree that was never installed)."""
    try:
        return version("poster-fer")
    except missing:
        return None


def open_output(path: Path, fmt: str, classes: list[str], metadata: dict[str, Any], resume: bool) -> Any:
    """The resumable record sink for ``--output path`` (see :mod:`.text`, :mod:`.parquet`)."""
    if fmt == "parquet":
        need("pyarrow", f"--output {path}")
        from .parquet import ParquetFileSink

        return ParquetFileSink(path, classes, metadata, resume)
    from .text import JournaledTextSink

    return JournaledTextSink(path, fmt, classes, resume)


@dataclass
class BulkResult:
    """What :func:`label` did: rows by status, inputs written now and skipped as already done, failures."""

    output: Path
    engine: str
    rows: dict[str, int] = field(default_factory=dict)
    inputs: int = 0
    skipped: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def label(inputs: Sequence[str | os.PathLike[str]], output: str | os.PathLike[str], *, engine: str = "ray",
          weights: str | os.PathLike[str] | None = None, backend: str = "auto", operating_point: str | None = None,
          resume: bool = False, address: str | None = None, actors: int | None = None,
          detect_actors: int | None = None, batch_size: int = 32, segment_frames: int = 1500, every: int = 1,
          max_frames: int | None = None, ema: float = 0.5, detect: bool = True, progress: bool | None = None,
          on_input: Callable[[int], None] | None = None, **recognizer: Any) -> BulkResult:
    """Label every face in ``inputs`` (files, folders) into ``output``, resumably.

    ``engine="ray"``: Parquet parts under the directory ``output`` (Ray started on this machine with all its
    cores, or joined at ``address``: ``"auto"``, ``"ray://host:10001"``); ONNX Runtime unless ``backend="torch"``.
    ``engine="local"``: this process, into ``output`` as ``.parquet``, ``.jsonl`` or ``.csv``.
    ``resume=True`` skips inputs the output already holds whole. Other keywords (``max_faces``, ``detect_size``,
    ``threshold`` as ``score_threshold``, ``max_pixels``, ``detector``, ``detector_model``) go to the
    :class:`~poster_fer.inference.Recognizer`. ``on_input(n)`` is called after each input is written.

    Why so many parameters: this is the documented call (docs/bulk.md), made with keywords that mirror
    ``poster-fer predict``'s flags, so they stay as they are (a deliberate exception to the seven-parameter
    rule); the body only checks them and bundles them once into the typed objects the engines take
    (:class:`~poster_fer.inference.job.JobOptions`, and for Ray a :class:`~poster_fer.bulk.ray_engine.RayPlan`).
    """
    from ..inference import collect_sources
    from ..inference.job import JobOptions

    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, not {engine!r}")
    out = Path(output)
    sources, _ = collect_sources(list(inputs))
    model = _Model(weights, backend, operating_point, {"batch_size": batch_size, **recognizer})
    job = JobOptions(detect=detect, every=every, max_frames=max_frames, ema=ema, progress=progress)
    if engine == "local":
        return _label_local(sources, out, model, job, resume, on_input)
    need("ray", "engine 'ray'")
    need("pyarrow", "engine 'ray'")
    from .ray_engine import RayOptions

    pools = RayOptions(address=address, actors=actors, detect_actors=detect_actors, segment_frames=segment_frames)
    return _label_ray(sources, out, model, job, pools, resume, on_input)


@dataclass(frozen=True)
class _Model:
    """The model :func:`label` loads: its weights, operating point and the recognizer's other keywords."""

    weights: str | os.PathLike[str] | None
    backend: str
    operating_point: str | None
    keywords: dict[str, Any]  # batch_size and label()'s other keywords

    def kwargs(self, **override: Any) -> dict[str, Any]:
        """``Recognizer.from_checkpoint``'s keywords (``override`` replacing some)."""
        return {"path": self.weights, "backend": self.backend, "operating_point": self.operating_point,
                **self.keywords, **override}


def _label_ray(sources: list[Source], out: Path, model: _Model, job: JobOptions, pools: RayOptions, resume: bool,
               on_input: Callable[[int], None] | None) -> BulkResult:
    """``engine="ray"``: a probe recognizer (no detector) names the classes and the metadata, then Ray runs."""
    from ..inference import Recognizer
    from .ray_engine import RayPlan, run_ray

    kwargs = model.kwargs(backend="onnxruntime" if model.backend in (None, "auto") else model.backend)
    probe = Recognizer.from_checkpoint(**{**kwargs, "detector": None})
    plan = RayPlan(kwargs, job, probe.classes, run_metadata(probe, model.weights, model.operating_point, "ray"),
                   pools, resume)
    res = run_ray(sources, out, plan, on_input=on_input)
    return BulkResult(out, "ray", dict(res.rows), res.inputs, res.skipped, res.failures, res.seconds)


def _label_local(sources: list[Source], out: Path, model: _Model, job: JobOptions, resume: bool,
                 on_input: Callable[[int], None] | None) -> BulkResult:
    """``engine="local"``: this process, committing input by input into a .parquet, .jsonl or .csv file."""
    import time

    from ..inference import Recognizer
    from ..inference.job import JobStats, run_job
    from ..inference.records import format_for_path

    t0 = time.monotonic()
    rec = Recognizer.from_checkpoint(**model.kwargs())
    fmt = "parquet" if out.suffix.lower() == ".parquet" else format_for_path(out)
    if fmt is None:
        raise ValueError(f"{out}: name the output .parquet, .jsonl or .csv")
    sink = open_output(out, fmt, rec.classes, run_metadata(rec, model.weights, model.operating_point, "local"),
                       resume)
    done = sink.done_sources()
    todo = [s for s in sources if s.name not in done]
    stats = JobStats()
    if on_input is not None:  # called after the sink commits each input, as the Ray engine does
        commit = sink.end_input

        def end_input(source: str, segment: int | None) -> None:
            commit(source, segment)
            on_input(stats.inputs_done + 1)

        sink.end_input = end_input
    try:
        run_job(rec, todo, sink, job, stats)
    finally:
        sink.close()
    return BulkResult(out, "local", dict(stats.rows), stats.inputs_done, len(sources) - len(todo),
                      list(stats.failures), time.monotonic() - t0)
