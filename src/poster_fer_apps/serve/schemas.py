"""The API's response schemas and the parts of its OpenAPI description FastAPI cannot infer (for the /docs page;
responses are built as plain dicts)."""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel, Field

from .settings import ServeSettings
from .uploads import FILE_FIELD, SUPPORTED_FORMATS

__all__ = ["ERRORS", "ErrorBody", "ErrorOut", "FaceOut", "ImageOut", "PredictOut", "predict_openapi"]



class FaceOut(BaseModel):
    box: list[float] = Field(description="x, y, width, height in the image's pixels (upright, EXIF applied)")
    landmarks: list[list[float]] | None = Field(description="5 points: right eye, left eye, nose tip, right and "
                                                "left mouth corner (the subject's right first); null for crops")
    landmarks_estimated: bool
    score: float | None = Field(description="detector confidence; null with detect=false")
    label: str
    confidence: float = Field(description="probability of the label")
    scores: dict[str, float] = Field(description="calibrated probability per class, in the model's class order")
    detection: str = Field("detector", description="how the face was found: 'detector'; 'whole_image' (a "
                           "face-sized image where no face was detected, classified whole); 'given' (detect=false)")


class ImageOut(BaseModel):
    width: int
    height: int
    format: str


class PredictOut(BaseModel):
    model: str | None
    image: ImageOut
    detect: bool
    faces: list[FaceOut]
    timings_ms: dict[str, float] = Field(description="decode, detect (with alignment), queue, forward, total")
    batch: dict[str, int] | None = Field(description="faces and requests in the forward pass this request joined")


class ErrorBody(BaseModel):
    kind: str
    message: str


class ErrorOut(BaseModel):
    error: ErrorBody


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "empty body, not an image, corrupt image, bad form field"},
    401: {"model": ErrorOut, "description": "missing or wrong API key"},
    408: {"model": ErrorOut, "description": "the body arrived too slowly"},
    413: {"model": ErrorOut, "description": "body over the size limit, image over the pixel or decoded-bytes limit"},
    415: {"model": ErrorOut, "description": "not a JPEG, PNG, WebP or BMP image"},
    422: {"model": ErrorOut, "description": "unknown or out-of-range option"},
    429: {"model": ErrorOut, "description": "this client address already has its limit of uploads in progress; "
                                            "retry after the Retry-After seconds"},
    503: {"model": ErrorOut, "description": "the queue is full, or the server is receiving its limit of uploads; "
                                            "retry after the Retry-After seconds"},
}

def predict_openapi(settings: ServeSettings) -> dict[str, Any]:
    """The parts of /v1/predict's OpenAPI entry that FastAPI cannot infer (the handler reads the raw request)."""
    doc = copy.deepcopy(PREDICT_OPENAPI)
    doc["parameters"][0]["schema"]["maximum"] = settings.max_faces
    return doc


PREDICT_OPENAPI: dict[str, Any] = {
    "parameters": [
        {"name": "max_faces", "in": "query", "required": False,
         "schema": {"type": "integer", "minimum": 1},
         "description": "at most this many faces, the detector's most confident first (default: the server's "
                        "max_faces limit)"},
        {"name": "detect", "in": "query", "required": False, "schema": {"type": "boolean", "default": True},
         "description": "false: the upload is already a face crop; classify the whole image"},
    ],
    "requestBody": {
        "required": True,
        "description": "The image: a multipart form with the field 'file' (options may also be form fields), or "
                       "the raw bytes with the image's Content-Type. The format is recognised from the bytes.",
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "required": [FILE_FIELD], "properties": {
                FILE_FIELD: {"type": "string", "format": "binary"}}}},
            **{media: {"schema": {"type": "string", "format": "binary"}} for media in SUPPORTED_FORMATS.values()},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
}
