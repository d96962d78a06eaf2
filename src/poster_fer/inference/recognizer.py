"""The photo-to-label path: load, detect, align to the checkpoint's crop geometry, classify in batches.

Typical use::

    rec = Recognizer.from_checkpoint("runs/rafdb/best", detector="yunet")
    for face in rec.predict("group.jpg"):
        print(face.box, face.label, face.probabilities[face.label])
"""

from __future__ import annotations

import logging
import os
import reprlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from PIL import Image

from ..card import card_of
from ..faces import (
    DEFAULT_MAX_PIXELS,
    Face,
    FaceDetector,
    build_detector,
    drop_invalid_faces,
    load_image,
    to_rgb_array,
)
from ..faces.io import check_channels
from ..faces.scale import DEFAULT_DETECT_SIZE, MIN_DETECT_SIZE, PAD_FRACTION, detect_scaled
from ..hub import resolve_weights
from ..options import check_count, check_detect_size, check_limit, check_probability
from ..probabilities import softmax
from ..weights.preprocessing import Preprocessing
from .backends import Backend, BackendOptions, InferenceError, TorchBackend, load_backend

__all__ = ["DEFAULT_DETECT_SIZE", "MIN_DETECT_SIZE", "PAD_FRACTION", "FaceResult", "ImageLike", "ImagePrediction",
           "Recognizer"]

log = logging.getLogger(__name__)

ImageLike = str | os.PathLike | Image.Image | np.ndarray


#: An input is "face-sized" (a pre-cropped face, as every FER dataset and many archives hold them) when its longer
#: side is at most this many pixels and its sides differ by at most 2x; see ``whole_image_fallback``. 256 covers
#: FER2013's 48 px enlarged up to 4x and the 100-256 px crops other datasets ship; a scene that small with no face
#: found is classified whole too, and its record says so (``detection: whole_image``).
FACE_SIZED_MAX = 256


#: A face-sized image whose grey levels vary less than this (standard deviation) is blank, not a face.
MIN_FACE_CONTRAST = 6.0


def face_sized(image: np.ndarray) -> bool:
    """Whether ``image`` looks like a face crop rather than a scene: at most FACE_SIZED_MAX px, sides within 2x of
    each other, and not blank (a flat image is no face, whatever its size)."""
    h, w = image.shape[:2]
    if max(h, w) > FACE_SIZED_MAX or max(h, w) > 2 * min(h, w):
        return False
    return float(image.std()) >= MIN_FACE_CONTRAST


class WholeImage:
    """The "face" of a face-sized input where the detector found none: the whole image, as a crop."""


# Input problems that are reported per image instead of stopping a batch.
INPUT_ERRORS = (ValueError, TypeError, OSError, cv2.error)


#: Probabilities a short repr lists (the most likely first).
REPR_TOP = 3


@dataclass(eq=False, repr=False)
class FaceResult:
    """One face: where it is, what the detector thought, and the class probabilities.

    ``box`` is ``(x, y, w, h)`` and ``landmarks`` ``(5, 2)`` in the input image's pixels (YuNet order, see
    :data:`poster_fer.faces.LANDMARK_NAMES`). For inputs given as ready crops (``detect=False``) the box is the
    whole image and ``landmarks``/``score`` are None. ``crop`` is the aligned crop as the model saw it
    (before the resize to ``input_size``), kept only when asked for.

    ``label``, ``confidence`` and ``probabilities`` (``{class: p}`` in the model's class order) are the canonical
    names. For people coming from fer/deepface there are read-only conveniences over them: :attr:`top_emotion`
    (``(label, probability)``, fer's ``top_emotion``), :attr:`emotions` (the same dict as ``probabilities``,
    fer's ``"emotions"`` key) and :meth:`top` (the k most likely classes). Class names are the model's own (the
    default model's FER+ names: ``happiness``, not fer's ``happy``). The repr is one short line, rounded.
    """

    box: tuple[float, float, float, float]
    landmarks: np.ndarray | None
    score: float | None
    label: str
    probabilities: dict[str, float]
    landmarks_estimated: bool = False
    crop: np.ndarray | None = field(default=None, repr=False)
    # how the face was found: "detector", "whole_image" (a face-sized input where the detector found none, taken
    # whole), or "given" (detect=False: the input is the crop)
    detection: str = "detector"

    @property
    def confidence(self) -> float:
        """Probability of the predicted label."""
        return self.probabilities[self.label]

    @property
    def top_emotion(self) -> tuple[str, float]:
        """``(label, probability)`` of the predicted class, as fer's ``top_emotion`` returns it."""
        return self.label, float(self.confidence)

    @property
    def emotions(self) -> dict[str, float]:
        """Alias of :attr:`probabilities` (the same dict), under the name fer's results use."""
        return self.probabilities

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` most likely classes as ``(class, probability)``, most likely first."""
        ranked = sorted(self.probabilities.items(), key=lambda kv: kv[1], reverse=True)
        return [(c, float(p)) for c, p in ranked[:max(0, int(k))]]

    def to_dict(self, decimals: int = 4) -> dict[str, Any]:
        """JSON-ready dict (no crop) named like the attributes: box, landmarks, landmarks_estimated, score, label,
        confidence, probabilities.

        Why two methods: the records of ``poster-fer predict`` (JSON lines / CSV), the HTTP API and
        ``poster-fer explain`` document this dict's probabilities under the key ``scores``, and scripts parse
        them; renaming that wire key would break them without a gain. So the wire schema keeps ``scores``
        (:meth:`to_record`), while this dict, which Python code reads next to the attributes, uses the
        attribute's name ``probabilities``.
        """
        return {("probabilities" if k == "scores" else k): v for k, v in self.to_record(decimals).items()}

    def to_record(self, decimals: int = 4) -> dict[str, Any]:
        """The documented wire form (the face keys of the prediction records and of the HTTP API): as
        :meth:`to_dict`, with the probabilities under ``scores``. Kept stable; see :meth:`to_dict` for why."""
        return {
            "box": [round(float(v), 2) for v in self.box],
            "landmarks": None if self.landmarks is None else [[round(float(x), 2), round(float(y), 2)]
                                                              for x, y in self.landmarks],
            "landmarks_estimated": self.landmarks_estimated,
            "score": None if self.score is None else round(float(self.score), 4),
            "label": self.label,
            "confidence": round(float(self.confidence), decimals),
            "scores": {k: round(float(v), decimals) for k, v in self.probabilities.items()},
            "detection": self.detection,
        }

    def __repr__(self) -> str:
        """One line a person can read: box to 0.1 px, probabilities to 3 digits, the top few classes only."""
        box = ", ".join(f"{float(v):.1f}" for v in self.box)
        top = ", ".join(f"{c!r}: {p:.3f}" for c, p in self.top(REPR_TOP))
        more = ", ..." if len(self.probabilities) > REPR_TOP else ""
        return (f"FaceResult(label={self.label!r}, confidence={float(self.confidence):.3f}, box=({box}), "
                f"top={{{top}{more}}})")


@dataclass(eq=False, repr=False)
class ImagePrediction:
    """What :meth:`Recognizer.iter_predict` yields per input: its key, its faces, or the error it raised.

    ``image`` is the RGB uint8 array that was analysed (for drawing); None when the input failed to load.
    ``dropped`` counts the detections thrown out as impossible faces (non-finite, empty or off-image boxes, see
    :func:`poster_fer.faces.drop_invalid_faces`), so a detector's garbage is reported rather than classified.
    The repr is one short line (key, image size, each face's label and confidence), never the pixels.
    """

    key: Any
    faces: list[FaceResult]
    error: BaseException | None = None
    image: np.ndarray | None = field(default=None, repr=False)
    dropped: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None

    def __repr__(self) -> str:
        key = reprlib.repr(getattr(self.key, "name", self.key))  # a job's Source by its name; long keys cut
        if self.error is not None:
            return f"ImagePrediction(key={key}, error={type(self.error).__name__}({reprlib.repr(str(self.error))}))"
        size = "" if self.image is None else f", image={self.image.shape[1]}x{self.image.shape[0]}"
        shown = ", ".join(f"{f.label} {float(f.confidence):.3f}" for f in self.faces[:REPR_TOP])
        more = f", ... {len(self.faces) - REPR_TOP} more" if len(self.faces) > REPR_TOP else ""
        dropped = f", dropped={self.dropped}" if self.dropped else ""
        return f"ImagePrediction(key={key}{size}, faces={len(self.faces)} [{shown}{more}]{dropped})"


class Recognizer:
    """Detect faces, align each to the checkpoint's training crop, and classify them in batches.

    Preprocessing (crop geometry, grey or colour, input size, channel order, mean/std) is read from the
    checkpoint metadata, see :mod:`poster_fer.weights.preprocessing`. Faces from many images are gathered
    into batches of ``batch_size`` before each forward pass.

    Args:
        backend: a :class:`~poster_fer.inference.backends.Backend` (model + card), a weights name
            (``poster_v1_mfn64_image.ferplus``, see ``poster_fer.list_models(pretrained=True)``), a checkpoint
            path (opened with the torch backend, ONNX files with onnxruntime), or None for the default model
            shipped in the package (:data:`poster_fer.hub.DEFAULT_MODEL`).
        device: where a name or path given as ``backend`` runs ("cpu", "cuda", "cuda:1", "mps", "auto").
        detector: a detector object, a name ("yunet", "haar"), or None (then only ``detect=False`` works).
        batch_size: faces per forward pass.
        max_faces: keep at most this many faces per image (the detector's best first); None keeps all.
        detect_size: longest side the detector runs at (larger images are downscaled for detection only);
            None or 0 detects at full resolution.
        max_pixels: size limit for image files, see :func:`poster_fer.faces.load_image`.
        operating_point: for a name or path given as ``backend``: another calibration the weights record, e.g.
            ``"balanced"`` on the default model (fewer faces called neutral, better rare-class recall, lower
            accuracy; ``poster-fer info NAME`` lists them with their numbers). None: the record's default.
        pad_small: pad inputs under 320 px with an edge-replicated margin before detection (off: on FER+ test it
            found no more single faces and cost 0.8 points, benchmarks/results/eval/small_faces.json).
        whole_image_fallback: a face-sized input (see :func:`face_sized`) where the detector finds no face is
            classified whole, its result saying ``detection="whole_image"`` (on: FER+ test images as they ship
            give exactly one face 99.6% of the time instead of 96.9%, at 87.5% accuracy against 85.6%).
    """

    def __init__(
        self,
        backend: Backend | str | os.PathLike[str] | None = None,
        detector: FaceDetector | str | None = "yunet",
        batch_size: int = 32,
        max_faces: int | None = None,
        detect_size: int | None = DEFAULT_DETECT_SIZE,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        detector_model: str | os.PathLike[str] | None = None,
        score_threshold: float = 0.6,
        device: str = "auto",
        operating_point: str | None = None,
        pad_small: bool = False,
        whole_image_fallback: bool = True,
    ) -> None:
        # every numeric option checked before anything loads (one set of rules with the CLI and the server)
        batch_size = check_count("batch_size", batch_size)
        max_faces = check_count("max_faces", max_faces, optional=True)
        detect_size = check_detect_size(detect_size)
        max_pixels = check_limit("max_pixels", max_pixels)
        score_threshold = check_probability("score_threshold", score_threshold)
        self.backend = _open_backend(backend, device, operating_point)
        self.card = card_of(self.backend)  # classes, preprocessing and calibration, read once
        self.classes: list[str] = list(self.card.classes)
        if not self.classes:
            raise InferenceError("the checkpoint metadata names no classes")
        self.preprocessing = Preprocessing.from_dict(self.card.preprocessing)
        if self.preprocessing.geometry_assumed:
            log.info("checkpoint records no crop_geometry; using %r (the official checkpoints' RAF-DB crops)",
                     self.preprocessing.geometry.name)
        self.detector = _build_detector(detector, detector_model, score_threshold)
        self.batch_size = int(batch_size)
        self.max_faces = max_faces
        self.detect_size = detect_size
        self.max_pixels = max_pixels
        self.pad_small = bool(pad_small)
        self.whole_image_fallback = bool(whole_image_fallback)

    @property
    def meta(self) -> dict[str, Any]:
        """The model's card as the metadata dict of earlier releases (a copy); prefer :attr:`card`."""
        return self.card.to_meta()

    # -- construction --------------------------------------------------------------------------------

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str] | None = None, device: str = "auto", *,
                        backend: str = "auto", options: BackendOptions | None = None, **kwargs: Any) -> Recognizer:
        """Open a checkpoint (None: the shipped default model; a shipped model's name, see
        :func:`poster_fer.hub.list_pretrained`): a poster-fer directory / ``.safetensors``, an
        official ``.pth`` (read with ``official``, a :class:`poster_fer.hub.OfficialOptions`: its architecture,
        default ``poster_v1``, head and channel order), or an ``.onnx`` export.
        ``backend``: "auto" (PyTorch when installed, else ONNX Runtime on the folder's ``model.onnx``), "torch"
        or "onnxruntime".

        How it is opened: ``official``, ``autocast``, ``operating_point`` and ``threads``, keywords as for
        :func:`~poster_fer.inference.load_backend` (or all at once as ``options``, a
        :class:`~poster_fer.inference.backends.BackendOptions`). Other keyword arguments are the constructor's
        (``detector``, ``detector_model``: the YuNet file, default the one bundled in the package, ``"zoo"`` the
        OpenCV Zoo file in the per-user cache; ``batch_size``, ``max_faces``, ``detect_size``, ``max_pixels``,
        ``score_threshold``, ...). ``model=``, ``num_classes=``, ``classes=`` and ``channel_order=`` still work,
        with a DeprecationWarning.
        """
        opts = BackendOptions.take(options, kwargs, "Recognizer.from_checkpoint")
        path = resolve_weights(path)  # None: the default model; a shipped model's name: its folder
        return cls(load_backend(path, backend=backend, device=device, options=opts), **kwargs)

    @classmethod
    def from_model(cls, model: Any, device: str = "auto", autocast: str | None = None, **kwargs: Any) -> Recognizer:
        """Wrap an in-memory poster-fer model (its card supplies classes, preprocessing and calibration)."""
        return cls(TorchBackend(model, device=device, autocast=autocast), **kwargs)

    @property
    def device(self) -> str:
        return self.backend.device

    # -- steps ---------------------------------------------------------------------------------------------

    def load(self, x: ImageLike, channels: str = "rgb") -> np.ndarray:
        """Any accepted input -> upright RGB uint8 ``(h, w, 3)``.

        ``channels`` is the channel order of a numpy array: ``"rgb"`` (default) or ``"bgr"`` (OpenCV); it cannot
        be detected from the pixels. Paths and PIL images ignore it (see :func:`poster_fer.faces.to_rgb_array`).
        """
        if isinstance(x, (str, os.PathLike)):
            check_channels(channels)
            return load_image(x, max_pixels=self.max_pixels)
        return to_rgb_array(x, channels=channels)

    def detect(self, image: ImageLike, channels: str = "rgb") -> list[Face]:
        """Faces in ``image`` (full-resolution coordinates), best first, at most ``max_faces``.

        A numpy array is read as RGB unless ``channels="bgr"`` (OpenCV arrays). Detections that cannot be faces
        are left out (see :func:`poster_fer.faces.drop_invalid_faces`); :meth:`iter_predict` reports how many in
        :attr:`ImagePrediction.dropped`.
        """
        return self._detect(self.load(image, channels))[0]

    def _detect(self, rgb: np.ndarray) -> tuple[list[Face], int]:
        """:meth:`detect` on a loaded image, plus the number of invalid detections dropped."""
        if self.detector is None:
            raise InferenceError("this recognizer has no face detector; give one, or pass detect=False for "
                                 "inputs that are already aligned face crops")
        h, w = rgb.shape[:2]
        faces = detect_scaled(self.detector, rgb, self.detect_size, self.pad_small)
        # checked before max_faces, so garbage (YuNet gives it score 1.0) cannot take a real face's place
        faces, dropped = drop_invalid_faces(faces, (w, h))
        if dropped:
            log.debug("dropped %d invalid detection(s): %s", len(dropped), "; ".join(dropped))
        return (faces[: self.max_faces] if self.max_faces else faces), len(dropped)

    def faces_and_crops(self, rgb: np.ndarray, detect: bool = True, max_faces: int | None = None,
                        ) -> tuple[list[Face | WholeImage | None], list[np.ndarray], int]:
        """The face pipeline up to the model, for a loaded RGB image: the faces (best first, at most ``max_faces``
        as well as the recognizer's own limit) with their aligned crops, and how many invalid detections were
        dropped. ``detect=False`` takes the whole image as one crop (face None). The one implementation that
        :meth:`iter_predict` and the web service both call."""
        if not detect:
            return [None], [self.preprocessing.prepare_crop(rgb)], 0
        found, dropped = self._detect(rgb)
        if not found and self.whole_image_fallback and face_sized(rgb):
            return [WholeImage()], [self.preprocessing.prepare_crop(rgb)], dropped
        if max_faces:
            found = found[:max_faces]
        return list(found), [self.preprocessing.align(rgb, f.landmarks) for f in found], dropped

    def result(self, face: Face | WholeImage | None, probs: np.ndarray, size: tuple[int, int],
               crop: np.ndarray | None = None) -> FaceResult:
        """One face's result from its class probabilities; ``size`` ``(width, height)`` of the image is the box
        of a face given as a whole crop (``face`` None). ``crop`` is kept on the result when given."""
        k = int(np.argmax(probs))
        probabilities = {c: float(v) for c, v in zip(self.classes, probs, strict=True)}
        if face is None or isinstance(face, WholeImage):
            return FaceResult(box=(0.0, 0.0, float(size[0]), float(size[1])), landmarks=None, score=None,
                              label=self.classes[k], probabilities=probabilities, crop=crop,
                              detection="given" if face is None else "whole_image")
        return FaceResult(box=face.box, landmarks=face.landmarks, score=face.score, label=self.classes[k],
                          probabilities=probabilities, landmarks_estimated=face.landmarks_estimated, crop=crop)

    def classify(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Class probabilities ``(N, C)`` for prepared crops (aligned, colour-handled, uint8 RGB)."""
        out = np.zeros((len(crops), len(self.classes)), np.float32)
        for start in range(0, len(crops), self.batch_size):
            chunk = crops[start:start + self.batch_size]
            logits = np.asarray(self.backend(self.preprocessing.batch(chunk)), dtype=np.float64)
            if logits.shape != (len(chunk), len(self.classes)):
                raise InferenceError(f"model returned logits of shape {logits.shape}, expected "
                                     f"({len(chunk)}, {len(self.classes)})")
            out[start:start + len(chunk)] = softmax(logits)
        return out

    # -- prediction ----------------------------------------------------------------------------------------

    def predict(
        self, x: ImageLike | Sequence[ImageLike], detect: bool = True, return_crops: bool = False,
        channels: str = "rgb",
    ) -> list[FaceResult] | list[list[FaceResult]]:
        """Faces and labels for one image, or for each image of a list (or of a 4-D ``(N, h, w, c)`` array).

        One input gives ``list[FaceResult]``; a list gives one such list per image. An image with no face gives
        an empty list. ``detect=False`` takes each input as an already-aligned face crop. Numpy arrays are read
        as RGB(A) by default; pass ``channels="bgr"`` for OpenCV arrays (``cv2.imread``, video frames), since
        the order cannot be told from the pixels. Paths and PIL images ignore ``channels``. Input errors raise
        (:class:`~poster_fer.faces.ImageLoadError` for files); use :meth:`iter_predict` to collect them instead.
        """
        check_channels(channels)  # a bad value is the caller's mistake, not one image's: raise it once, here
        batch = isinstance(x, (list, tuple)) or (isinstance(x, np.ndarray) and x.ndim == 4)
        items = list(x) if batch else [x]  # type: ignore[arg-type]
        out: list[list[FaceResult]] = []
        for pred in self.iter_predict(enumerate(items), detect=detect, return_crops=return_crops, channels=channels):
            if pred.error is not None:
                raise pred.error
            out.append(pred.faces)
        return out if batch else out[0]

    def predict_crops(self, crops: Sequence[ImageLike], return_crops: bool = False,
                      channels: str = "rgb") -> list[FaceResult]:
        """One result per already-aligned face crop (the detector is skipped); arrays are RGB unless
        ``channels="bgr"``."""
        return [faces[0] for faces in self.predict(list(crops), detect=False, return_crops=return_crops,
                                                   channels=channels)]

    def iter_predict(
        self, items: Iterable[tuple[Any, ImageLike | BaseException]], detect: bool = True,
        return_crops: bool = False, channels: str = "rgb",
    ) -> Iterator[ImagePrediction]:
        """Stream ``(key, image)`` pairs through the pipeline, batching faces across images; yields in order.

        Images are loaded and detected one by one; once ``batch_size`` faces are waiting they are classified
        together and the finished images are yielded. An input that fails (unreadable file, bad array) is
        yielded with ``error`` set and the stream goes on; a caller may also pass an exception in place of an
        image to have it reported in sequence. Numpy arrays are read as RGB(A) unless ``channels="bgr"``
        (OpenCV arrays); a bad ``channels`` value raises ValueError on the first ``next()``.
        """
        channels = check_channels(channels)
        pending: list[tuple[ImagePrediction, list[Face | WholeImage | None], list[np.ndarray]]] = []
        waiting = 0
        for key, x in items:
            if isinstance(x, BaseException):
                pending.append((ImagePrediction(key, [], error=x), [], []))
                continue
            try:
                rgb = self.load(x, channels)
                faces, crops, dropped = self.faces_and_crops(rgb, detect)
            except INPUT_ERRORS as err:
                pending.append((ImagePrediction(key, [], error=err), [], []))
                continue
            pending.append((ImagePrediction(key, [], image=rgb, dropped=dropped), faces, crops))
            waiting += len(crops)
            if waiting >= self.batch_size:
                yield from self._flush(pending, return_crops)
                pending, waiting = [], 0
        yield from self._flush(pending, return_crops)

    def _flush(self, pending: list[tuple[ImagePrediction, list[Face | WholeImage | None], list[np.ndarray]]],
               return_crops: bool) -> Iterator[ImagePrediction]:
        all_crops = [c for _, _, crops in pending for c in crops]
        probs = self.classify(all_crops) if all_crops else np.zeros((0, len(self.classes)), np.float32)
        i = 0
        for pred, faces, crops in pending:
            rows = probs[i:i + len(crops)]
            i += len(crops)
            bad = np.flatnonzero(~np.isfinite(rows).all(axis=1))
            if bad.size:  # a broken model (or weights) must not pass as a label: the input fails, named
                pred.error = InferenceError(f"the model's output is not a number (NaN or infinite) for face "
                                            f"{', '.join(map(str, bad))} of {len(crops)}; check the weights")
                yield pred
                continue
            for face, crop, p in zip(faces, crops, rows, strict=True):
                h, w = (pred.image if pred.image is not None else crop).shape[:2]
                pred.faces.append(self.result(face, p, (w, h), crop if return_crops else None))
            yield pred

    def __repr__(self) -> str:
        det = getattr(self.detector, "name", None)
        name = self.card.display_name  # keep the weights' tag (.ferplus)
        return (f"Recognizer(model={name!r}, classes={len(self.classes)}, device={self.device!r}, "
                f"detector={det!r}, geometry={self.preprocessing.geometry.name!r}, batch_size={self.batch_size})")


def _open_backend(backend: Backend | str | os.PathLike[str] | None, device: str,
                  operating_point: str | None) -> Backend:
    """The Recognizer's ``backend`` argument as a backend: a weights name or path opened (None: the default
    model), a backend object taken as it is (an operating point is then the backend's to choose)."""
    if backend is None or isinstance(backend, (str, os.PathLike)):
        return load_backend(resolve_weights(backend), device=device, operating_point=operating_point)
    if operating_point is not None:
        raise InferenceError("operating_point applies when the Recognizer opens the weights (a path or name); "
                             "pass it to load_backend / the backend you built instead")
    return backend


def _build_detector(detector: FaceDetector | str | None, model: str | os.PathLike[str] | None,
                    score_threshold: float) -> FaceDetector | None:
    """The Recognizer's ``detector`` argument as a detector (a name built, with a word about Haar's limits)."""
    if not isinstance(detector, str):
        return detector
    if detector.lower() == "haar":
        log.warning("using the Haar-cascade face detector: it misses turned and small faces and its "
                    "landmarks are estimated, so crops are coarser than with YuNet")
    return build_detector(detector, model_path=model, score_threshold=score_threshold)
