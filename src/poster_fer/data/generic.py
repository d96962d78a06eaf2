"""Layouts for data of any origin: a folder per class, or a CSV manifest of (path, label)."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

from .base import IMAGE_SUFFIXES, ImageFileDataset, Transform, finish_files, normalize_split
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
        folders = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if classes is None:
            names = folders
        else:
            names = [str(c) for c in classes]
            absent = [c for c in names if c not in folders]
            if absent:
                raise DatasetError(
                    f"class-count mismatch: no folder for classes {absent} (folders: {', '.join(folders)})",
                    self.root,
                )
            for extra in sorted(set(folders) - set(names)):
                issues.error(
                    "unexpected class folder",
                    f"folder {extra!r} is not one of the given classes",
                    self.root / extra,
                )
        if not names:
            raise DatasetError("no class folders found", self.root)
        _check_count(names, num_classes, self.root)
        rows = []
        for label, cls in enumerate(names):
            for path in sorted((self.root / cls).rglob("*")):
                if path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith("."):
                    continue
                if path.is_file():
                    rows.append((path, label, path, None, None))
                elif path.is_symlink():  # a loop or a missing target: counted, never silently passed over
                    issues.error("broken link", "symbolic link to no file (a loop or a missing target)", path)
        paths, labels, _, report = finish_files(
            self.name, split, self.root, names, rows, len(rows), issues, verify
        )
        super().__init__(paths, names, labels, report, transform)


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
        base = self.manifest.parent
        entries: list[tuple[str, str, int]] = []
        rows_read = 0
        with open(self.manifest, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            col_path, col_label, col_split, width = 0, 1, None, 2
            first = True
            for fields in reader:
                if not fields or not any(f.strip() for f in fields):
                    continue
                line = reader.line_num
                if first:
                    first = False
                    heads = [f.strip().lower() for f in fields]
                    if "path" in heads and "label" in heads:
                        col_path, col_label = heads.index("path"), heads.index("label")
                        col_split = heads.index("split") if "split" in heads else None
                        width = len(heads)
                        continue
                    if not (base / fields[0].strip()).expanduser().is_file():  # a header of other names
                        raise DatasetError(f"missing columns path,label: the first row {','.join(fields)!r} is "
                                           "neither that header nor a row whose image exists (name the columns "
                                           "path,label, optionally split)", self.manifest, line)
                rows_read += 1
                if len(fields) != width:
                    issues.error(
                        "malformed row", f"expected {width} fields, found {len(fields)}", self.manifest, line
                    )
                    continue
                if want != "all":
                    if col_split is None:
                        if want == "train":  # a manifest without splits is training data
                            entries.append((fields[col_path].strip(), fields[col_label].strip(), line))
                            continue
                        raise MissingSplitError(
                            f"split {split!r} asked, but the manifest has no 'split' column", self.manifest, 1
                        )
                    try:
                        row_split = normalize_split(fields[col_split])
                    except DatasetError:
                        issues.error("bad split", f"unknown split {fields[col_split]!r}", self.manifest, line)
                        continue
                    if row_split != want:
                        continue
                entries.append((fields[col_path].strip(), fields[col_label].strip(), line))
        all_int = all(_is_int(lab) for _, lab, _ in entries)
        if classes is not None:
            names = [str(c) for c in classes]
        elif all_int and entries:
            top = max(int(lab) for _, lab, _ in entries)
            names = [str(i) for i in range(max(top + 1, num_classes or 0))]
        else:
            names = sorted({lab for _, lab, _ in entries if not _is_int(lab)})
            if any(_is_int(lab) for _, lab, _ in entries):
                raise DatasetError(
                    "labels mix class names and integer indices; pass classes=[...] to say which "
                    "index is which name",
                    self.manifest,
                )
        _check_count(names, num_classes, self.manifest)
        index = {n: i for i, n in enumerate(names)}
        rows = []
        for rel, lab, line in entries:
            if _is_int(lab):
                label = int(lab)
                if not 0 <= label < len(names):
                    issues.error(
                        "bad label", f"label {lab} is not in 0..{len(names) - 1}", self.manifest, line
                    )
                    continue
            elif lab in index:
                label = index[lab]
            else:
                issues.error(
                    "bad label", f"unknown class {lab!r} (classes: {', '.join(names)})", self.manifest, line
                )
                continue
            if not rel:
                issues.error("malformed row", "empty path", self.manifest, line)
                continue
            rows.append((base / rel, label, self.manifest, line, None))
        paths, labels, _, report = finish_files(
            self.name, want, self.manifest, names, rows, rows_read, issues, verify
        )
        super().__init__(paths, names, labels, report, transform)


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True
