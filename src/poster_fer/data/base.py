"""The dataset base classes and the helpers shared by every layout (splits, image checks, class names)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .errors import DatasetError, IssueLog, LoadReport, MissingSplitError

Transform = Callable[[Image.Image], Any]
Verify = Literal["decode", "header", "exists"]
T = TypeVar("T")

#: File suffixes treated as images by the folder layout.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})

_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "publictest": "val",
    "test": "test",
    "testing": "test",
    "privatetest": "test",
    "all": "all",
}


def normalize_split(split: str | None) -> str:
    """Map a split name or alias (Training, PublicTest, valid, ...) to ``train``/``val``/``test``/``all``."""
    if split is None:
        return "all"
    key = str(split).strip().lower()
    if key not in _SPLIT_ALIASES:
        raise DatasetError(
            f"unknown split {split!r}; use train, val, test or all (or an alias: {sorted(_SPLIT_ALIASES)})"
        )
    return _SPLIT_ALIASES[key]


def no_split_error(dataset: str, split: str, available: Sequence[str], note: str = "") -> MissingSplitError:
    """The error for a split a dataset does not have, pointing at the held-out-validation helper."""
    msg = f"{dataset} has no {split!r} split (it has {', '.join(available)})"
    if split == "val":
        msg += "; carve one from train with build_dataset(..., val_fraction=0.1) or holdout_split()"
    return MissingSplitError(msg + (f". {note}" if note else ""))


def check_class_names(default: Sequence[str], class_names: Sequence[str] | None, dataset: str) -> list[str]:
    """Return the class names to use, refusing a renaming whose length differs (a class-count mismatch)."""
    if class_names is None:
        return list(default)
    names = [str(n) for n in class_names]
    if len(names) != len(default):
        raise DatasetError(
            f"class-count mismatch: {dataset} has {len(default)} classes ({', '.join(default)}), "
            f"but {len(names)} class names were given"
        )
    return names


def _probe_image(path: Path, verify: str) -> str | None:
    """Why an image is unusable (None when fine): ``decode`` catches truncation, ``header`` the format."""
    try:
        if not path.is_file():
            return "missing"
        if verify == "exists":
            return None
        with Image.open(path) as im:
            if verify == "decode":
                im.load()
    except FileNotFoundError:
        return "missing"
    except Exception as exc:  # PIL raises several types for bad files; all mean "unreadable"
        return f"unreadable: {type(exc).__name__}: {exc}"
    return None


def check_images(
    paths: Sequence[Path],
    verify: str,
    issues: IssueLog,
    where: Sequence[tuple[Path, int | None]] | None = None,
) -> list[bool]:
    """Check image files up front so a missing or truncated file fails at load, not mid-epoch.

    ``where`` gives, per image, the list file and line that named it (used in messages). Decoding runs in
    a thread pool, since PIL releases the GIL while decoding.
    """
    if verify not in ("decode", "header", "exists"):
        raise ValueError(f"verify must be 'decode', 'header' or 'exists', not {verify!r}")
    if not paths:
        return []
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        problems = list(pool.map(lambda p: _probe_image(p, verify), paths, chunksize=64))
    keep = []
    for i, (path, problem) in enumerate(zip(paths, problems, strict=True)):
        if problem is None:
            keep.append(True)
            continue
        keep.append(False)
        src, line = where[i] if where is not None else (path, None)
        if problem == "missing":
            reason, text = "missing image", f"image file not found: {path}"
        else:
            reason, text = "unreadable image", f"cannot read image {path} ({problem[len('unreadable: ') :]})"
        issues.error(reason, text, src, line)
    return keep


class FERDataset(Dataset):
    """Base of every dataset here: class names, targets and a load report travel with the samples.

    ``targets`` is a list of int class indices (hard labels) or a float32 array of shape (N, C) (soft labels,
    FER+ distributions). ``__getitem__`` returns ``(transform(image), target)`` where the image handed to the
    transform is a PIL RGB image and the target is an int or a float tensor of length C.
    """

    name = "dataset"

    def __init__(
        self,
        classes: Sequence[str],
        targets: list[int] | np.ndarray,
        report: LoadReport,
        transform: Transform | None = None,
    ) -> None:
        self.classes: list[str] = list(classes)
        self.targets = targets
        self.report = report
        self.transform = transform

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def soft(self) -> bool:
        """True when targets are distributions rather than class indices."""
        return isinstance(self.targets, np.ndarray) and self.targets.ndim == 2

    @property
    def labels(self) -> np.ndarray:
        """Hard labels (argmax for soft targets), for stratifying, sampling and accuracy."""
        if self.soft:
            return np.asarray(self.targets).argmax(axis=1).astype(np.int64)
        return np.asarray(self.targets, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.targets)

    def get_image(self, index: int) -> Image.Image:
        """The untransformed sample as a PIL RGB image."""
        raise NotImplementedError

    def get_target(self, index: int) -> int | torch.Tensor:
        """The target: an int, or a float32 tensor for soft labels."""
        if self.soft:
            return torch.from_numpy(np.array(self.targets[index], dtype=np.float32))
        return int(self.targets[index])

    def __getitem__(self, index: int) -> tuple[Any, int | torch.Tensor]:
        image = self.get_image(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, self.get_target(index)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.report.summary()})"


class ImageFileDataset(FERDataset):
    """A dataset whose samples are image files on disk, optionally cropped to a box (x0, y0, x1, y1)."""

    def __init__(
        self,
        paths: Sequence[Path],
        classes: Sequence[str],
        targets: list[int] | np.ndarray,
        report: LoadReport,
        transform: Transform | None = None,
        boxes: Sequence[tuple[int, int, int, int] | None] | None = None,
    ) -> None:
        super().__init__(classes, targets, report, transform)
        self.paths: list[Path] = list(paths)
        self.boxes = None if boxes is None else list(boxes)

    def get_image(self, index: int) -> Image.Image:
        path = self.paths[index]
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except Exception as exc:
            raise DatasetError(f"cannot read image ({type(exc).__name__}: {exc})", path) from exc
        if self.boxes is not None and self.boxes[index] is not None:
            x0, y0, x1, y1 = self.boxes[index]
            w, h = image.size
            x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
            if x1 > x0 and y1 > y0:
                image = image.crop((x0, y0, x1, y1))
        return image


#: One parsed list-file row: (image path, label, the list file naming it, its line or None, face box or None).
Row = tuple[Path, int, Path, int | None, tuple[int, int, int, int] | None]


@dataclass
class ParsedRows:
    """What reading a layout's list file gave: its rows, how many it read, and the problems met on the way."""

    rows: list[Row]
    rows_read: int
    issues: IssueLog


@dataclass(frozen=True)
class SplitSource:
    """Which dataset split a report describes: the dataset's name, the split, the file or folder, the classes."""

    name: str
    split: str
    source: Path
    classes: list[str]


def finish_files(
    where: SplitSource, parsed: ParsedRows, verify: str
) -> tuple[list[Path], list[int], list[Any], LoadReport]:
    """Check the images named by parsed rows ``(image, label, list_file, line, box)``; keep the good ones."""
    rows, issues = parsed.rows, parsed.issues
    keep = check_images([r[0] for r in rows], verify, issues, [(r[2], r[3]) for r in rows])
    kept = [r for r, ok in zip(rows, keep, strict=True) if ok]
    paths = [r[0] for r in kept]
    labels = [r[1] for r in kept]
    boxes = [r[4] for r in kept]
    report = issues.build_report(where.name, where.split, where.source, where.classes, labels, parsed.rows_read)
    return paths, labels, boxes, report


def cached_file_parser(parse: Callable[[Path], T], missing: str) -> Callable[[str | os.PathLike[str]], T]:
    """A loader that parses a file once per process, cached on its resolved path, size and modification time.

    Why: the FER2013 pixel file and the FER+ vote file are each read by several datasets (train/val/test, FER2013
    and FER+ side by side); one parse serves them all, and an edited file is parsed afresh. ``missing`` is the
    error message when the file does not exist.
    """

    @functools.lru_cache(maxsize=4)
    def cached(path: str, mtime_ns: int, size: int) -> T:
        return parse(Path(path))

    def load(path: str | os.PathLike[str]) -> T:
        p = Path(path).expanduser().resolve()
        if not p.is_file():
            raise DatasetError(missing, p)
        st = p.stat()
        return cached(str(p), st.st_mtime_ns, st.st_size)

    return load
