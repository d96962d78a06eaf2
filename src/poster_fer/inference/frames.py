"""Results as a pandas DataFrame, one row per face: ``poster_fer.to_frame(rec.predict(paths))``.

Why: fer and py-feat users analyse expressions with pandas (group by image, average over frames, plot); a table
with one column per class is what they expect. pandas stays optional: it is imported only here, when called, and
its absence is one clear ImportError.

Columns, in order:

==============================  ===================================================================================
``image``                       position of the image in the input (nested lists, ImagePredictions); absent for a
                                flat list of faces, which are one image's
``source``                      ImagePredictions only: their ``key`` (the path as given, a video frame index, ...)
``face``                        face index within its image (best detection first)
``x``, ``y``, ``w``, ``h``      the box in the input's pixels
``score``                       detector confidence (NaN for ``detect=False``)
``label``, ``confidence``       predicted class and its probability
one column per class            its probability, named by the class (``prefix`` + name), in the model's order
==============================  ===================================================================================

Images without a face, and ImagePredictions that failed, give no rows.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

from .recognizer import FaceResult, ImagePrediction

__all__ = ["to_frame"]

FaceResults = FaceResult | ImagePrediction | Iterable[FaceResult] | Iterable[Iterable[FaceResult]] | \
    Iterable[ImagePrediction]


def to_frame(results: FaceResults, classes: Sequence[str] | None = None, prefix: str = "") -> Any:
    """One ``pandas.DataFrame`` row per face (columns: see :mod:`poster_fer.inference.frames`).

    ``results`` is what :meth:`Recognizer.predict` returns (a list of :class:`FaceResult` for one image, a list
    of such lists for several), what :meth:`Recognizer.iter_predict` yields (:class:`ImagePrediction` objects,
    any iterable of them), or a single FaceResult / ImagePrediction. ``classes`` fixes the probability columns
    (``rec.classes``: an empty result still gets them); by default they come from the faces, in the model's
    order. Class columns carry the class names as they are (``df["happiness"]``, as fer and py-feat name them);
    ``prefix="p_"`` gives the CSV records' names, and is needed when a class is called like a fixed column.
    """
    try:
        import pandas as pd
    except ImportError as err:
        raise ImportError("poster_fer.to_frame needs pandas, which is not installed: pip install pandas") from err

    nested, with_source, groups = _groups(results)
    fixed = (["image"] if nested else []) + (["source"] if with_source else []) + \
        ["face", "x", "y", "w", "h", "score", "label", "confidence"]
    names = list(classes) if classes is not None else _class_order(f for _, _, faces in groups for f in faces)
    columns = [f"{prefix}{c}" for c in names]
    clash = sorted(set(columns) & set(fixed))
    if clash or len(set(columns)) != len(columns):
        what = f"class column(s) {clash} collide with fixed columns" if clash else "class columns repeat"
        raise ValueError(f"to_frame: {what}; pass prefix='p_' to name them p_<class>")
    rows: list[dict[str, Any]] = []
    for image, source, faces in groups:
        for i, face in enumerate(faces):
            x, y, w, h = (float(v) for v in face.box)
            row: dict[str, Any] = {"image": image, "source": source, "face": i, "x": x, "y": y, "w": w, "h": h,
                                   "score": float("nan") if face.score is None else float(face.score),
                                   "label": face.label, "confidence": float(face.confidence)}
            probs = face.probabilities
            row.update((col, float(probs[c]) if c in probs else float("nan")) for c, col in zip(names, columns,
                                                                                                 strict=True))
            rows.append(row)
    frame = pd.DataFrame(rows, columns=fixed + columns)
    if not rows:  # an empty frame still gets the column types a filled one has
        frame = frame.astype({c: "float64" for c in ["x", "y", "w", "h", "score", "confidence", *columns]})
        frame = frame.astype({c: "int64" for c in ("image", "face") if c in fixed})
    return frame


def _groups(results: Any) -> tuple[bool, bool, list[tuple[int | None, Any, list[FaceResult]]]]:
    """``(nested, with_source, [(image index, source, faces), ...])`` for any accepted input shape."""
    if isinstance(results, (FaceResult, ImagePrediction)):
        results = [results]
    if isinstance(results, (str, bytes, os.PathLike)) or not isinstance(results, Iterable):
        raise TypeError(f"to_frame takes FaceResult objects, lists of them or ImagePrediction objects, not "
                        f"{type(results).__name__}")
    items = list(results)
    if all(isinstance(r, FaceResult) for r in items):
        return False, False, [(None, None, items)]
    if all(isinstance(r, ImagePrediction) for r in items):
        return True, True, [(k, _source(p.key), list(p.faces)) for k, p in enumerate(items)]
    groups: list[tuple[int | None, Any, list[FaceResult]]] = []
    for k, faces in enumerate(items):
        if isinstance(faces, (str, bytes)) or not isinstance(faces, Iterable):
            raise TypeError(f"to_frame: item {k} is a {type(faces).__name__}; expected a FaceResult, a list of "
                            f"them (one per image) or an ImagePrediction, not a mix")
        faces = list(faces)
        bad = next((f for f in faces if not isinstance(f, FaceResult)), None)
        if bad is not None:
            raise TypeError(f"to_frame: image {k} holds a {type(bad).__name__}, not a FaceResult")
        groups.append((k, None, faces))
    return True, False, groups


def _source(key: Any) -> Any:
    """The key as a table cell: paths as strings, a job's Source by its name, anything else as it is."""
    if isinstance(key, os.PathLike):
        return os.fspath(key)
    name = getattr(key, "name", None)
    return name if isinstance(name, str) and not isinstance(key, str) else key


def _class_order(faces: Iterable[FaceResult]) -> list[str]:
    """Class names in the order the faces list them (the model's), the union when faces differ."""
    seen: dict[str, None] = {}
    for face in faces:
        seen.update(dict.fromkeys(face.probabilities))
    return list(seen)
