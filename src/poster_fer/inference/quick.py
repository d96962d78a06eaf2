"""One-line recognition with the shipped default model: ``poster_fer.predict("photo.jpg")``.

Why a module of its own: the one-liner keeps one :class:`Recognizer` per process (loading the model and the
detector costs far more than labelling a photo), and that cache belongs neither to the Recognizer class nor
to the command line.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from ..faces.io import check_channels
from .recognizer import FaceResult, ImageLike, Recognizer

_lock = threading.Lock()
_default: Recognizer | None = None


def default_recognizer() -> Recognizer:
    """The process-wide Recognizer over the default model and the bundled YuNet (built on first use)."""
    global _default
    with _lock:
        if _default is None:
            _default = Recognizer()
        return _default


def predict(images: ImageLike | Sequence[ImageLike], *, channels: str = "rgb",
            **kwargs: Any) -> list[FaceResult] | list[list[FaceResult]]:
    """Label every face in a photo (path, PIL image or numpy array) or a list of them with the default model.

    Numpy arrays are read as RGB(A) unless ``channels="bgr"``: pass that for OpenCV arrays (``cv2.imread``,
    ``VideoCapture`` frames), whose order cannot be detected from the pixels. Paths and PIL images ignore it.
    Other keyword arguments go to :meth:`Recognizer.predict` (``detect=False`` for an image that is already a
    face crop, ``return_crops=True``). For other checkpoints, devices or detectors build a :class:`Recognizer`.
    """
    check_channels(channels)  # before the first call builds the model
    return default_recognizer().predict(images, channels=channels, **kwargs)
