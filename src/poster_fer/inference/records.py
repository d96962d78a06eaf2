"""Prediction records (one per face, or per input/frame without a face) and their JSON-lines / JSON / CSV writers.

Every record has the same keys whatever happened, so downstream tools can rely on the schema:

======================  =====================================================================================
``source``              the input as given (file path, or ``webcam:N``)
``frame``, ``time``     frame index and seconds into the video; null for images
``face``                face index within the image/frame (best detection first); null without a face
``track``               stable id of the face across frames (videos); null for images
``status``              ``"ok"``, ``"no_face"`` (read fine, nothing found) or ``"error"``
``error``               why the input failed (``status == "error"``); ``"no face found"`` for ``"no_face"``, plus
                        how many invalid detections were dropped when there were any; else null
``box``                 ``[x, y, w, h]`` in the input's pixels
``landmarks``           5 x ``[x, y]``: right eye, left eye, nose tip, right and left mouth corner (subject's
                        right first), null for ``--no-detect``
``landmarks_estimated`` true when the detector (Haar) only guessed the landmarks from the box
``score``               detector confidence (null for ``--no-detect``)
``label``, ``confidence``  predicted class and its probability
``scores``              ``{class: probability}`` (smoothed over the track for videos)
``raw_scores``          videos: the frame's own unsmoothed probabilities; null for images
``crop``                path of the saved aligned crop (``--save-crops``), else null
``detection``           how the face was found: ``"detector"``; ``"whole_image"`` (a face-sized input where the
                        detector found no face, classified whole); ``"given"`` (``--no-detect``); null without a face
======================  =====================================================================================

CSV has the same information flattened: ``x, y, w, h``, ``<landmark>_x/_y`` and one ``p_<class>`` column per
class; ``raw_scores`` is left out. JSON (``"json"``) is one array of the same objects as JSON lines, one per line
between ``[`` and ``]``: an array rather than an object so that ``json.load`` and ``pandas.read_json`` give the
records as they are, and the same records as the ``.jsonl`` form.

A file's format follows its extension (:data:`EXTENSION_FORMATS`, :func:`format_for_path`): ``poster-fer predict
--output`` refuses an extension it does not know, and a ``--format`` that contradicts the extension, rather than
write JSON lines into ``results.csv``.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from ..faces import LANDMARK_NAMES
from ..naming import warn_deprecated
from .recognizer import FaceResult

__all__ = ["EXTENSION_FORMATS", "FORMATS", "RECORD_KEYS", "RecordWriter", "VideoPosition", "csv_columns",
           "error_record", "face_record", "format_for_path", "no_face_record"]

RECORD_KEYS = ("source", "frame", "time", "face", "track", "status", "error", "box", "landmarks",
               "landmarks_estimated", "score", "label", "confidence", "scores", "raw_scores", "crop", "detection")
LANDMARK_COLUMNS = tuple(f"{n}_{axis}" for n in LANDMARK_NAMES for axis in ("x", "y"))
FORMATS = ("jsonl", "json", "csv")
#: File extension (lower case) -> record format.
EXTENSION_FORMATS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv"}


def format_for_path(path: str | os.PathLike[str]) -> str | None:
    """The record format a file name asks for by its extension (``results.CSV`` -> ``"csv"``), None when unknown."""
    return EXTENSION_FORMATS.get(Path(path).suffix.lower())


def _base(source: str, frame: int | None, time: float | None, status: str, error: str | None) -> dict[str, Any]:
    rec: dict[str, Any] = dict.fromkeys(RECORD_KEYS)
    rec.update(source=source, frame=frame, time=None if time is None else round(time, 3), status=status,
               error=error)
    return rec


@dataclass(frozen=True)
class VideoPosition:
    """Where a face record sits in a video: frame index, seconds and track id (all None for an image).

    Why a type: the three travel together from the tracker to the record, and as one value they keep
    :func:`face_record` to a call a reader can follow."""

    frame: int | None = None
    time: float | None = None
    track: int | None = None


_POSITION_KEYWORDS = ("frame", "time", "track")


def _position(at: VideoPosition | int | None, legacy: dict[str, Any]) -> VideoPosition:
    """``at`` as a :class:`VideoPosition`, accepting (with a DeprecationWarning) the separate ``frame``, ``time``
    and ``track`` arguments of the form before it, or a frame index where the position goes."""
    unknown = sorted(set(legacy) - set(_POSITION_KEYWORDS))
    if unknown:
        raise TypeError(f"face_record() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}")
    if isinstance(at, VideoPosition) and not legacy:
        return at
    if at is None and not legacy:
        return VideoPosition()
    if isinstance(at, VideoPosition):
        raise TypeError("face_record(): give the position either as at=VideoPosition(...) or as frame/time/track")
    warn_deprecated("face_record(..., frame=, time=, track=) is deprecated: pass "
                    "at=VideoPosition(frame=..., time=..., track=...)")
    values = {"frame": at, **legacy} if at is not None else legacy
    return VideoPosition(**values)


def face_record(source: str, face_index: int, result: FaceResult, at: VideoPosition | None = None, *,
                scores: Mapping[str, float] | None = None, crop: str | None = None, **legacy: Any) -> dict[str, Any]:
    """Record for one face, at position ``at`` in a video (None: an image); ``scores`` (smoothed probabilities)
    replaces the face's own when given. ``frame=``, ``time=`` and ``track=`` still work, with a
    DeprecationWarning."""
    where = _position(at, legacy)
    rec = _base(source, where.frame, where.time, "ok", None)
    d = result.to_record()  # the wire form: probabilities under "scores"
    if scores is not None:
        raw = d["scores"]
        label = max(scores, key=scores.__getitem__)
        d.update(label=label, confidence=round(float(scores[label]), 4),
                 scores={k: round(float(v), 4) for k, v in scores.items()}, raw_scores=raw)
    rec.update(d)
    rec.update(face=face_index, track=where.track, crop=crop)
    return rec


def no_face_record(source: str, frame: int | None = None, time: float | None = None,
                   dropped: int = 0) -> dict[str, Any]:
    """Record for an input (or frame) that was read fine but where no face was found.

    ``dropped`` invalid detections (see :func:`poster_fer.faces.drop_invalid_faces`) are named in ``error``, so
    "the detector returned only garbage" reads differently from "the detector found nothing".
    """
    reason = "no face found"
    if dropped:
        reason += f" ({dropped} invalid detection{'s' if dropped != 1 else ''} dropped)"
    return _base(source, frame, time, "no_face", reason)


def error_record(source: str, error: str, frame: int | None = None, time: float | None = None) -> dict[str, Any]:
    """Record for an input that could not be processed."""
    return _base(source, frame, time, "error", error)


def csv_columns(classes: Sequence[str]) -> list[str]:
    """CSV header for a model with these classes."""
    return ["source", "frame", "time", "face", "track", "status", "error", "x", "y", "w", "h",
            *LANDMARK_COLUMNS, "landmarks_estimated", "score", "label", "confidence",
            *(f"p_{c}" for c in classes), "crop", "detection"]


def _dumps(record: Mapping[str, Any]) -> str:
    """Strict JSON: a NaN or infinity raises here rather than reach a file that JSON parsers reject."""
    return json.dumps(record, ensure_ascii=False, allow_nan=False)


class RecordWriter:
    """Write records as JSON lines, one JSON array or CSV to a text stream.

    Each record is flushed as it is written (``flush=True``) so pipes and ``tail -f`` see it at once. Call
    :meth:`close` (or use the writer as a context manager) when done: for ``"json"`` it writes the closing
    ``]``; the stream itself stays open (it is the caller's). After an interruption, closing still leaves a
    valid JSON array of the records written so far.
    """

    def __init__(self, stream: TextIO, fmt: str, classes: Sequence[str], flush: bool = True,
                 header: bool = True) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(map(repr, FORMATS))}, not {fmt!r}")
        self.stream, self.fmt, self.classes, self.flush = stream, fmt, list(classes), flush
        self.count = 0
        self.closed = False
        self._csv: csv.DictWriter | None = None
        if fmt == "csv":
            self._csv = csv.DictWriter(stream, fieldnames=csv_columns(self.classes), lineterminator="\n")
            if header:  # False: appending to a CSV that has one (a resumed run)
                self._csv.writeheader()
        elif fmt == "json":
            stream.write("[")

    def write(self, record: Mapping[str, Any]) -> None:
        if self.closed:
            raise ValueError("write to a closed RecordWriter")
        if self._csv is not None:
            self._csv.writerow(self._flatten(record))
        elif self.fmt == "json":
            self.stream.write(("\n" if self.count == 0 else ",\n") + _dumps(record))
        else:
            self.stream.write(_dumps(record) + "\n")
        if self.flush:
            self.stream.flush()
        self.count += 1

    def end_input(self, source: str, segment: int | None) -> None:
        """Every record of ``source`` is written (a resumable writer commits it here; this one has nothing to do)."""

    def close(self) -> None:
        """Finish the output (the JSON array's ``]``) and flush; the stream is left open. Idempotent."""
        if self.closed:
            return
        self.closed = True
        if self.fmt == "json":
            self.stream.write("\n]\n")
        self.stream.flush()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _flatten(self, rec: Mapping[str, Any]) -> dict[str, Any]:
        row = {k: rec.get(k) for k in ("source", "frame", "time", "face", "track", "status", "error",
                                       "landmarks_estimated", "score", "label", "confidence", "crop",
                                       "detection")}
        box = rec.get("box") or [None] * 4
        row.update(zip(("x", "y", "w", "h"), box, strict=True))
        pts = rec.get("landmarks") or [[None, None]] * len(LANDMARK_NAMES)
        row.update(zip(LANDMARK_COLUMNS, (v for pt in pts for v in pt), strict=True))
        scores = rec.get("scores") or {}
        row.update({f"p_{c}": scores.get(c) for c in self.classes})
        return {k: ("" if v is None else v) for k, v in row.items()}
