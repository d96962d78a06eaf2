"""Write the in-browser folder: page, pipeline, runtime, model, detector and the model's description.

Why a folder of static files: a static host (or ``python -m http.server``) can serve it with no Python behind it,
so photos never leave the visitor's machine, and the page keeps working offline. Everything it loads is in the
folder; the runtime files are checked against the sha256 recorded when they were pinned, so a damaged or
swapped file is refused at export rather than shipped.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..card import ModelCard
from ..checksums import sha256_of
from ..errors import InferenceError
from ..probabilities import DEFAULT_POINT, operating_points
from ..weights.preprocessing import Preprocessing

__all__ = ["DETECTOR_FILE", "MODEL_FILE", "RUNTIME_DIR", "STATIC_DIR", "WebExportError", "export_web",
           "runtime_files", "runtime_record", "web_card"]

HERE = Path(__file__).resolve().parent
#: The page and its pipeline, copied as they are.
STATIC_DIR = HERE / "static"
#: The pinned onnxruntime-web files (scripts/fetch_onnxruntime_web.py fetches and checks them).
RUNTIME_DIR = HERE / "runtime"
MODEL_FILE = "model.onnx"
DETECTOR_FILE = "face_detection_yunet.onnx"
CARD_FILE = "model.json"
#: Resize filters poster_fer.js reproduces (Pillow's convolution filters; "nearest" takes another Pillow path).
WEB_FILTERS = ("box", "bilinear", "hamming", "bicubic", "lanczos")
#: The detector settings the Recognizer uses by default, which the page repeats (see poster_fer.js).
DETECTOR_SETTINGS = {"score_threshold": 0.6, "nms_threshold": 0.3, "top_k": 5000, "detect_size": 1280,
                     "min_detect_size": 320, "whole_image_fallback": True}


class WebExportError(ValueError):
    """The folder cannot be written as asked (weights the browser cannot run, runtime files missing or damaged)."""


def runtime_record() -> dict[str, Any]:
    """The pin of the onnxruntime-web files: version, tarball and each file's sha256 (runtime/runtime.json)."""
    return json.loads((RUNTIME_DIR / "runtime.json").read_text())


def runtime_files(verify: bool = True) -> dict[str, Path]:
    """The pinned onnxruntime-web files by name; a clear WebExportError when one is missing or, with ``verify``,
    differs from its sha256 in runtime.json. The server lists them without hashing (15 MB at every start-up);
    an export checks every byte it copies."""
    files = {}
    for name, entry in runtime_record()["files"].items():
        path = RUNTIME_DIR / name
        if not path.is_file():
            raise WebExportError(f"{path} is missing: this installation lacks the onnxruntime-web files; in a source "
                                 "checkout run `python scripts/fetch_onnxruntime_web.py`")
        if verify and sha256_of(path) != entry["sha256"]:
            raise WebExportError(f"{path}: sha256 differs from runtime.json (a damaged or replaced file); run "
                                 "`python scripts/fetch_onnxruntime_web.py` or reinstall poster-fer")
        files[name] = path
    return files


def _open_weights(weights: str | os.PathLike[str] | None, operating_point: str | None) -> tuple[Path, ModelCard]:
    """The ONNX file of ``weights`` and the card it carries (its own calibration, before any operating point is
    chosen), checked the way the ONNX backend checks it (the graph runs at the input size it names, the
    operating point exists)."""
    from ..hub import resolve_weights
    from ..inference.backends import OnnxBackend, onnx_file

    try:
        path = onnx_file(resolve_weights(weights))
        backend = OnnxBackend(path, operating_point=operating_point)
    except InferenceError as err:
        raise WebExportError(f"cannot export these weights for the browser: {err}") from None
    return path, backend.session.card


def web_card(card: ModelCard | Mapping[str, Any], operating_point: str | None = None) -> dict[str, Any]:
    """The model's description as the page reads it: classes, the preprocessing with its crop geometry spelled
    out, the calibration and every operating point, which one the page starts with, and the detector settings.
    ``card``: the model's card (a meta.json record is read into one)."""
    if not isinstance(card, ModelCard):
        card = ModelCard.from_meta(card)
    prep = Preprocessing.from_dict(card.preprocessing).to_dict()
    if prep["resize_interpolation"] not in WEB_FILTERS:
        raise WebExportError(f"resize_interpolation {prep['resize_interpolation']!r} is not reproduced in the browser "
                             f"(supported: {', '.join(WEB_FILTERS)})")
    try:
        points = operating_points(card)
    except ValueError as err:
        raise WebExportError(f"the model's calibration is malformed: {err}") from None
    point = operating_point or DEFAULT_POINT
    if point not in points:
        raise WebExportError(f"no operating point {point!r} in this model's calibration; it has: {', '.join(points)}")
    return {
        "format": "poster-fer-web/1", "name": card.display_name, "model": card.architecture,
        "description": card.description, "licence": card.licence,
        "classes": [str(c) for c in card.classes], "preprocessing": prep,
        "temperature": card.temperature, "logit_bias": card.logit_bias,
        "operating_points": {k: v for k, v in points.items() if k != DEFAULT_POINT},
        "operating_point": point, "detector": {"file": DETECTOR_FILE, **DETECTOR_SETTINGS},
        "files": {"model": MODEL_FILE, "detector": DETECTOR_FILE},
    }


def export_web(directory: str | os.PathLike[str], weights: str | os.PathLike[str] | None = None,
               operating_point: str | None = None) -> Path:
    """Write the in-browser folder for ``weights`` (None: the default model; a shipped name; a saved-model folder
    holding ``model.onnx``; or a ``.onnx`` file) into ``directory``, created when missing; returns its path.

    ``operating_point`` is the calibration the page starts with (the visitor can switch to the others).
    Files of an earlier export in the folder are replaced; other files are left alone.
    """
    from ..faces.download import yunet_model_path

    out = Path(directory).expanduser()
    if out.exists() and not out.is_dir():
        raise WebExportError(f"{out} exists and is not a folder")
    model_path, model_card = _open_weights(weights, operating_point)
    card = web_card(model_card, operating_point)
    record = runtime_record()
    runtime = runtime_files()
    card["runtime"] = {"package": record["package"], "version": record["version"], "folder": "ort"}
    out.mkdir(parents=True, exist_ok=True)
    (out / "ort").mkdir(exist_ok=True)
    for path in (*runtime.values(), RUNTIME_DIR / "LICENSE", RUNTIME_DIR / "runtime.json"):
        shutil.copyfile(path, out / "ort" / path.name)
    for path in sorted(STATIC_DIR.iterdir()):
        if path.is_file():
            shutil.copyfile(path, out / path.name)
    shutil.copyfile(model_path, out / MODEL_FILE)
    detector = yunet_model_path(None)
    shutil.copyfile(detector, out / DETECTOR_FILE)
    licence = detector.parent / "LICENSE-YuNet-MIT.txt"
    if licence.is_file():
        shutil.copyfile(licence, out / licence.name)
    (out / CARD_FILE).write_text(json.dumps(card, indent=1) + "\n")
    return out
