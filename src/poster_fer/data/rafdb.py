"""RAF-DB (basic) from its own layout: ``EmoLabel/list_patition_label.txt`` plus ``Image/aligned``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..constants import RAFDB_CLASSES  # RAF-DB basic order: file labels 1..7 become indices 0..6
from .base import (
    ImageFileDataset,
    ParsedRows,
    Row,
    SplitSource,
    Transform,
    check_class_names,
    finish_files,
    no_split_error,
    normalize_split,
)
from .errors import DatasetError, IssueLog

RAFDB_LABEL_FILE = Path("EmoLabel") / "list_patition_label.txt"


class RafDbDataset(ImageFileDataset):
    """RAF-DB basic, 7 classes; split by the ``train_``/``test_`` name prefix (12,271 / 3,068 images).

    Images come from ``Image/aligned/<stem>_aligned.jpg`` (the 100x100 aligned faces POSTER uses), or from
    ``Image/original/<name>`` with ``aligned=False``. RAF-DB has no validation split: ask
    :func:`~poster_fer.data.holdout_split` for one.
    """

    name = "rafdb"

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str | None = "train",
        transform: Transform | None = None,
        aligned: bool = True,
        on_error: str = "raise",
        verify: str = "decode",
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.root = Path(root).expanduser()
        self.split = normalize_split(split)
        if self.split == "val":
            raise no_split_error("RAF-DB", "val", ["train", "test"])
        classes = check_class_names(RAFDB_CLASSES, class_names, self.name)
        label_file = self.root / RAFDB_LABEL_FILE
        if not label_file.is_file():
            raise DatasetError(
                f"RAF-DB label file not found (expected root/{RAFDB_LABEL_FILE.as_posix()})", label_file
            )
        issues = IssueLog(on_error)
        prefixes = ("train_", "test_") if self.split == "all" else (f"{self.split}_",)
        parsed = self._read_labels(label_file, prefixes, aligned, issues)
        where = SplitSource(self.name, self.split, label_file, classes)
        paths, labels, _, report = finish_files(where, parsed, verify)
        super().__init__(paths, classes, labels, report, transform)

    def _read_labels(
        self, label_file: Path, prefixes: tuple[str, ...], aligned: bool, issues: IssueLog
    ) -> ParsedRows:
        """The label file's rows of the split (names starting with one of ``prefixes``), labels made 0-based."""
        rows: list[Row] = []
        rows_read = 0
        with open(label_file, encoding="utf-8") as fh:
            for lineno, text in enumerate(fh, start=1):
                fields = text.split()
                if not fields:
                    continue
                rows_read += 1
                name = _image_name(fields, text, issues, (label_file, lineno))
                if name is None or not name.startswith(prefixes):
                    continue
                label = _label(fields[1], issues, (label_file, lineno))
                if label is None:
                    continue
                if aligned:
                    image = self.root / "Image" / "aligned" / f"{Path(name).stem}_aligned.jpg"
                else:
                    image = self.root / "Image" / "original" / name
                rows.append((image, label, label_file, lineno, None))
        return ParsedRows(rows, rows_read, issues)


def _image_name(fields: list[str], text: str, issues: IssueLog, where: tuple[Path, int]) -> str | None:
    """A label line's image name, or None (an error) when the line is not ``train_/test_name label``."""
    if len(fields) != 2:
        issues.error("malformed line", f"expected 'name.jpg label', found {text.strip()!r}", *where)
        return None
    if not fields[0].startswith(("train_", "test_")):
        issues.error("malformed line", f"image name {fields[0]!r} has neither train_ nor test_ prefix", *where)
        return None
    return fields[0]


def _label(label_s: str, issues: IssueLog, where: tuple[Path, int]) -> int | None:
    """The 0-based label of a 1..7 label field, or None (an error)."""
    try:
        label = int(label_s)
    except ValueError:
        label = -1
    if not 1 <= label <= len(RAFDB_CLASSES):
        issues.error("bad label", f"label {label_s!r} is not in 1..7", *where)
        return None
    return label - 1
