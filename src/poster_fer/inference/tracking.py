"""Greedy IoU tracking and per-track probability smoothing for video.

Per-frame expression predictions flicker: the detector's landmarks jitter by a few pixels, the crop moves,
and a face that is between two expressions flips label from frame to frame. Following each face from frame to
frame (the pair of boxes with the highest overlap is matched first) and averaging its probabilities with an
exponential moving average gives stable track ids and labels that change only when the expression does. This
is deliberately simple: no motion model, so fast motion or crossing faces can swap or restart tracks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["IoUTracker", "Track", "box_iou", "reading_order"]


def _xyxy(boxes: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """``(x, y, w, h)`` boxes as an ``(N, 4)`` float64 array of ``(x1, y1, x2, y2)`` corners."""
    xywh = np.asarray(boxes, dtype=np.float64)
    if xywh.size == 0:
        xywh = xywh.reshape(0, 4)
    if xywh.ndim != 2 or xywh.shape[1] != 4:
        raise ValueError(f"boxes must be (x, y, w, h), got an array of shape {xywh.shape}")
    return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)


def _iou_matrix(a: Sequence[Sequence[float]] | np.ndarray, b: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """IoU of every ``(x, y, w, h)`` box of ``a`` with every one of ``b``: a ``(len(a), len(b))`` float64 array.

    Numpy, not ``torchvision.ops.box_iou``, so tracking runs in the torch-free runtime; a pair whose union is
    empty (degenerate boxes) gets 0 rather than 0/0.
    """
    p, q = _xyxy(a)[:, None, :], _xyxy(b)[None, :, :]
    wh = np.clip(np.minimum(p[..., 2:], q[..., 2:]) - np.maximum(p[..., :2], q[..., :2]), 0.0, None)
    inter = wh[..., 0] * wh[..., 1]
    area = lambda r: (r[..., 2] - r[..., 0]) * (r[..., 3] - r[..., 1])  # noqa: E731
    union = area(p) + area(q) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0) + 0.0  # + 0.0: no negative zeros


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x, y, w, h)`` boxes (0 when their union is empty)."""
    return float(_iou_matrix([a], [b])[0, 0])


@dataclass
class Track:
    """One followed face: its id, last box, smoothed probabilities and when it was last seen."""

    id: int
    box: tuple[float, float, float, float]
    probs: np.ndarray
    last_frame: int
    hits: int = 1


def reading_order(boxes: Sequence[Sequence[float]]) -> list[int]:
    """Indices of ``boxes`` (x, y, w, h) in reading order: rows from the top, left to right within a row. Two
    faces share a row when the lower one's centre is above the middle of the row's first face's lower half."""
    order = sorted(range(len(boxes)), key=lambda i: float(boxes[i][1]) + float(boxes[i][3]) / 2)
    rows: list[list[int]] = []
    limit = -np.inf
    for i in order:
        centre = float(boxes[i][1]) + float(boxes[i][3]) / 2
        if not rows or centre > limit:
            rows.append([])
            limit = centre + float(boxes[i][3]) / 2
        rows[-1].append(i)
    return [i for row in rows for i in sorted(row, key=lambda i: float(boxes[i][0]))]


class IoUTracker:
    """Assign stable ids to per-frame detections and smooth their class probabilities.

    Args:
        iou_threshold: least overlap between a track's last box and a detection for them to match.
        max_age: frames (in the video's own numbering) a track survives without a match; with ``--every N``
            give it in original frames, so it should be several times N.
        alpha: weight of the newest probabilities in the moving average (1.0 = no smoothing).
    """

    def __init__(self, iou_threshold: float = 0.3, max_age: int = 30, alpha: float = 0.5) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.iou_threshold = float(iou_threshold)
        self.max_age = int(max_age)
        self.alpha = float(alpha)
        self.tracks: list[Track] = []
        self._next_id = 0

    @property
    def total_tracks(self) -> int:
        """Tracks started so far (ids run from 0 to this minus one)."""
        return self._next_id

    def update(
        self, frame: int, boxes: Sequence[Sequence[float]], probs: Sequence[np.ndarray] | np.ndarray
    ) -> list[tuple[int, np.ndarray]]:
        """Match this frame's detections to tracks; returns ``(track id, smoothed probs)`` per detection."""
        self.tracks = [t for t in self.tracks if frame - t.last_frame <= self.max_age]
        ious = _iou_matrix([t.box for t in self.tracks], boxes)  # (tracks, detections)
        pairs = sorted(
            ((float(ious[ti, di]), ti, di) for ti in range(len(self.tracks)) for di in range(len(boxes))),
            reverse=True,
        )
        assigned: dict[int, Track] = {}
        used: set[int] = set()
        for iou, ti, di in pairs:
            if iou < self.iou_threshold:
                break
            if ti in used or di in assigned:
                continue
            used.add(ti)
            assigned[di] = self.tracks[ti]
        started: set[int] = set()
        for di in reading_order(boxes):  # new faces are numbered as a reader meets them: rows, then left to right
            if di not in assigned:
                assigned[di] = Track(self._next_id, tuple(float(v) for v in boxes[di]),  # type: ignore[arg-type]
                                     np.asarray(probs[di], dtype=np.float64).copy(), frame)
                self._next_id += 1
                self.tracks.append(assigned[di])
                started.add(di)
        out = []
        for di, box in enumerate(boxes):
            track = assigned[di]
            if di not in started:
                p = np.asarray(probs[di], dtype=np.float64)
                track.probs = self.alpha * p + (1.0 - self.alpha) * track.probs
                track.box = tuple(float(v) for v in box)  # type: ignore[assignment]
                track.last_frame = frame
                track.hits += 1
            out.append((track.id, track.probs.copy()))
        return out
