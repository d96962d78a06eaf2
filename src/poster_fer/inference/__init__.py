"""From photos and videos to expression labels: detect, align to the training crop, classify in batches.

Typical use::

    from poster_fer.inference import Recognizer

    rec = Recognizer.from_checkpoint("runs/ferplus/best", detector="yunet")
    for face in rec.predict("photo.jpg"):
        print(face.box, face.label, face.confidence)

Many inputs at once (folders, videos, webcams, with annotated copies): :func:`run_job`. The command line
front end is ``poster-fer predict``; see docs/inference.md.
"""

from ..weights.preprocessing import DEFAULT_GEOMETRY, Preprocessing
from .annotate import class_colour, draw_predictions
from .backends import InferenceError, OnnxBackend, TorchBackend, load_backend, resolve_device
from .job import JobOptions, JobStats, run_job
from .quick import default_recognizer, predict
from .recognizer import DEFAULT_DETECT_SIZE, FaceResult, ImagePrediction, Recognizer
from .records import (
    RECORD_KEYS,
    RecordWriter,
    VideoPosition,
    csv_columns,
    error_record,
    face_record,
    no_face_record,
)
from .sources import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, Source, VideoError, VideoReader, collect_sources
from .tracking import IoUTracker, Track, box_iou

__all__ = [
    "DEFAULT_DETECT_SIZE",
    "DEFAULT_GEOMETRY",
    "IMAGE_EXTENSIONS",
    "RECORD_KEYS",
    "VIDEO_EXTENSIONS",
    "FaceResult",
    "ImagePrediction",
    "InferenceError",
    "IoUTracker",
    "JobOptions",
    "JobStats",
    "OnnxBackend",
    "Preprocessing",
    "Recognizer",
    "RecordWriter",
    "Source",
    "TorchBackend",
    "Track",
    "VideoError",
    "VideoPosition",
    "VideoReader",
    "box_iou",
    "class_colour",
    "collect_sources",
    "csv_columns",
    "default_recognizer",
    "draw_predictions",
    "error_record",
    "face_record",
    "load_backend",
    "no_face_record",
    "predict",
    "resolve_device",
    "run_job",
]
