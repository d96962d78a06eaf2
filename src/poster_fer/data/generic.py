"""Layouts for data of any origin: a folder per class, or a CSV manifest of (path, label)."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

from .base import (
    IMAGE_SUFFIXES,
    ImageFileDataset,
    ParsedRows,
    Row,
    SplitSource,
    Transform,
    finish_files,
    normalize_split,
)
from .errors import DatasetError, IssueLog, MissingSplitError


def find_split_dir(root: Path, split: str) -> Path:
    """The folder holding a split: the child named like it (train, val, valid, test...), or ``root`` itself.

    ``root`` serves ``all``, and also ``train`` when no child is named like any split (a flat class tree is
    training data; carve validation from it with ``val_fraction``).
    """
    if split == "all":
        return root
    found: dict[str, Path] = {}
    for child in sorted(root.iterdir()) if root.is_dir() else []:
        if child.is_dir():
            try:
                found.setdefault(normalize_split(child.name), child)
            except DatasetError:
                continue
    if split in found:
        return found[split]
    if split == "train" and not found:
        return root
    raise MissingSplitError(
        f"no {split!r} folder (train/val/valid/test...) under it; a flat class tree is training data (give "
        "data.val_fraction to hold part of it out for validation)", root
    )


def _check_count(classes: Sequence[str], num_classes: int | None, where: Path) -> None:
    if num_classes is not None and len(classes) != num_classes:
        raise DatasetError(
            f"class-count mismatch: expected {num_classes} classes, found {len(classes)}: "
            f"{', '.join(classes)}",
            where,
        )


class ImageFolderDataset(ImageFileDataset):
    """``root/<class>/**/<image>``: each first-level folder is a class; images are found recursively.

    Class names are the sorted folder names unless ``classes`` is given, in which case every named class
    must have a folder (else a class-count mismatch) and unexpected folders are errors (skippable).
    """

    name = "folder"

    def __init__(
        self,
        root: str | os.PathLike[str],
        transform: Transform | None = None,
        classes: Sequence[str] | None = None,
        num_classes: int | None = None,
        on_error: str = "raise",
        verify: str = "decode",
        split: str = "all",
    ) -> None:
        self.root = Path(root).expanduser()
        if self.root.is_file():
            raise DatasetError("is a file, not a folder of class folders (a CSV of path,label rows is read with "
                               "data.kind=csv, which --data FILE.csv chooses)", self.root)
        if not self.root.is_dir():
            raise DatasetError("image folder not found", self.root)
        issues = IssueLog(on_error)
        names = _folder_classes(self.root, classes, issues)
        _check_count(names, num_classes, self.root)
        rows = _folder_rows(self.root, names, issues)
        parsed = ParsedRows(rows, len(rows), issues)
        paths, labels, _, report = finish_files(SplitSource(self.name, split, self.root, names), parsed, verify)
        super().__init__(paths, names, labels, report, transform)


def _folder_classes(root: Path, classes: Sequence[str] | None, issues: IssueLog) -> list[str]:
    """The class names: the sorted folder names, or the given ones (each must have a folder)."""
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is None:
        names = folders
    else:
        names = [str(c) for c in classes]
        absent = [c for c in names if c not in folders]
        if absent:
            raise DatasetError(
                f"class-count mismatch: no folder for classes {absent} (folders: {', '.join(folders)})", root
            )
        for extra in sorted(set(folders) - set(names)):
            issues.error("unexpected class folder", f"folder {extra!r} is not one of the given classes", root / extra)
    if not names:
        raise DatasetError("no class folders found", root)
    return names


def _folder_rows(root: Path, names: Sequence[str], issues: IssueLog) -> list[Row]:
    """One row per image file found (recursively) under each class folder; broken links are errors."""
    rows: list[Row] = []
    for label, cls in enumerate(names):
        for path in sorted((root / cls).rglob("*")):
            if path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith("."):
                continue
            if path.is_file():
                rows.append((path, label, path, None, None))
            elif path.is_symlink():  # a loop or a missing target: counted, never silently passed over
                issues.error("broken link", "symbolic link to no file (a loop or a missing target)", path)
    return rows


class CsvManifestDataset(ImageFileDataset):
    """A CSV of ``path,label`` rows; paths are relative to the manifest's folder (absolute paths work too).

    A header row is optional (``path,label`` and an optional ``split`` column, used to filter by split). A
    label is a class name or an integer index. Without ``classes``, the names are the sorted distinct labels,
    or ``"0".."K-1"`` when every label is an integer (give ``num_classes`` when the top class may be absent).
    """

    name = "csv"

    def __init__(
        self,
        manifest: str | os.PathLike[str],
        transform: Transform | None = None,
        classes: Sequence[str] | None = None,
        num_classes: int | None = None,
        split: str | None = None,
        on_error: str = "raise",
        verify: str = "decode",
    ) -> None:
        self.manifest = Path(manifest).expanduser()
        if not self.manifest.is_file():
            raise DatasetError("CSV manifest not found", self.manifest)
        want = normalize_split(split)
        issues = IssueLog(on_error)
        entries, rows_read = _ManifestReader(self.manifest, split, want, issues).read()
        names = _manifest_classes(entries, classes, num_classes, self.manifest)
        _check_count(names, num_classes, self.manifest)
        rows = _manifest_rows(entries, names, self.manifest, issues)
        parsed = ParsedRows(rows, rows_read, issues)
        paths, labels, _, report = finish_files(SplitSource(self.name, want, self.manifest, names), parsed, verify)
        super().__init__(paths, names, labels, report, transform)


class _ManifestReader:
    """Reads a manifest's rows of the wanted split as ``(path, label, line)`` entries, header or not."""

    def __init__(self, manifest: Path, split: str | None, want: str, issues: IssueLog) -> None:
        self.manifest, self.split, self.want, self.issues = manifest, split, want, issues
        self.col_path, self.col_label, self.col_split, self.width = 0, 1, None, 2

    def read(self) -> tuple[list[tuple[str, str, int]], int]:
        """The kept entries and the number of data rows read (blank rows and the header not counted)."""
        entries: list[tuple[str, str, int]] = []
        rows_read = 0
        with open(self.manifest, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            first = True
            for fields in reader:
                if not fields or not any(f.strip() for f in fields):
                    continue
                line = reader.line_num
                if first:
                    first = False
                    if self._header(fields, line):
                        continue
                rows_read += 1
                entry = self._entry(fields, line)
                if entry is not None:
                    entries.append(entry)
        return entries, rows_read

    def _header(self, fields: list[str], line: int) -> bool:
        """Whether the first row is a ``path,label[,split]`` header (taking its columns); refuses other names."""
        heads = [f.strip().lower() for f in fields]
        if "path" in heads and "label" in heads:
            self.col_path, self.col_label = heads.index("path"), heads.index("label")
            self.col_split = heads.index("split") if "split" in heads else None
            self.width = len(heads)
            return True
        if not (self.manifest.parent / fields[0].strip()).expanduser().is_file():  # a header of other names
            raise DatasetError(f"missing columns path,label: the first row {','.join(fields)!r} is "
                               "neither that header nor a row whose image exists (name the columns "
                               "path,label, optionally split)", self.manifest, line)
        return False

    def _entry(self, fields: list[str], line: int) -> tuple[str, str, int] | None:
        """The row's ``(path, label, line)`` when it is well formed and of the wanted split, else None."""
        if len(fields) != self.width:
            self.issues.error(
                "malformed row", f"expected {self.width} fields, found {len(fields)}", self.manifest, line
            )
            return None
        entry = (fields[self.col_path].strip(), fields[self.col_label].strip(), line)
        if self.want == "all":
            return entry
        if self.col_split is None:
            if self.want == "train":  # a manifest without splits is training data
                return entry
            raise MissingSplitError(
                f"split {self.split!r} asked, but the manifest has no 'split' column", self.manifest, 1
            )
        try:
            row_split = normalize_split(fields[self.col_split])
        except DatasetError:
            self.issues.error("bad split", f"unknown split {fields[self.col_split]!r}", self.manifest, line)
            return None
        return entry if row_split == self.want else None


def _manifest_classes(
    entries: list[tuple[str, str, int]], classes: Sequence[str] | None, num_classes: int | None, manifest: Path
) -> list[str]:
    """The class names: given, ``"0".."K-1"`` for integer labels, or the sorted distinct label names."""
    all_int = all(_is_int(lab) for _, lab, _ in entries)
    if classes is not None:
        return [str(c) for c in classes]
    if all_int and entries:
        top = max(int(lab) for _, lab, _ in entries)
        return [str(i) for i in range(max(top + 1, num_classes or 0))]
    if any(_is_int(lab) for _, lab, _ in entries):
        raise DatasetError(
            "labels mix class names and integer indices; pass classes=[...] to say which index is which name",
            manifest,
        )
    return sorted({lab for _, lab, _ in entries if not _is_int(lab)})


def _manifest_rows(
    entries: list[tuple[str, str, int]], names: list[str], manifest: Path, issues: IssueLog
) -> list[Row]:
    """Resolve each entry's label to an index and its path against the manifest's folder."""
    index = {n: i for i, n in enumerate(names)}
    rows: list[Row] = []
    for rel, lab, line in entries:
        if _is_int(lab):
            label = int(lab)
            if not 0 <= label < len(names):
                issues.error("bad label", f"label {lab} is not in 0..{len(names) - 1}", manifest, line)
                continue
        elif lab in index:
            label = index[lab]
        else:
            issues.error("bad label", f"unknown class {lab!r} (classes: {', '.join(names)})", manifest, line)
            continue
        if not rel:
            issues.error("malformed row", "empty path", manifest, line)
            continue
        rows.append((manifest.parent / rel, label, manifest, line, None))
    return rows


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True
