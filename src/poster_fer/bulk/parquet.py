"""Parquet output that survives being killed: parts that are whole or absent, and the keys they hold.

Why parts: a Parquet file is readable only once its footer is written, so a run killed while writing one file
would lose everything. Rows are gathered per input and written as part files, each to a hidden temporary name,
synced and then renamed into place: a part exists whole or not at all, and an input's rows never straddle two
parts. What is done is therefore what the parts hold; ``--resume`` reads their ``source`` and ``segment``
columns and skips those inputs. A lock file keeps two runs from writing one output at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .table import read_run_metadata, records_to_table, schema

__all__ = ["OutputMismatch", "ParquetFileSink", "PartStore", "row_keys", "table_keys"]

Key = tuple[str, "int | None"]


class OutputMismatch(ValueError):
    """An existing output was written by other weights or classes: resuming into it would mix two models."""


def row_keys(table: pa.Table) -> list[Key]:
    """The (source, segment) input each row of a table belongs to, in row order."""
    return list(zip(table.column("source").to_pylist(), table.column("segment").to_pylist(), strict=True))


def table_keys(table: pa.Table) -> set[Key]:
    """The (source, segment) pairs a table's rows belong to."""
    return set(row_keys(table))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_same_weights(found: dict[str, Any], expected: dict[str, Any], where: Path) -> None:
    """Refuse to resume into an output another model wrote (weights sha256 or classes differ)."""
    for key in ("weights_sha256", "classes", "operating_point"):
        if found.get(key) != expected.get(key):
            raise OutputMismatch(f"{where}: written with {key} {found.get(key)!r}, this run has {expected.get(key)!r}; "
                                 f"resume with the same --weights / --operating-point, or choose another --output")


class PartStore:
    """A directory of Parquet parts (``part-<run>-<n>.parquet``), each holding whole inputs only.

    ``add`` takes the rows of one complete input; a part is written once ``rows_per_part`` rows or
    ``seconds_per_part`` seconds have gathered, and at :meth:`flush`. Interrupted, the run loses only the inputs
    gathered since the last part (at most ``seconds_per_part`` of work).
    """

    def __init__(self, directory: Path, table_schema: pa.Schema, rows_per_part: int = 50_000,
                 seconds_per_part: float = 30.0) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.schema = table_schema
        self.rows_per_part, self.seconds_per_part = int(rows_per_part), float(seconds_per_part)
        self._lock = open(self.dir / ".lock", "w")  # noqa: SIM115 (held for the store's life)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise OutputMismatch(f"{self.dir}: another run is writing this output now") from None
        for stale in self.dir.glob(".part-*.tmp"):  # a part that was being written when a run died
            stale.unlink()
        self.run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        self._pending: list[pa.Table] = []
        self._rows = 0
        self._written = 0
        self._last = time.monotonic()

    def parts(self) -> list[Path]:
        return sorted(p for p in self.dir.glob("part-*.parquet"))

    def done_keys(self) -> set[Key]:
        """Every (source, segment) whose rows a part holds."""
        keys: set[Key] = set()
        for part in self.parts():
            keys |= table_keys(pq.read_table(part, columns=["source", "segment"]))
        return keys

    def metadata(self) -> dict[str, Any] | None:
        """The run metadata of the first part (None without parts)."""
        parts = self.parts()
        return read_run_metadata(pq.read_schema(parts[0]).metadata) if parts else None

    def add(self, table: pa.Table) -> None:
        self._pending.append(table)
        self._rows += table.num_rows
        if self._rows >= self.rows_per_part or time.monotonic() - self._last >= self.seconds_per_part:
            self.flush()

    def flush(self) -> None:
        """Write what has gathered as one part (temporary name, fsync, rename)."""
        self._last = time.monotonic()
        if not self._pending:
            return
        table = pa.concat_tables(self._pending).cast(self.schema)
        name = f"part-{self.run_id}-{self._written:05d}.parquet"
        tmp = self.dir / f".{name}.tmp"
        pq.write_table(table, tmp, compression="zstd")
        _fsync(tmp)
        os.replace(tmp, self.dir / name)
        _fsync(self.dir)
        self._written += 1
        self._pending, self._rows = [], 0

    def close(self) -> None:
        self.flush()
        with contextlib.suppress(OSError):
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()


class ParquetFileSink:
    """``--output X.parquet`` of the single process: parts under ``X.parquet.parts/`` while it runs, merged into
    the one file ``X.parquet`` when it ends (also after Ctrl-C). Killed, the parts stay and ``--resume`` merges
    them with what it adds. Without ``resume`` an existing output is replaced."""

    def __init__(self, path: Path, classes: list[str], metadata: dict[str, Any], resume: bool) -> None:
        self.path = Path(path)
        self.parts_dir = self.path.with_name(self.path.name + ".parts")
        self.classes = list(classes)
        self.schema = schema(self.classes, metadata)
        self.metadata = metadata
        if not resume:
            if self.path.exists():
                self.path.unlink()
            shutil.rmtree(self.parts_dir, ignore_errors=True)
        # POSTER_FER_PART_SECONDS: how often finished inputs are committed as a part (default 30 s): what a
        # kill can cost at most; shorter means more, smaller parts until the merge (docs/bulk.md)
        self.store = PartStore(self.parts_dir, self.schema,
                               seconds_per_part=float(os.environ.get("POSTER_FER_PART_SECONDS", "30")))
        self._rows: list[dict[str, Any]] = []
        self._done: set[Key] = set()
        if resume:
            self._check_resumable()
        self.count = 0

    def _check_resumable(self) -> None:
        if self.path.exists():
            found = pq.read_schema(self.path)
            check_same_weights(read_run_metadata(found.metadata), self.metadata, self.path)
            self._done |= table_keys(pq.read_table(self.path, columns=["source", "segment"]))
        earlier = self.store.metadata()
        if earlier is not None:
            check_same_weights(earlier, self.metadata, self.parts_dir)
        self._done |= self.store.done_keys()

    def done_sources(self) -> set[str]:
        return {source for source, _ in self._done}

    def write(self, record: dict[str, Any]) -> None:
        self._rows.append(record)
        self.count += 1

    def end_input(self, source: str, segment: int | None) -> None:
        self.store.add(records_to_table(self._rows, self.classes, segment, self.schema))
        self._rows = []

    def close(self) -> None:
        """Commit the finished inputs and merge every part into the one file (an input cut off is dropped)."""
        self._rows = []
        self.store.close()
        parts = self.store.parts()
        if not parts and self.path.exists():
            shutil.rmtree(self.parts_dir, ignore_errors=True)
            return
        old = table_keys(pq.read_table(self.path, columns=["source", "segment"])) if self.path.exists() else set()
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with pq.ParquetWriter(tmp, self.schema, compression="zstd") as out:
            if self.path.exists():
                existing = pq.ParquetFile(self.path)
                for group in range(existing.num_row_groups):
                    out.write_table(existing.read_row_group(group).cast(self.schema))
            for part in parts:
                table = pq.read_table(part).cast(self.schema)
                if old:  # a merge that died after its rename left these parts behind: keep each input once
                    table = table.filter(pa.array([k not in old for k in row_keys(table)]))
                out.write_table(table)
        _fsync(tmp)
        os.replace(tmp, self.path)
        shutil.rmtree(self.parts_dir, ignore_errors=True)
