"""Face detection: YuNet (box + 5 landmarks) by default, OpenCV's Haar cascade as a weaker fallback.

Alignment needs the 5 landmarks, which YuNet predicts. The Haar cascade ships inside opencv-python 4.x
and needs no model download, so it keeps the tool usable offline, but it misses non-frontal faces, gives
no confidence and no landmarks; its landmarks are estimated from the box (``Face.landmarks_estimated``),
which makes its crops coarser than YuNet's.

Detectors return what they found as is; :func:`drop_invalid_faces` is the one place that throws out detections
that cannot be faces (non-finite numbers, empty boxes, boxes off the image). The recogniser applies it after
every detector, built-in or not, and counts what it dropped; direct callers of ``detect`` should do the same.

Detectors wrap OpenCV objects that are not thread-safe; use one detector per thread.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
from PIL import Image

from .download import DetectorModelError, yunet_model_path
from .io import to_rgb_array

__all__ = [
    "HAAR_LANDMARK_RATIOS",
    "LANDMARK_NAMES",
    "YUNET_MIN_SIDE",
    "Face",
    "FaceDetector",
    "HaarDetector",
    "YuNetDetector",
    "build_detector",
    "drop_invalid_faces",
    "invalid_face_reason",
]

LANDMARK_NAMES = ("right_eye", "left_eye", "nose_tip", "right_mouth_corner", "left_mouth_corner")


@dataclass(eq=False)
class Face:
    """One detected face, in the pixel coordinates of the image it was found in.

    ``landmarks`` is ``(5, 2)`` (x, y) in YuNet's order, see :data:`LANDMARK_NAMES`; "right" is the
    subject's right, which is on the image's left for a frontal face.
    """

    box: tuple[float, float, float, float]  # x, y, w, h
    landmarks: np.ndarray
    score: float
    landmarks_estimated: bool = False

    def __post_init__(self) -> None:
        self.box = tuple(float(v) for v in self.box)  # type: ignore[assignment]
        self.landmarks = np.asarray(self.landmarks, dtype=np.float64).reshape(5, 2)
        self.score = float(self.score)

    @property
    def area(self) -> float:
        return self.box[2] * self.box[3]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for prediction output."""
        return {
            "box": [round(v, 2) for v in self.box],
            "landmarks": {n: [round(float(x), 2), round(float(y), 2)] for n, (x, y) in
                          zip(LANDMARK_NAMES, self.landmarks, strict=True)},
            "score": round(self.score, 4),
            "landmarks_estimated": self.landmarks_estimated,
        }


class FaceDetector(Protocol):
    """What the rest of the package needs from a detector."""

    name: str

    def detect(self, image: np.ndarray | Image.Image) -> list[Face]: ...


def invalid_face_reason(face: Face, image_size: tuple[int, int]) -> str | None:
    """Why ``face`` cannot be a real detection in an image of ``image_size = (width, height)``; None if it can be.

    Detectors are not trusted: YuNet invents faces on degenerate inputs (see :data:`YUNET_MIN_SIDE`) and a custom
    detector may return anything, and one such "face" would be aligned, classified and reported like a real one.
    Refused: NaN or infinite numbers anywhere, boxes under one pixel wide or high (zero or negative size), boxes
    that do not overlap the image, and landmarks more than one box size outside their box (which no detector
    produces for a real face). Landmarks outside the image are allowed: a face at the border can have them there.
    """
    try:
        x, y, w, h = (float(v) for v in face.box)
        pts = np.asarray(face.landmarks, dtype=np.float64).reshape(5, 2)
        score = float(face.score)
    except (TypeError, ValueError) as err:
        return f"malformed detection ({err})"
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return "non-finite box"
    if not np.isfinite(pts).all():
        return "non-finite landmarks"
    if not math.isfinite(score):
        return "non-finite score"
    if w < 1.0 or h < 1.0:
        return "zero-size or negative box"
    width, height = image_size
    if x + w <= 0 or y + h <= 0 or x >= width or y >= height:
        return "box outside the image"
    if ((pts < (x - w, y - h)) | (pts > (x + 2 * w, y + 2 * h))).any():
        return "landmarks far outside the box"
    return None


def drop_invalid_faces(faces: Iterable[Face], image_size: tuple[int, int]) -> tuple[list[Face], list[str]]:
    """Split detections into the plausible ones (order kept) and the reasons the others were dropped.

    The single validity check of the package (see :func:`invalid_face_reason`); callers report
    ``len(reasons)`` so that dropped detections are counted, never silently lost.
    """
    kept: list[Face] = []
    reasons: list[str] = []
    for face in faces:
        reason = invalid_face_reason(face, image_size)
        if reason is None:
            kept.append(face)
        else:
            reasons.append(reason)
    return kept, reasons


#: Shortest image side YuNet is run at. OpenCV 4.14's ``FaceDetectorYN`` returns made-up faces (score 1.0, boxes
#: like ``[3e26, -inf, 0, inf]`` or finite ones far off the image, different on every call, so read from
#: uninitialised memory) for any input with a side of 32 px or less, whatever its content: a 3 x 4000 strip, a
#: 1 x 640 line, a 1280 x 1 column. Inputs with both sides of 33 px or more gave none in the same trials, so
#: narrower images are padded with black up to this size (bottom and right, so no coordinate changes).
YUNET_MIN_SIDE = 64


class YuNetDetector:
    """OpenCV's YuNet CNN detector (``cv2.FaceDetectorYN``): boxes, 5 landmarks and a confidence.

    Faces come back sorted by score, highest first. YuNet's landmarks are coarse: the same face shifted or
    rescaled moves them by up to about 10-15% of the eye distance, and for faces rolled by more than
    about 10 degrees they stay nearer to upright than the face is, so crops of strongly tilted heads are
    only partly de-rotated.
    """

    name = "yunet"

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        score_threshold: float = 0.6,
        nms_threshold: float = 0.3,
        top_k: int = 5000,
    ) -> None:
        self.model_path = Path(model_path)
        # kept readable (OpenCV does not give them back): the browser twin of this detector is set from them
        self.score_threshold, self.nms_threshold, self.top_k = float(score_threshold), float(nms_threshold), top_k
        if not self.model_path.is_file():
            raise DetectorModelError(f"YuNet model file not found: {self.model_path}")
        try:
            # the input size is a placeholder; detect() sets the real one per image
            self._net = cv2.FaceDetectorYN.create(
                str(self.model_path), "", (320, 320), score_threshold, nms_threshold, top_k
            )
        except cv2.error as err:
            msg = str(err).strip().splitlines()[-1] if str(err).strip() else "unknown OpenCV error"
            raise DetectorModelError(
                f"{self.model_path}: OpenCV cannot load it as a YuNet model ({msg})"
            ) from err

    def detect(self, image: np.ndarray | Image.Image) -> list[Face]:
        """Find faces in an RGB image (array or PIL; see :func:`~poster_fer.faces.io.to_rgb_array`)."""
        rgb = to_rgb_array(image)
        h, w = rgb.shape[:2]
        if min(h, w) < YUNET_MIN_SIDE:  # see YUNET_MIN_SIDE; padding bottom/right keeps the coordinates
            rgb = cv2.copyMakeBorder(rgb, 0, max(0, YUNET_MIN_SIDE - h), 0, max(0, YUNET_MIN_SIDE - w),
                                     cv2.BORDER_CONSTANT, value=(0, 0, 0))
            h, w = rgb.shape[:2]
        self._net.setInputSize((w, h))
        _, rows = self._net.detect(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))  # YuNet was trained on BGR
        if rows is None:
            return []
        faces = [
            Face(box=tuple(r[:4]), landmarks=np.asarray(r[4:14]).reshape(5, 2), score=float(r[14]))
            for r in np.asarray(rows, dtype=np.float64)
        ]
        return sorted(faces, key=lambda f: f.score, reverse=True)


# Landmark positions as fractions (x, y) of a frontal-face Haar box, YuNet's order. Measured, not guessed:
# symmetric medians of YuNet's landmarks inside the Haar box over the 2151 of the first 3000 FER2013 images
# (upscaled 4x and padded) where both detectors found the same single face. Individual faces scatter by a
# few percent of the box around these values, which is why Haar-based crops are coarser.
HAAR_LANDMARK_RATIOS: tuple[tuple[float, float], ...] = (
    (0.315, 0.384),
    (0.685, 0.384),
    (0.500, 0.603),
    (0.349, 0.763),
    (0.651, 0.763),
)


class HaarDetector:
    """Fallback detector: OpenCV's frontal-face Haar cascade, no download needed, clearly weaker.

    It misses turned, tilted and small faces more often than YuNet, has more false positives, gives no
    confidence (``score`` is 1.0 for every detection) and no landmarks: those are placed at fixed
    fractions of the box (:data:`HAAR_LANDMARK_RATIOS`) and marked ``landmarks_estimated=True``.
    With ``refine_eyes`` the eye cascade is run inside the box and, when it finds one plausible eye on
    each side, the eye landmarks move to those centres (nose and mouth stay estimated). On upscaled
    FER2013 faces this fires on about 70% of faces and barely helps (mean eye error against YuNet 4.0% ->
    3.9% of the box width); on sharper photos it matters more (on the astronaut sample it moves the eyes
    from about 6 px to within 2 px of YuNet's).
    Faces are sorted by area, largest first.
    """

    name = "haar"

    def __init__(
        self,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_size: tuple[int, int] = (30, 30),
        refine_eyes: bool = True,
    ) -> None:
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_size = min_size
        self.refine_eyes = refine_eyes
        self._face = _load_cascade("haarcascade_frontalface_default.xml")
        self._eye = _load_cascade("haarcascade_eye.xml") if refine_eyes else None

    def detect(self, image: np.ndarray | Image.Image) -> list[Face]:
        """Find frontal faces in an RGB image (array or PIL)."""
        rgb = to_rgb_array(image)
        grey = cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
        boxes = self._face.detectMultiScale(
            grey, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=self.min_size
        )
        faces = []
        for x, y, w, h in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
            pts = np.asarray(HAAR_LANDMARK_RATIOS) * (w, h) + (x, y)
            if self._eye is not None:
                eyes = self._find_eyes(grey, int(x), int(y), int(w), int(h))
                if eyes is not None:
                    pts[:2] = eyes
            faces.append(Face(box=(x, y, w, h), landmarks=pts, score=1.0, landmarks_estimated=True))
        return sorted(faces, key=lambda f: f.area, reverse=True)

    def _find_eyes(self, grey: np.ndarray, x: int, y: int, w: int, h: int) -> np.ndarray | None:
        """Eye centres from the eye cascade in the upper face, or None unless both are plausible."""
        top, bottom = y + int(0.15 * h), y + int(0.60 * h)
        roi = grey[top:bottom, x:x + w]
        if roi.size == 0:
            return None
        side = max(1, int(0.12 * w))
        found = self._eye.detectMultiScale(roi, scaleFactor=1.1, minNeighbors=3, minSize=(side, side))
        best: dict[str, tuple[float, float, float]] = {}  # side -> (area, cx, cy)
        for ex, ey, ew, eh in np.asarray(found, dtype=np.float64).reshape(-1, 4):
            cx, cy = x + ex + ew / 2, top + ey + eh / 2
            key = "right" if cx < x + w / 2 else "left"  # subject's right eye is on the image's left
            if ew * eh > best.get(key, (0.0,))[0]:
                best[key] = (ew * eh, cx, cy)
        if len(best) != 2:
            return None
        r, l = best["right"][1:], best["left"][1:]
        dist = l[0] - r[0]
        if not (0.25 * w <= dist <= 0.65 * w) or abs(l[1] - r[1]) > 0.12 * h:
            return None
        return np.array([r, l], dtype=np.float64)


def _load_cascade(filename: str) -> cv2.CascadeClassifier:
    base = getattr(getattr(cv2, "data", None), "haarcascades", None)
    if not base:
        raise DetectorModelError(
            "this OpenCV build ships no Haar cascades (cv2.data.haarcascades is missing; opencv-python 5 "
            "dropped them); use the YuNet detector instead"
        )
    path = Path(base) / filename
    cascade = cv2.CascadeClassifier(str(path))
    if cascade.empty():
        raise DetectorModelError(f"cannot load Haar cascade {path}")
    return cascade


def build_detector(
    kind: str = "yunet",
    model_path: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    score_threshold: float = 0.6,
) -> FaceDetector:
    """Make a detector by name. YuNet uses the model file bundled with the package unless asked otherwise.

    ``model_path``, ``cache_dir`` and ``download`` only matter for YuNet: a file path, or ``"zoo"`` for the OpenCV
    Zoo's file from the per-user cache (downloaded on first use); see
    :func:`~poster_fer.faces.download.yunet_model_path`. The default never touches the network.
    """
    from ..options import check_probability

    score_threshold = check_probability("score_threshold", score_threshold)
    kind = kind.lower()
    if kind == "yunet":
        path = yunet_model_path(model_path, cache_dir, download=download)
        return YuNetDetector(path, score_threshold=score_threshold)
    if kind == "haar":
        return HaarDetector()
    raise ValueError(f"unknown detector {kind!r}; choose 'yunet' or 'haar'")
