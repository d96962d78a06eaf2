"""AffectNet from the official ``training.csv``/``validation.csv`` or from POSTER-style list files."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

from ..constants import AFFECTNET7_CLASSES, AFFECTNET8_CLASSES  # 7-class versions drop Contempt
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

_NON_EMOTION = {8: "expression 8 (none)", 9: "expression 9 (uncertain)", 10: "expression 10 (no face)"}
_CSV_COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "expression")
_TEST_NOTE = "AffectNet's official validation set is its test set: use split='test' for it"


def _classes_for(num_classes: int) -> list[str]:
    if num_classes not in (7, 8):
        raise DatasetError(f"AffectNet has 7 or 8 classes, not {num_classes}")
    return AFFECTNET8_CLASSES if num_classes == 8 else AFFECTNET7_CLASSES


def _first_existing(candidates: Sequence[Path]) -> Path | None:
    return next((p for p in candidates if p.exists()), None)


class AffectNetCsvDataset(ImageFileDataset):
    """AffectNet 7/8 from the official annotation CSVs, optionally cropped to the annotated face box.

    Splits: ``train`` = training.csv, ``test`` = validation.csv (the official validation set, 500 images per
    class, is the test set everyone reports). Expressions 8..10 (none, uncertain, no face) are dropped,
    and Contempt (7) too for 7 classes; drops are counted in ``report.dropped``. The CSVs are looked for in
    ``root`` and ``root/Manually_Annotated_file_lists`` (or pass ``csv_file``), and image paths are resolved
    against ``image_dir`` (default ``root/Manually_Annotated_Images`` if present, else ``root``).
    """

    name = "affectnet"

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str | None = "train",
        transform: Transform | None = None,
        num_classes: int = 8,
        crop_face: bool = False,
        image_dir: str | os.PathLike[str] | None = None,
        csv_file: str | os.PathLike[str] | None = None,
        on_error: str = "raise",
        verify: str = "decode",
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.root = Path(root).expanduser()
        self.split = normalize_split(split)
        self.name = f"affectnet{num_classes}"
        classes = check_class_names(_classes_for(num_classes), class_names, self.name)
        if self.split in ("val", "all"):
            raise no_split_error("AffectNet", self.split, ["train", "test"], _TEST_NOTE)
        source = self._annotation_file(csv_file)
        if image_dir is None:
            images = _first_existing([self.root / "Manually_Annotated_Images"]) or self.root
        else:
            images = Path(image_dir).expanduser()
        parsed = _CsvRows(source, images, num_classes, crop_face).read(IssueLog(on_error))
        paths, labels, boxes, report = finish_files(SplitSource(self.name, self.split, source, classes), parsed, verify)
        super().__init__(paths, classes, labels, report, transform, boxes if crop_face else None)

    def _annotation_file(self, csv_file: str | os.PathLike[str] | None) -> Path:
        """The split's annotation CSV: the one given, or training.csv / validation.csv under ``root``."""
        file_name = "training.csv" if self.split == "train" else "validation.csv"
        if csv_file is not None:
            source = Path(csv_file).expanduser()
        else:
            candidates = [self.root / file_name, self.root / "Manually_Annotated_file_lists" / file_name]
            source = _first_existing(candidates) or candidates[0]
        if not source.is_file():
            raise DatasetError(f"AffectNet annotation file {file_name} not found", source)
        return source


class _CsvRows:
    """Reads an official AffectNet annotation CSV into rows, dropping non-emotions (and Contempt for 7 classes)."""

    def __init__(self, source: Path, images: Path, num_classes: int, crop_face: bool) -> None:
        self.source, self.images, self.num_classes, self.crop_face = source, images, num_classes, crop_face

    def read(self, issues: IssueLog) -> ParsedRows:
        """Every record's row, the records read, and the problems met."""
        rows: list[Row] = []
        rows_read = 0
        with open(self.source, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in _CSV_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DatasetError(f"missing columns {missing} (found {reader.fieldnames})", self.source, 1)
            for rec in reader:
                rows_read += 1
                row = self._row(rec, reader.line_num, issues)
                if row is not None:
                    rows.append(row)
        return ParsedRows(rows, rows_read, issues)

    def _row(self, rec: dict[str, str], line: int, issues: IssueLog) -> Row | None:
        """One record's row, or None when it is dropped or broken (counted through ``issues``)."""
        try:
            expr = int(rec["expression"])
        except (TypeError, ValueError):
            expr = -1
        if expr in _NON_EMOTION:
            issues.drop(_NON_EMOTION[expr])
            return None
        if not 0 <= expr <= 7:
            issues.error("bad label", f"expression {rec['expression']!r} is not in 0..10", self.source, line)
            return None
        if expr >= self.num_classes:
            issues.drop("Contempt (7-class)")
            return None
        box = None
        if self.crop_face:
            box = self._box(rec, line, issues)
            if box is None:
                return None
        rel = (rec["subDirectory_filePath"] or "").strip()
        if not rel:
            issues.error("malformed row", "empty subDirectory_filePath", self.source, line)
            return None
        return (self.images / rel, expr, self.source, line, box)

    def _box(self, rec: dict[str, str], line: int, issues: IssueLog) -> tuple[int, int, int, int] | None:
        """The annotated face box as (x0, y0, x1, y1), or None (an error) when it is not a positive box."""
        try:
            x, y, w, h = (int(float(rec[k])) for k in _CSV_COLUMNS[1:5])
        except (TypeError, ValueError):
            w = h = 0
        if w <= 0 or h <= 0:
            issues.error(
                "bad face box",
                "face_x/face_y/face_width/face_height must be numbers with positive width and height",
                self.source,
                line,
            )
            return None
        return (x, y, x + w, y + h)


class AffectNetListDataset(ImageFileDataset):
    """AffectNet as the POSTER code reads it: ``{train,valid}_annotations_{7,8}class.txt`` lists.

    Each line is ``name.jpg label`` (label 0..6 or 0..7 in :data:`AFFECTNET8_CLASSES` order) relative to
    ``image_dir`` (default: ``root``, or ``root/train`` / ``root/valid`` when the images live there). Splits:
    ``train`` and ``test`` (the ``valid`` list, i.e. the official validation set). ``num_classes`` is
    inferred when only one of the 7/8-class lists exists.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str | None = "train",
        transform: Transform | None = None,
        num_classes: int | None = None,
        image_dir: str | os.PathLike[str] | None = None,
        list_file: str | os.PathLike[str] | None = None,
        on_error: str = "raise",
        verify: str = "decode",
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.root = Path(root).expanduser()
        self.split = normalize_split(split)
        if self.split in ("val", "all"):
            raise no_split_error("AffectNet", self.split, ["train", "test"], _TEST_NOTE)
        stem = "train" if self.split == "train" else "valid"
        source, num_classes = self._list_file(stem, list_file, num_classes)
        self.name = f"affectnet{num_classes}"
        classes = check_class_names(_classes_for(num_classes), class_names, self.name)
        issues = IssueLog(on_error)
        entries, rows_read = _read_list(source, num_classes, issues)
        if image_dir is not None:
            images = Path(image_dir).expanduser()
        else:
            options = [self.root, self.root / stem, self.root / ("train" if stem == "train" else "val")]
            probe = entries[0][0] if entries else ""
            images = next((d for d in options if probe and (d / probe).exists()), self.root)
        rows: list[Row] = [(images / name, label, source, lineno, None) for name, label, lineno in entries]
        parsed = ParsedRows(rows, rows_read, issues)
        paths, labels, _, report = finish_files(SplitSource(self.name, self.split, source, classes), parsed, verify)
        super().__init__(paths, classes, labels, report, transform)

    def _list_file(
        self, stem: str, list_file: str | os.PathLike[str] | None, num_classes: int | None
    ) -> tuple[Path, int]:
        """The list file and the class count: given, or inferred from which 7/8-class list exists."""
        if list_file is not None:
            source = Path(list_file).expanduser()
            if num_classes is None:
                num_classes = 7 if "7class" in source.name else 8
        else:
            found = {n: self.root / f"{stem}_annotations_{n}class.txt" for n in (7, 8)}
            found = {n: p for n, p in found.items() if p.is_file()}
            if num_classes is None:
                if len(found) != 1:
                    what = "both" if found else "neither"
                    raise DatasetError(
                        f"{what} of {stem}_annotations_7class.txt / _8class.txt found; pass num_classes=7 or 8",
                        self.root,
                    )
                num_classes = next(iter(found))
            source = self.root / f"{stem}_annotations_{num_classes}class.txt"
        if not source.is_file():
            raise DatasetError("AffectNet list file not found", source)
        return source, num_classes


def _read_list(source: Path, num_classes: int, issues: IssueLog) -> tuple[list[tuple[str, int, int]], int]:
    """A POSTER list file's ``(name, label, line)`` entries and the number of non-blank lines read."""
    entries = []
    rows_read = 0
    with open(source, encoding="utf-8") as fh:
        for lineno, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            rows_read += 1
            fields = text.strip().rsplit(maxsplit=1)
            if len(fields) != 2:
                issues.error("malformed line", f"expected 'name.jpg label', found {text.strip()!r}", source, lineno)
                continue
            try:
                label = int(fields[1])
            except ValueError:
                label = -1
            if not 0 <= label < num_classes:
                issues.error("bad label", f"label {fields[1]!r} is not in 0..{num_classes - 1}", source, lineno)
                continue
            entries.append((fields[0], label, lineno))
    return entries, rows_read
