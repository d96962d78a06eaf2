"""Draw predictions onto images: box, landmarks, label, and a probability bar per class for each face."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from .recognizer import FaceResult

__all__ = ["class_colour", "draw_predictions"]

# Distinct, readable colours (RGB) cycled by class index.
_PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 200, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (170, 110, 40),
)


def class_colour(index: int) -> tuple[int, int, int]:
    """RGB colour of class ``index``."""
    return _PALETTE[index % len(_PALETTE)]


def draw_predictions(
    rgb: np.ndarray,
    faces: Sequence[FaceResult],
    classes: Sequence[str],
    tracks: Sequence[int | None] | None = None,
) -> np.ndarray:
    """A copy of ``rgb`` with each face's box, landmarks, ``label pct`` caption and a per-class bar panel.

    The panel goes beside the box (right if it fits, else left, else inside the image edge) and is scaled to
    the image, so it stays legible on thumbnails and 4K frames alike.
    """
    out = np.ascontiguousarray(rgb.copy())
    h, w = out.shape[:2]
    unit = max(1.0, min(h, w) / 480.0)  # drawing scale: 1 for VGA-sized images
    font, fs = cv2.FONT_HERSHEY_SIMPLEX, 0.45 * unit
    thick = max(1, round(unit))
    for i, face in enumerate(faces):
        k = list(classes).index(face.label) if face.label in classes else 0
        colour = class_colour(k)
        x, y, bw, bh = (int(round(v)) for v in face.box)
        cv2.rectangle(out, (x, y), (x + bw, y + bh), colour, max(2, thick + 1))
        if face.landmarks is not None:
            for px, py in np.asarray(face.landmarks):
                cv2.circle(out, (int(round(px)), int(round(py))), max(2, thick + 1), (255, 255, 255), -1)
        track = tracks[i] if tracks is not None else None
        caption = f"{face.label} {face.confidence:.0%}" + (f"  #{track}" if track is not None else "")
        (tw, th), base = cv2.getTextSize(caption, font, fs * 1.2, thick)
        ty = y - 4 if y - th - base - 4 >= 0 else min(h - base - 1, y + bh + th + 4)
        cv2.rectangle(out, (x, ty - th - 3), (x + tw + 4, ty + base), colour, -1)
        cv2.putText(out, caption, (x + 2, ty), font, fs * 1.2, (0, 0, 0), thick, cv2.LINE_AA)
        _bars(out, face, classes, (x, y, bw, bh), unit, font, fs, thick)
    return out


def _bars(out: np.ndarray, face: FaceResult, classes: Sequence[str], box: tuple[int, int, int, int],
          unit: float, font: int, fs: float, thick: int) -> None:
    h, w = out.shape[:2]
    x, y, bw, _ = box
    row = int(round(14 * unit))
    names = [c[:10] for c in classes]
    label_w = max(cv2.getTextSize(n, font, fs, thick)[0][0] for n in names) + 4
    bar_w = int(round(60 * unit))
    panel_w, panel_h = label_w + bar_w + 6, row * len(classes) + 4
    px = x + bw + 6
    if px + panel_w > w:
        px = x - panel_w - 6 if x - panel_w - 6 >= 0 else max(0, w - panel_w)
    py = int(min(max(0, y), max(0, h - panel_h)))
    roi = out[py:py + panel_h, px:px + panel_w]
    roi[:] = (roi.astype(np.float32) * 0.35).astype(np.uint8)  # darkened backdrop, image still visible
    for j, (name, cls) in enumerate(zip(names, classes, strict=True)):
        p = float(face.probabilities.get(cls, 0.0))
        ry = py + 2 + j * row
        cv2.putText(out, name, (px + 2, ry + row - 4), font, fs, (255, 255, 255), thick, cv2.LINE_AA)
        bx = px + label_w
        cv2.rectangle(out, (bx, ry + 3), (bx + bar_w, ry + row - 2), (90, 90, 90), 1)
        if p > 0:
            cv2.rectangle(out, (bx, ry + 3), (bx + max(1, int(round(p * bar_w))), ry + row - 2),
                          class_colour(j), -1)
