"""FER+ (Microsoft ``fer2013new.csv``): ten annotators' votes per FER2013 face, read beside Kaggle's pixel file.

Its own module since it is its own dataset (8 classes, soft labels, votes as targets), though it shares the
pixels, their cached parse and the split rows with :mod:`poster_fer.data.fer2013`.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..constants import FERPLUS_CLASSES
from .base import FERDataset, Transform, cached_file_parser, check_class_names, normalize_split
from .errors import DatasetError, IssueLog
from .fer2013 import SPLIT_USAGE, USAGES, gray_to_rgb, load_fer2013_table, split_rows

__all__ = ["FERPLUS_LABEL_MODES", "FERPLUS_VOTE_COLUMNS", "FerPlusDataset", "FerPlusVotes", "ferplus_majority",
           "ferplus_target", "load_ferplus_votes"]

#: FER+ vote columns in file order: the 8 emotions, then ``unknown`` and ``NF`` (not a face).
FERPLUS_VOTE_COLUMNS = [*FERPLUS_CLASSES, "unknown", "NF"]
FERPLUS_LABEL_MODES = ("majority", "probability", "crossentropy", "multi_target", "votes")


@dataclass(frozen=True)
class FerPlusVotes:
    """The parsed fer2013new.csv: per row usage, image name and the 10 vote counts (-1 where broken)."""

    path: Path
    usage: list[str]
    names: list[str]
    votes: np.ndarray
    lines: list[int]
    problems: dict[int, tuple[str, str]]

    def __len__(self) -> int:
        return len(self.names)


def _parse_ferplus(path: Path) -> FerPlusVotes:
    usage: list[str] = []
    names: list[str] = []
    votes: list[list[int]] = []
    lines: list[int] = []
    problems: dict[int, tuple[str, str]] = {}
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        expect = ["usage", "image name", *[c.lower() for c in FERPLUS_VOTE_COLUMNS]]
        if header is None or [h.strip().lower() for h in header] != expect:
            raise DatasetError(f"expected header Usage,Image name,{','.join(FERPLUS_VOTE_COLUMNS)}", path, 1)
        for fields in reader:
            row = len(names)
            lines.append(reader.line_num)
            if len(fields) != 12:
                problems[row] = ("malformed row", f"expected 12 fields, found {len(fields)}")
                usage.append("")
                names.append("")
                votes.append([-1] * 10)
                continue
            usage.append(fields[0].strip())
            names.append(fields[1].strip())
            try:
                counts = [int(v) for v in fields[2:]]
            except ValueError:
                counts = [-1] * 10
            if min(counts) < 0:
                problems[row] = ("bad votes", "vote counts must be non-negative integers")
                counts = [-1] * 10
            votes.append(counts)
    arr = np.asarray(votes, dtype=np.int32).reshape(-1, 10)
    arr.setflags(write=False)
    return FerPlusVotes(path, usage, names, arr, lines, problems)


_load_votes = cached_file_parser(_parse_ferplus, "FER+ label file fer2013new.csv not found")


def load_ferplus_votes(path: str | os.PathLike[str]) -> FerPlusVotes:
    """Parse fer2013new.csv once per process (cached on path, size and mtime)."""
    return _load_votes(path)


def ferplus_majority(votes: np.ndarray) -> np.ndarray:
    """Microsoft's FER+ majority label for each row of (N, 10) votes, or -1 when there is no majority.

    Counts of 1 are zeroed (outlier votes); the label is the first argmax over all 10 columns if its count
    is more than half of the remaining total. A result of 8 (unknown) or 9 (NF) is a real majority that the
    datasets drop, as is -1.
    """
    v = np.asarray(votes, dtype=np.int64)
    squeeze = v.ndim == 1
    v = np.atleast_2d(v)
    v = np.where(v <= 1, 0, v)
    peak = v.max(axis=1)
    label = np.where(2 * peak > v.sum(axis=1), v.argmax(axis=1), -1)
    return label[0] if squeeze else label


_MAJORITY_DROP = {8: "majority unknown", 9: "majority NF"}


def _reference_distribution(raw: Sequence[int]) -> np.ndarray | None:
    """The 'probability'/'crossentropy' distribution of Microsoft's FER+ reader over 10 columns, or None.

    After zeroing counts of 1, the largest counts are taken (ties together) until they hold at least 75% of
    the votes or three emotions are taken; meeting unknown/NF stops the search (and is discarded if emotions
    came first). Rows keeping no more than half of the votes, or more than three emotions, are unknown.
    """
    v = [float(x) if x > 1 else 0.0 for x in raw]
    total = sum(v)
    picked = [0.0] * len(v)
    taken, count, going = 0.0, 0, True
    while taken < 0.75 * total and count < 3 and going:
        peak = max(v)
        for i, x in enumerate(v):
            if x != peak:
                continue
            picked[i] = peak
            v[i] = 0.0
            taken += peak
            count += 1
            if i >= 8:
                going = False
                if sum(picked) > peak:
                    picked[i] = 0.0
                    count -= 1
                break
    if sum(picked) <= 0.5 * total or count > 3:
        return None
    return np.asarray(picked, dtype=np.float64)


def ferplus_target(votes: Sequence[int], mode: str = "majority") -> tuple[int | np.ndarray | None, str]:
    """One FER+ row's target under ``mode``, or ``(None, reason)`` when FER+ excludes the image.

    ``majority`` gives an int in 0..7. ``probability`` and ``crossentropy`` give the same 8-class
    distribution (Microsoft's reader; it differs only at training time, where 'probability' draws a one-hot
    label from it per minibatch); ``multi_target`` gives Microsoft's multi-label target (emotions with at
    least 30% of the votes set to 1-eps, others eps); ``votes`` gives the plain distribution of the
    outlier-removed votes over the 8 emotions, for the rows the majority rule keeps.
    """
    raw = [int(x) for x in votes]
    if len(raw) != 10:
        raise ValueError(f"FER+ rows have 10 vote counts, got {len(raw)}")
    if mode not in FERPLUS_LABEL_MODES:
        raise ValueError(f"FER+ label mode must be one of {FERPLUS_LABEL_MODES}, not {mode!r}")
    major = int(ferplus_majority(np.asarray(raw)))
    if mode in ("majority", "votes"):
        if major < 0:
            return None, "unknown (no majority)"
        if major >= 8:
            return None, f"majority {FERPLUS_VOTE_COLUMNS[major]}"
        if mode == "majority":
            return major, ""
        v = np.asarray([x if x > 1 else 0 for x in raw[:8]], dtype=np.float64)
        return (v / v.sum()).astype(np.float32), ""
    if mode == "multi_target":
        v = np.asarray([x if x > 1 else 0 for x in raw], dtype=np.float64)
        picked = np.where(v >= 0.3 * v.sum(), v, 0.0)
        dist = None if picked.sum() <= 0.5 * v.sum() else picked
    else:
        dist = _reference_distribution(raw)
    if dist is None:
        return None, "unknown (votes too spread)"
    top = int(np.argmax(dist))
    if top >= 8:
        return None, f"majority {FERPLUS_VOTE_COLUMNS[top]}"
    emo = dist[:8] / dist[:8].sum()
    if mode == "multi_target":
        eps = 0.001
        emo = (1 - eps) * (emo > 0) + eps
    return emo.astype(np.float32), ""


class FerPlusDataset(FERDataset):
    """FER+ : FER2013 pixels with Microsoft's 10-annotator labels, 8 classes (:data:`FERPLUS_CLASSES`).

    Row i of ``fer2013new.csv`` labels row i of ``fer2013.csv``; the split comes from fer2013.csv's Usage
    (as Microsoft's generator does): ``train`` = Training, ``val`` = PublicTest (FER+ valid), ``test`` =
    PrivateTest (FER+ test). Rows with an empty image name, and rows the label rule calls unknown or NF,
    are dropped and counted in ``report.dropped``.

    ``label_mode``:

    - ``majority`` (default; always use it for evaluation): hard labels, see :func:`ferplus_majority`.
    - ``crossentropy``: soft targets exactly as Microsoft's reader builds them (top emotions holding >=75% of
      the outlier-removed votes, at most three, renormalised over the 8 emotions); train with soft-target CE.
    - ``probability``: the same soft targets as ``crossentropy``. Microsoft's trainer differs only in drawing
      a one-hot label from this distribution per minibatch; a Dataset returns the distribution and leaves
      the draw to the training loop (sample from it, or use soft CE, which has the same expectation).
    - ``multi_target``: Microsoft's multi-label target (see :func:`ferplus_target`).
    - ``votes``: the plain outlier-removed vote distribution over the 8 emotions, on the majority rows.

    Soft modes keep different rows from ``majority`` (their unknown rule differs), so counts differ.
    Four image names occur twice in fer2013new.csv; Microsoft's generator keeps only the later row's image
    under that name, while here every row keeps its own pixels.
    """

    name = "ferplus"

    def __init__(
        self,
        fer_csv: str | os.PathLike[str],
        ferplus_csv: str | os.PathLike[str],
        split: str | None = "train",
        transform: Transform | None = None,
        label_mode: str = "majority",
        on_error: str = "raise",
        class_names: Sequence[str] | None = None,
        verify: str | None = None,
    ) -> None:
        del verify  # accepted for a uniform factory call; every pixel row is validated while parsing
        if label_mode not in FERPLUS_LABEL_MODES:
            raise ValueError(f"label_mode must be one of {FERPLUS_LABEL_MODES}, not {label_mode!r}")
        issues = IssueLog(on_error)
        self.split = normalize_split(split)
        self.label_mode = label_mode
        self.table = load_fer2013_table(fer_csv)
        self.plus = load_ferplus_votes(ferplus_csv)
        classes = check_class_names(FERPLUS_CLASSES, class_names, self.name)
        if len(self.plus) != len(self.table):
            raise DatasetError(
                f"{len(self.plus)} label rows for {len(self.table)} image rows in {self.table.path}; "
                "row i of fer2013new.csv must describe row i of fer2013.csv",
                self.plus.path,
            )
        candidates = split_rows(self.table, self.split, issues)
        self._report_vote_problems(issues)
        rows, targets = self._pick_rows(candidates, issues)
        self.rows = np.asarray(rows, dtype=np.int64)
        if label_mode == "majority":
            final: list[int] | np.ndarray = [int(t) for t in targets]
            labels = list(final)
        else:
            final = np.stack(targets).astype(np.float32) if targets else np.zeros((0, 8), np.float32)
            labels = final.argmax(axis=1).tolist()
        report = issues.build_report(self.name, self.split, self.plus.path, classes, labels, len(self.table))
        super().__init__(classes, final, report, transform)

    def _report_vote_problems(self, issues: IssueLog) -> None:
        """Broken vote rows of this split (or of a row whose split is unknown) go through ``issues``."""
        codes = SPLIT_USAGE[self.split]
        for row, (reason, message) in sorted(self.plus.problems.items()):
            if self.table.usage[row] < 0 or self.table.usage[row] in codes:
                issues.error(reason, message, self.plus.path, self.plus.lines[row])

    def _pick_rows(self, candidates: np.ndarray, issues: IssueLog) -> tuple[list[int], list]:
        """The split's rows FER+ keeps and their targets; the others are counted as errors or drops."""
        majority = ferplus_majority(self.plus.votes) if self.label_mode == "majority" else None
        rows: list[int] = []
        targets: list = []
        for row in candidates.tolist():
            if row in self.plus.problems or not self._usage_agrees(row, issues):
                continue
            if not self.plus.names[row]:
                issues.drop("no image name (dropped by FER+)")
                continue
            if majority is not None:  # vectorised fast path, same rule as ferplus_target
                m = int(majority[row])
                target, why = (m, "") if 0 <= m < 8 else (None, _MAJORITY_DROP.get(m, "unknown (no majority)"))
            else:
                target, why = ferplus_target(self.plus.votes[row], self.label_mode)
            if target is None:
                issues.drop(why)
                continue
            rows.append(row)
            targets.append(target)
        return rows, targets

    def _usage_agrees(self, row: int, issues: IssueLog) -> bool:
        """Whether the two files give the row the same Usage; a disagreement is an error."""
        usage = USAGES[self.table.usage[row]]
        if self.plus.usage[row] == usage:
            return True
        issues.error(
            "usage mismatch",
            f"Usage {self.plus.usage[row]!r} disagrees with {usage!r} "
            f"on line {int(self.table.lines[row])} of {self.table.path}",
            self.plus.path,
            self.plus.lines[row],
        )
        return False

    @property
    def image_names(self) -> list[str]:
        """FER+ image names (``fer0000000.png``...) of the kept rows, for matching other FER+ copies."""
        return [self.plus.names[r] for r in self.rows.tolist()]

    def get_image(self, index: int) -> Image.Image:
        return gray_to_rgb(self.table.pixels[self.rows[index]])
