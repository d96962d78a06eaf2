"""JSON-lines and CSV output that survives being killed: a journal of the inputs complete so far.

Why a journal: a text file shows no boundary between one input's rows and the next, so after a crash the last
input's rows may be partial. After the last row of each input the file is flushed and a line naming the input
and the file's length is appended to ``OUTPUT.progress``. ``--resume`` cuts the file back to the last length
the journal recorded (dropping a partial input), skips the inputs it lists, and appends. A run that ends (also
by Ctrl-C) cuts off any partial input itself and removes the journal; resuming a finished file reads the inputs
from the file. Each input is therefore in the output exactly once, whole.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, TextIO

from ..inference.records import RecordWriter, csv_columns

__all__ = ["JournaledTextSink"]


class JournaledTextSink:
    """A record writer on ``path`` (``fmt`` "jsonl" or "csv") with the resume journal beside it."""

    def __init__(self, path: Path, fmt: str, classes: list[str], resume: bool) -> None:
        if fmt not in ("jsonl", "csv"):
            raise ValueError(f"{path}: resumable output is JSON lines (.jsonl), CSV (.csv) or Parquet (.parquet), "
                             f"not {fmt}")
        self.path, self.fmt, self.classes = Path(path), fmt, list(classes)
        self.journal_path = self.path.with_name(self.path.name + ".progress")
        self.done: set[str] = set()
        offset = 0
        if resume and self.path.exists():
            offset = self._recover()
        else:
            self.journal_path.unlink(missing_ok=True)
        mode = "a" if offset else "w"
        if offset:
            with open(self.path, "r+b") as f:
                f.truncate(offset)
        self.stream: TextIO = open(self.path, mode, encoding="utf-8", newline="")  # noqa: SIM115
        self.writer = RecordWriter(self.stream, fmt, classes, header=not offset)
        self.journal: TextIO = open(self.journal_path, "a", encoding="utf-8")  # noqa: SIM115
        self._committed = self._size()
        if not offset:
            self._log(None)

    @property
    def count(self) -> int:
        return self.writer.count

    def _size(self) -> int:
        self.stream.flush()
        return os.fstat(self.stream.fileno()).st_size

    def _log(self, source: str | None) -> None:
        self._committed = self._size()
        self.journal.write(json.dumps({"source": source, "offset": self._committed}) + "\n")
        self.journal.flush()

    def _recover(self) -> int:
        """The length to keep of an existing output, filling :attr:`done`."""
        size = self.path.stat().st_size
        if not self.journal_path.exists():  # a finished run: every input in the file is whole
            self.done = self._sources_in_file()
            return size
        offset = 0
        with open(self.journal_path, encoding="utf-8") as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:  # the journal line being written when the run died
                    break
                if entry["offset"] > size:  # the file lost what the journal recorded (a crash before a sync)
                    break
                offset = entry["offset"]
                if entry["source"] is not None:
                    self.done.add(entry["source"])
        return offset

    def _sources_in_file(self) -> set[str]:
        with open(self.path, encoding="utf-8", newline="") as f:
            if self.fmt == "csv":
                reader = csv.reader(f)
                header = next(reader, None)
                if header is not None and header != csv_columns(self.classes):
                    raise ValueError(f"{self.path}: its CSV columns are not this model's ({len(header)} columns); "
                                     "resume with the same --weights, or choose another --output")
                return {row[0] for row in reader if row}
            return {json.loads(line)["source"] for line in f if line.strip()}

    def done_sources(self) -> set[str]:
        return set(self.done)

    def write(self, record: dict[str, Any]) -> None:
        self.writer.write(record)

    def end_input(self, source: str, segment: int | None) -> None:
        self._log(source)

    def close(self) -> None:
        """Finish: cut off a partial input (an interrupted run), close, and drop the journal."""
        self.writer.close()
        if self._size() != self._committed:
            self.stream.truncate(self._committed)
        self.stream.close()
        self.journal.close()
        self.journal_path.unlink(missing_ok=True)
