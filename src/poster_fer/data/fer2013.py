"""FER2013 (Kaggle ``fer2013.csv``) read straight from the CSV file; FER+ (:mod:`poster_fer.data.ferplus`) relabels
its faces.

The pixel file is streamed (plain or gzip, never unpacked to disk), parsed once per process into a uint8
(N, 48, 48) array and cached by path, size and modification time, so building train/val/test datasets,
or FER2013 and FER+ side by side, costs one parse.
"""

from __future__ import annotations

import os
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..constants import FER2013_CLASSES
from .base import FERDataset, Transform, cached_file_parser, check_class_names, normalize_split
from .errors import DatasetError, IssueLog

USAGES = ("Training", "PublicTest", "PrivateTest")
_USAGE_CODE = {name.encode(): i for i, name in enumerate(USAGES)}
SPLIT_USAGE = {"train": (0,), "val": (1,), "test": (2,), "all": (0, 1, 2)}
_SIDE = 48
_NPIX = _SIDE * _SIDE


@dataclass(frozen=True)
class Fer2013Table:
    """Every row of a fer2013.csv, in file order (row i of FER+ describes row i here).

    ``pixels`` is uint8 (N, 48, 48); ``emotions`` and ``usage`` are -1 where the row is broken, and
    ``problems`` maps such row indices to ``(reason, message)``. ``lines`` holds 1-based file line numbers.
    The arrays are read-only because the table is shared through the cache.
    """

    path: Path
    pixels: np.ndarray
    emotions: np.ndarray
    usage: np.ndarray
    lines: np.ndarray
    problems: dict[int, tuple[str, str]]

    def __len__(self) -> int:
        return int(self.emotions.shape[0])


def _read_lines(path: Path, chunk_size: int = 1 << 22) -> Iterator[bytes]:
    """Stream a text file's lines as bytes, decompressing gzip on the fly (multi-member files too)."""
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
        fh.seek(0)
        inflater = zlib.decompressobj(31) if gz else None
        tail = b""
        while True:
            raw = fh.read(chunk_size)
            if not raw:
                break
            if inflater is not None:
                chunk = inflater.decompress(raw)
                while inflater.eof and inflater.unused_data:
                    rest = inflater.unused_data
                    inflater = zlib.decompressobj(31)
                    chunk += inflater.decompress(rest)
            else:
                chunk = raw
            lines = (tail + chunk).split(b"\n")
            tail = lines.pop()
            yield from lines
        if inflater is not None:
            tail += inflater.flush()
            if not inflater.eof:
                raise DatasetError("gzip stream ends early (truncated download?)", path)
        if tail:
            yield tail


def _header_columns(lines: Iterator[bytes], path: Path) -> tuple[list[int], int]:
    """Read the header (the first non-blank line): the emotion, pixels and Usage column indices, and the width."""
    header = b""
    for header in lines:
        if header.strip():
            break
    names = [
        h.strip().strip(b'"').decode("utf-8", "replace").lower() for h in header.rstrip(b"\r").split(b",")
    ]
    try:
        cols = [names.index("emotion"), names.index("pixels"), names.index("usage")]
    except ValueError:
        raise DatasetError(f"expected header emotion,pixels,Usage, found {header[:80]!r}", path, 1) from None
    return cols, len(names)


def _row_fields(line: bytes, cols: list[int], ncols: int) -> tuple[bytes, bytes, bytes] | None:
    """The (emotion, pixels, Usage) fields of a data line, or None when it has the wrong number of fields.

    The usual ``emotion,pixels,Usage`` order is cut at its first and last comma rather than split, since the
    pixel field is by far the longest."""
    if cols == [0, 1, 2] and ncols == 3:
        i, j = line.find(b","), line.rfind(b",")
        return None if i < 0 or i == j else (line[:i], line[i + 1 : j], line[j + 1 :])
    split = line.split(b",")
    return (split[cols[0]], split[cols[1]], split[cols[2]]) if len(split) == ncols else None


def _row_problem(emo_s: bytes, pix_s: bytes, use_s: bytes, vals: np.ndarray) -> tuple[str, str] | None:
    """Why a row's fields are unusable as ``(reason, message)``, or None when the row is good."""
    emo = _int_or(emo_s, -1)
    if not 0 <= emo < len(FER2013_CLASSES):
        return "bad label", f"emotion {emo_s.decode('utf-8', 'replace')!r} is not in 0..6"
    if _USAGE_CODE.get(use_s, -1) < 0:
        return "bad usage", f"Usage {use_s.decode('utf-8', 'replace')!r} is not one of {USAGES}"
    if vals.size != _NPIX:
        found = len(pix_s.split())
        if found == _NPIX:
            return "bad pixels", "pixels holds a value that is not an integer"
        return "wrong pixel count", f"expected {_NPIX} pixel values (48x48), found {found}"
    if (vals >> 8).any():
        return "bad pixels", "pixel value outside 0..255"
    return None


def _int_or(text: bytes, default: int) -> int:
    try:
        return int(text)
    except ValueError:
        return default


class _TableRows:
    """The parsed rows so far, in file order; a broken row keeps its place with blank pixels and -1 labels."""

    def __init__(self) -> None:
        self.pixels: list[np.ndarray] = []
        self.emotions: list[int] = []
        self.usage: list[int] = []
        self.lines: list[int] = []
        self.problems: dict[int, tuple[str, str]] = {}
        self.blank = np.zeros(_NPIX, dtype=np.uint8)

    def add(self, lineno: int, parts: tuple[bytes, bytes, bytes] | None, ncols: int) -> None:
        """Append one data line's row, recording its problem (if any) instead of raising."""
        row = len(self.emotions)
        self.lines.append(lineno)
        if parts is None:
            self.problems[row] = ("malformed row", f"expected {ncols} comma-separated fields")
            self.pixels.append(self.blank)
            self.emotions.append(-1)
            self.usage.append(-1)
            return
        emo_s, pix_s, use_s = (p.strip().strip(b'"') for p in parts)
        self.usage.append(_USAGE_CODE.get(use_s, -1))
        try:
            vals = np.fromstring(pix_s, dtype=np.int16, sep=" ")
        except ValueError:  # numpy >= 2.4 raises on a value that is not an integer; _row_problem names the row
            vals = np.zeros(0, np.int16)
        problem = _row_problem(emo_s, pix_s, use_s, vals)
        if problem is not None:
            self.problems[row] = problem
            self.emotions.append(-1)
            self.pixels.append(self.blank)
        else:
            self.emotions.append(int(emo_s))
            self.pixels.append(vals.astype(np.uint8))

    def table(self, path: Path) -> Fer2013Table:
        """The rows as a read-only :class:`Fer2013Table`."""
        n = len(self.emotions)
        table = Fer2013Table(
            path=path,
            pixels=np.stack(self.pixels).reshape(n, _SIDE, _SIDE) if n else np.zeros((0, _SIDE, _SIDE), np.uint8),
            emotions=np.asarray(self.emotions, dtype=np.int8),
            usage=np.asarray(self.usage, dtype=np.int8),
            lines=np.asarray(self.lines, dtype=np.int32),
            problems=self.problems,
        )
        for arr in (table.pixels, table.emotions, table.usage, table.lines):
            arr.setflags(write=False)
        return table


def _parse_fer2013(path: Path) -> Fer2013Table:
    """Parse all rows, recording (not raising) per-row problems so each dataset applies its own on_error."""
    lines = _read_lines(path)
    cols, ncols = _header_columns(lines, path)
    rows = _TableRows()
    lineno = 1
    with warnings.catch_warnings():
        # np.fromstring warns when text stops parsing early; the length check in _row_problem reports it instead.
        warnings.simplefilter("ignore", DeprecationWarning)
        for raw in lines:
            lineno += 1
            line = raw.rstrip(b"\r")
            if line.strip():
                rows.add(lineno, _row_fields(line, cols, ncols), ncols)
    return rows.table(path)


_load_table = cached_file_parser(_parse_fer2013, "FER2013 csv not found")


def load_fer2013_table(path: str | os.PathLike[str]) -> Fer2013Table:
    """Parse a fer2013.csv / .csv.gz once per process (cached on path, size and mtime)."""
    return _load_table(path)


def split_rows(table: Fer2013Table, split: str, issues: IssueLog) -> np.ndarray:
    """Rows of the split; broken rows of this split (or of unknown split) go through ``issues``."""
    codes = SPLIT_USAGE[split]
    for row, (reason, message) in sorted(table.problems.items()):
        if table.usage[row] < 0 or table.usage[row] in codes:
            issues.error(reason, message, table.path, int(table.lines[row]))
    mask = np.isin(table.usage, codes) & (table.emotions >= 0)
    return np.flatnonzero(mask)


def gray_to_rgb(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(arr)).convert("RGB")


class Fer2013Dataset(FERDataset):
    """Kaggle FER2013: 48x48 grey faces as 3-channel RGB, 7 classes; Training / PublicTest / PrivateTest.

    Splits: ``train`` = Training, ``val`` = PublicTest, ``test`` = PrivateTest (the usual protocol),
    ``all``; the Usage names themselves are accepted too.
    """

    name = "fer2013"

    def __init__(
        self,
        csv_path: str | os.PathLike[str],
        split: str | None = "train",
        transform: Transform | None = None,
        on_error: str = "raise",
        class_names: Sequence[str] | None = None,
        verify: str | None = None,
    ) -> None:
        del verify  # accepted for a uniform factory call; every pixel row is validated while parsing
        issues = IssueLog(on_error)
        self.split = normalize_split(split)
        self.table = load_fer2013_table(csv_path)
        classes = check_class_names(FER2013_CLASSES, class_names, self.name)
        self.rows = split_rows(self.table, self.split, issues)
        labels = self.table.emotions[self.rows].astype(np.int64).tolist()
        report = issues.build_report(self.name, self.split, self.table.path, classes, labels, len(self.table))
        super().__init__(classes, labels, report, transform)

    def get_image(self, index: int) -> Image.Image:
        return gray_to_rgb(self.table.pixels[self.rows[index]])


_MOVED_TO_FERPLUS = ("FERPLUS_LABEL_MODES", "FERPLUS_VOTE_COLUMNS", "FerPlusDataset", "FerPlusVotes",
                     "ferplus_majority", "ferplus_target", "load_ferplus_votes")


def __getattr__(name: str) -> object:
    """FER+ moved to :mod:`poster_fer.data.ferplus`; its old address still answers, with a warning."""
    if name in _MOVED_TO_FERPLUS:
        from . import ferplus

        warnings.warn(f"poster_fer.data.fer2013.{name} moved to poster_fer.data.ferplus.{name}", DeprecationWarning,
                      stacklevel=2)
        return getattr(ferplus, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
