"""Detection at a size the detector is good at, with the faces mapped back to the image's own pixels.

Why here and not in the Recognizer: resizing for detection and mapping boxes and landmarks back is face
geometry, shared by every caller of a detector (the Recognizer, the Ray engine's detection stage, the page's
twin in JavaScript), and its pixel-centre convention must be the one :mod:`poster_fer.faces.align` assumes.
"""

from __future__ import annotations

import cv2
import numpy as np

from .detect import Face, FaceDetector

__all__ = ["DEFAULT_DETECT_SIZE", "MIN_DETECT_SIZE", "PAD_FRACTION", "detect_scaled", "rescale_face", "shift_face"]

#: Longest image side the detector runs at. YuNet finds faces from about 10 px up to about 450 px boxes and its
#: cost grows with the pixel count; a 12-megapixel photo at full size takes seconds and can miss a face that
#: fills the frame, so larger images are detected on a downscaled copy (alignment still uses full resolution).
DEFAULT_DETECT_SIZE = 1280
#: Images smaller than this (longest side) are upscaled for detection: a face filling a 64-px thumbnail is
#: below the sizes YuNet's anchors are tuned for.
MIN_DETECT_SIZE = 320
#: Small inputs (longer side under MIN_DETECT_SIZE) are padded by this fraction of their longer side on every
#: side before detection when ``pad_small`` is on: a face that fills its image gets the margin YuNet expects.
PAD_FRACTION = 0.25


def detect_scaled(detector: FaceDetector, rgb: np.ndarray, detect_size: int | None = DEFAULT_DETECT_SIZE,
                  pad_small: bool = False) -> list[Face]:
    """``detector``'s faces in ``rgb``, detected on a copy whose longest side is at most ``detect_size`` (None or
    0: full size) and at least :data:`MIN_DETECT_SIZE`, in ``rgb``'s own coordinates. ``pad_small``: a small
    image gets an edge-replicated margin first (:data:`PAD_FRACTION`)."""
    h, w = rgb.shape[:2]
    side = max(h, w)
    pad = round(PAD_FRACTION * side) if pad_small and side < MIN_DETECT_SIZE else 0
    if pad:  # edge-replicated margin, so a face that fills the image is not cut by its border
        rgb = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        h, w = rgb.shape[:2]
        side = max(h, w)
    scale = 1.0
    if detect_size and side > detect_size:
        scale = detect_size / side
    elif side < MIN_DETECT_SIZE:
        scale = MIN_DETECT_SIZE / side
    if scale != 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        faces = [rescale_face(f, size[0] / w, size[1] / h) for f in detector.detect(small)]
    else:
        faces = detector.detect(rgb)
    return [shift_face(f, -pad) for f in faces] if pad else faces


def shift_face(face: Face, d: float) -> Face:
    """Move a face by ``d`` pixels on both axes (from a padded copy back to the unpadded image)."""
    x, y, w, h = face.box
    return Face(box=(x + d, y + d, w, h), landmarks=np.asarray(face.landmarks) + d, score=face.score,
                landmarks_estimated=face.landmarks_estimated)


def rescale_face(face: Face, sx: float, sy: float) -> Face:
    """Map a face found on a resized copy back to the original pixels (cv2.resize's pixel-centre convention)."""
    x, y, w, h = face.box
    lm = (np.asarray(face.landmarks) + 0.5) / (sx, sy) - 0.5
    return Face(box=((x + 0.5) / sx - 0.5, (y + 0.5) / sy - 0.5, w / sx, h / sy), landmarks=lm, score=face.score,
                landmarks_estimated=face.landmarks_estimated)
