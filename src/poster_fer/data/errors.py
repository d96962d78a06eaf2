"""Load-time validation: the error type and the report every dataset carries.

Broken rows are either fatal (``on_error="raise"``, the default, so a bad download is noticed at once) or
skipped and counted (``on_error="skip"``); skipping is never silent: it is counted per reason in the report,
the first messages are kept, and a warning is emitted.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import DatasetError

OnError = Literal["raise", "skip"]

#: How many individual skip messages a report keeps (the counts are always complete).
MAX_MESSAGES = 50


class MissingSplitError(DatasetError):
    """The layout has no such split (no ``val/`` folder, no ``val.csv``, no split column): a caller may carve a
    validation split from train instead (:func:`poster_fer.data.holdout_split`)."""


@dataclass
class LoadReport:
    """What a dataset kept, skipped (broken rows) and dropped (rows its definition excludes), and why."""

    dataset: str
    split: str | None
    source: str
    classes: list[str] = field(default_factory=list)
    class_counts: dict[str, int] = field(default_factory=dict)
    rows_read: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)

    @property
    def num_samples(self) -> int:
        """Samples kept."""
        return sum(self.class_counts.values())

    @property
    def num_skipped(self) -> int:
        """Broken rows skipped under ``on_error="skip"``."""
        return sum(self.skipped.values())

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly copy, for logs and run records."""
        return {
            "dataset": self.dataset,
            "split": self.split,
            "source": self.source,
            "classes": list(self.classes),
            "class_counts": dict(self.class_counts),
            "num_samples": self.num_samples,
            "rows_read": self.rows_read,
            "skipped": dict(self.skipped),
            "dropped": dict(self.dropped),
            "messages": list(self.messages),
        }

    def summary(self) -> str:
        """One line for logs: kept per class, then skipped and dropped counts by reason."""
        counts = ", ".join(f"{k}={v}" for k, v in self.class_counts.items())
        text = f"{self.dataset}[{self.split}] {self.num_samples} samples ({counts})"
        if self.skipped:
            text += "; skipped " + ", ".join(f"{k}: {v}" for k, v in self.skipped.items())
        if self.dropped:
            text += "; dropped " + ", ".join(f"{k}: {v}" for k, v in self.dropped.items())
        return text


class IssueLog:
    """Collects problems while a dataset loads: raises at the first one, or counts them when skipping."""

    def __init__(self, on_error: str) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
        self.on_error = on_error
        self.skipped: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.messages: list[str] = []

    def error(
        self, reason: str, message: str, path: str | Path | None = None, line: int | None = None
    ) -> None:
        """Record a broken row: raise :class:`DatasetError`, or count it when skipping."""
        err = DatasetError(message, path, line, reason)
        if self.on_error == "raise":
            raise err
        self.skipped[reason] += 1
        if len(self.messages) < MAX_MESSAGES:
            self.messages.append(str(err))

    def drop(self, reason: str, count: int = 1) -> None:
        """Record rows the dataset's definition excludes (not an error)."""
        if count:
            self.dropped[reason] += count

    def build_report(
        self,
        dataset: str,
        split: str | None,
        source: str | Path,
        classes: list[str],
        labels: list[int],
        rows_read: int,
    ) -> LoadReport:
        """Assemble the report and warn when rows were skipped, so skipping is never silent."""
        counts = Counter(labels)
        report = LoadReport(
            dataset=dataset,
            split=split,
            source=str(source),
            classes=list(classes),
            class_counts={name: int(counts.get(i, 0)) for i, name in enumerate(classes)},
            rows_read=rows_read,
            skipped=dict(self.skipped),
            dropped=dict(self.dropped),
            messages=list(self.messages),
        )
        if self.skipped:
            first = f" First: {self.messages[0]}" if self.messages else ""
            warnings.warn(
                f"{dataset}[{split}]: skipped {report.num_skipped} broken rows "
                f"({', '.join(f'{k}: {v}' for k, v in self.skipped.items())}).{first}",
                stacklevel=3,
            )
        return report
