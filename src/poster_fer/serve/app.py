"""The ASGI app: ``create_app(recognizer, settings)`` -> FastAPI with the API, the page, docs and metrics.

Request path of ``POST /v1/predict``: an upload place (429 when this client already sends
``max_uploads_per_client`` bodies, 503 past ``max_uploads`` in all) -> the body, read into memory with a
running size check and a deadline -> admission (503 when ``max_queue`` requests are already in: only complete
uploads queue, so stalled senders cannot starve the others) -> decode + detect + align on a worker thread
(never on the event loop) -> the crops join the micro-batch queue (:mod:`poster_fer.serve.batching`) -> one
forward pass for every request in the batch -> JSON. Every refusal is an
:class:`~poster_fer.serve.errors.ApiError` rendered as ``{"error": {"kind", "message"}}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import hashlib
import hmac
import logging
import math
import queue
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..faces import Face, FaceDetector
from ..inference import Recognizer
from ..jsonable import to_jsonable
from .batching import MicroBatcher
from .errors import ApiError
from .metrics import Metrics
from .settings import ServeSettings
from .uploads import FILE_FIELD, SUPPORTED_FORMATS, decode_image, options_from, parse_body, read_body

__all__ = ["create_app"]

log = logging.getLogger(__name__)

_ROUTES = ("/", "/healthz", "/metrics", "/v1/predict", "/v1/model", "/docs", "/openapi.json")
# The two ways to send the API key (declared so /docs offers an "Authorize" button).
_BEARER = HTTPBearer(auto_error=False, description="the server's API key as a bearer token")
_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="the server's API key")
_PAGE_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
             "img-src 'self' blob: data:; media-src 'self' blob: mediastream:; connect-src 'self'; "
             "frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


# -- response schemas (for the OpenAPI page; responses are built as plain dicts) ---------------------------


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


_ERRORS: dict[int | str, dict[str, Any]] = {
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

def _predict_openapi(settings: ServeSettings) -> dict[str, Any]:
    """The parts of /v1/predict's OpenAPI entry that FastAPI cannot infer (the handler reads the raw request)."""
    doc = copy.deepcopy(_PREDICT_OPENAPI)
    doc["parameters"][0]["schema"]["maximum"] = settings.max_faces
    return doc


_PREDICT_OPENAPI: dict[str, Any] = {
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


# -- the service ------------------------------------------------------------------------------------------


@dataclass
class _Prepared:
    width: int
    height: int
    format: str
    faces: list[Face | None]
    crops: list[np.ndarray]
    decode_s: float
    detect_s: float


class _Service:
    """The state behind one app: recognizer views (one detector each), worker threads, batcher, metrics."""

    def __init__(self, recognizer: Recognizer, settings: ServeSettings, detectors: Sequence[FaceDetector]) -> None:
        self.rec = recognizer
        self.settings = settings
        # the weights' name with its tag (poster_v1_mfn64_image.ferplus), else the architecture's
        self.model_name = str(recognizer.meta.get("weights") or recognizer.meta.get("model") or "model")
        self.metrics = Metrics(self.model_name, str(recognizer.device))
        # Detectors wrap OpenCV objects that are not thread-safe: each worker borrows one recognizer view,
        # which shares the model and preprocessing but owns its detector.
        self._views: queue.Queue[Recognizer] = queue.Queue()
        self._views.put(recognizer)
        for det in detectors:
            view = copy.copy(recognizer)
            view.detector = det
            self._views.put(view)
        self.batcher = MicroBatcher(recognizer.classify, max_batch=settings.max_batch,
                                    max_wait_s=settings.max_wait_ms / 1000.0, on_batch=self.metrics.batch)
        self.executor: ThreadPoolExecutor | None = None
        self.inflight = 0
        self.uploads = 0  # bodies being received, and by client address
        self.uploads_by_client: dict[str, int] = {}
        self._latency_ema: float | None = None

    def start(self) -> None:
        if self.executor is None:
            self.executor = ThreadPoolExecutor(self.settings.workers, thread_name_prefix="poster-fer-detect")
        self.batcher.start()

    def stop(self) -> None:
        self.batcher.stop()
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
            self.executor = None

    def retry_after(self) -> int:
        """Seconds a refused client should wait: about one request's time, 1 to 30."""
        ema = self._latency_ema or 1.0
        return int(min(30, max(1, math.ceil(ema))))

    def upload_refusal(self, client: str) -> ApiError | None:
        """Why ``client`` may not start another upload now (None: it may)."""
        s = self.settings
        if self.uploads_by_client.get(client, 0) >= s.max_uploads_per_client:
            return ApiError(429, "too_many_uploads", f"this client is already sending {s.max_uploads_per_client} "
                            "uploads; wait for them to finish", headers={"Retry-After": str(self.retry_after())})
        if self.uploads >= s.max_uploads:
            return ApiError(503, "busy", f"the server is receiving {self.uploads} uploads; retry shortly",
                            headers={"Retry-After": str(self.retry_after())})
        return None

    @contextlib.contextmanager
    def upload_place(self, client: str) -> Iterator[None]:
        """Hold one of the upload places while a body arrives (call :meth:`upload_refusal` first)."""
        self.uploads += 1
        self.uploads_by_client[client] = self.uploads_by_client.get(client, 0) + 1
        try:
            yield
        finally:
            self.uploads -= 1
            left = self.uploads_by_client[client] - 1
            if left:
                self.uploads_by_client[client] = left
            else:
                del self.uploads_by_client[client]

    def note_latency(self, seconds: float) -> None:
        self._latency_ema = seconds if self._latency_ema is None else 0.9 * self._latency_ema + 0.1 * seconds

    def prepare(self, data: bytes, max_faces: int, detect: bool) -> _Prepared:
        """Decode, detect and align one upload (runs on a worker thread)."""
        t0 = time.perf_counter()
        img = decode_image(data, self.settings.max_pixels)
        t1 = time.perf_counter()
        rgb = img.rgb
        h, w = rgb.shape[:2]
        try:
            view = self._views.get()
            try:
                faces, crops, _ = view.faces_and_crops(rgb, detect, max_faces)
            finally:
                self._views.put(view)
        except ApiError:
            raise
        except Exception as err:  # a detector or warp failing on a strange but decodable image
            log.warning("face pipeline failed on a %dx%d %s image: %s", w, h, img.format, err)
            raise ApiError(422, "unprocessable_image", f"the image decoded but faces could not be processed "
                           f"({type(err).__name__}: {str(err)[:200]})") from None
        fmt, large = img.format, rgb.nbytes > _TRIM_BYTES
        del img, rgb
        if large:
            _return_memory()
        return _Prepared(w, h, fmt, faces, crops, t1 - t0, time.perf_counter() - t1)

    def result(self, face: Face | None, probs: np.ndarray, width: int, height: int) -> dict[str, Any]:
        """One face as the documented wire keys ("scores"; see FaceResult.to_record), built by the recognizer."""
        return self.rec.result(face, probs, (width, height)).to_record()

    @functools.cached_property
    def model_record(self) -> dict[str, Any]:
        """What ``GET /v1/model`` answers (built once: the model does not change while serving)."""
        meta = self.rec.meta
        s = self.settings
        record = {
            "name": self.model_name,
            "classes": list(self.rec.classes),
            "num_classes": len(self.rec.classes),
            "preprocessing": self.rec.preprocessing.to_dict(),
            "temperature": meta.get("temperature"),
            "logit_bias": meta.get("logit_bias"),
            "operating_point": meta.get("operating_point", "default"),
            "metrics": meta.get("metrics"),
            "weights": meta.get("weights"),
            "licence": meta.get("licence"),
            "provenance": _public_provenance(meta.get("provenance")),
            "device": str(self.rec.device),
            "backend": type(self.rec.backend).__name__,
            "detector": getattr(self.rec.detector, "name", None),
            "formats": sorted(SUPPORTED_FORMATS.values()),
            "limits": {"max_body_bytes": s.max_body_bytes, "max_pixels": s.max_pixels, "max_faces": s.max_faces,
                       "max_batch": s.max_batch, "max_wait_ms": s.max_wait_ms, "max_queue": s.max_queue,
                       "workers": s.workers},
            "version": __version__,
        }
        return to_jsonable(record)


#: What ``/v1/model`` tells any client about how the weights were made: never the training machine's paths,
#: platform or command line (which can name folders and users).
_PUBLIC_PROVENANCE = ("recipe", "git_revision", "epochs_run", "model_card", "storage")


def _public_provenance(prov: Any) -> dict[str, Any] | None:
    if not isinstance(prov, dict):
        return None
    return {k: prov[k] for k in _PUBLIC_PROVENANCE if k in prov and not _looks_like_path(prov[k])}


def _looks_like_path(value: Any) -> bool:
    return isinstance(value, str) and (value.startswith(("/", "~", "\\")) or value[1:3] in (":\\", ":/"))


#: How long an over-cap client waits for its 429 (see the predict handler).
_REFUSAL_DELAY_S = 1.0

#: After an image this large (decoded bytes) the freed memory is handed back to the system (see below).
_TRIM_BYTES = 32 * 2**20


def _return_memory() -> None:
    """Ask glibc to give freed heap memory back to the system. Without it, one 49-megapixel upload left the
    server's resident memory hundreds of megabytes higher for good (worker-thread arenas keep what they held).
    A no-op where the C library is not glibc."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            import ctypes

            _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM: Any = None


class _Observe:
    """ASGI middleware: counts every response by route and status, and sets protective headers."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        route = path if path in _ROUTES else ("/docs-static" if path.startswith("/docs-static/") else "other")
        status = 500

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                for key, value in ((b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")):
                    if key not in names:
                        headers.append((key, value))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            self.metrics.request(route, scope.get("method", ""), status)


def _error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _auth(settings: ServeSettings):
    """The ``/v1`` dependency checking the API key (constant-time, on digests so length leaks nothing)."""
    expected = hashlib.sha256(str(settings.api_key).encode("utf-8")).digest()

    async def check(token: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)] = None,
                    key: Annotated[str | None, Security(_KEY_HEADER)] = None) -> None:
        given = key if key is not None else (token.credentials if token is not None else None)
        if given is None:
            raise ApiError(401, "unauthorized", "this server needs an API key: send 'Authorization: Bearer KEY' "
                           "or 'X-API-Key: KEY'", headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(hashlib.sha256(given.encode("utf-8")).digest(), expected):
            raise ApiError(401, "unauthorized", "wrong API key", headers={"WWW-Authenticate": "Bearer"})

    return check


def _new_fastapi(lifespan: Any) -> FastAPI:
    kwargs = {"title": "poster-fer", "version": __version__, "lifespan": lifespan,
              "description": "Facial expression recognition with POSTER: POST an image to /v1/predict and get every "
                             "face's box, landmarks, label and per-class probabilities. The page at / does it from a "
                             "browser (photo or webcam)."}
    try:  # Swagger UI from files in the package, so /docs works offline as the page does
        from fastapi_offline import FastAPIOffline
    except ImportError:
        log.info("fastapi-offline is not installed: /docs loads Swagger UI from its CDN")
        return FastAPI(docs_url="/docs", redoc_url=None, **kwargs)
    return FastAPIOffline(docs_url="/docs", redoc_url=None, static_url="/docs-static", **kwargs)


def create_app(recognizer: Recognizer, settings: ServeSettings | None = None,
               detectors: Sequence[FaceDetector] = ()) -> FastAPI:
    """Build the service around a :class:`~poster_fer.inference.Recognizer`.

    ``detectors``: extra face detectors, one per additional worker thread (OpenCV detectors are not
    thread-safe); without them workers still decode in parallel but take turns at the recognizer's detector.
    The batcher thread and workers start with the app's lifespan (or on the first request).
    """
    settings = settings or ServeSettings()
    service = _Service(recognizer, settings, detectors)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        service.start()
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, service.stop)

    app = _new_fastapi(lifespan)
    app.state.service = service
    _install_error_handlers(app, service.metrics)
    _install_middleware(app, settings, service.metrics)
    _add_public_routes(app, service, settings)
    app.include_router(_v1_router(service, settings, recognizer))
    return app


def _install_error_handlers(app: FastAPI, metrics: Any) -> None:
    """Every error as the API's one JSON shape (kind, message), counted by kind in /metrics."""
    @app.exception_handler(ApiError)
    async def api_error(_request: Request, err: ApiError) -> JSONResponse:
        metrics.error(err.kind)
        return _error_response(err)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, err: StarletteHTTPException) -> JSONResponse:
        kinds = {404: "not_found", 405: "method_not_allowed"}
        api = ApiError(err.status_code, kinds.get(err.status_code, "http_error"), str(err.detail),
                       headers=dict(err.headers or {}))
        metrics.error(api.kind)
        return _error_response(api)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, err: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in err.errors())
        api = ApiError(422, "bad_request", problems or "invalid request")
        metrics.error(api.kind)
        return _error_response(api)

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, err: Exception) -> JSONResponse:
        log.exception("unhandled error")
        metrics.error("internal")
        return _error_response(ApiError(500, "internal", f"internal error ({type(err).__name__})"))


def _install_middleware(app: FastAPI, settings: ServeSettings, metrics: Any) -> None:
    """CORS when origins are allowed, and the request observer (latency, status, slow-client guard)."""
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type"], max_age=600)
    app.add_middleware(_Observe, metrics=metrics)


def _add_public_routes(app: FastAPI, service: _Service, settings: ServeSettings) -> None:
    """The page, liveness and Prometheus metrics: no key needed."""
    page = resources.files("poster_fer.serve").joinpath("static/index.html").read_text(encoding="utf-8")
    metrics = service.metrics

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": _PAGE_CSP, "Cache-Control": "no-cache"})

    # GET in the API description, HEAD beside it unlisted: one route for both methods gave both the same
    # OpenAPI operation id, which FastAPI warns about when /docs is opened.
    @app.head("/healthz", include_in_schema=False)
    @app.get("/healthz", summary="Liveness: 200 while the model thread runs")
    async def healthz() -> JSONResponse:
        alive = service.batcher.running or service.executor is None  # not started yet is not unhealthy
        body = {"status": "ok" if alive else "unavailable", "model": service.model_name,
                "inflight": service.inflight}
        return JSONResponse(body, status_code=200 if alive else 503, headers={"Cache-Control": "no-store"})

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def metrics_text() -> Response:
        return PlainTextResponse(metrics.render(service.inflight, settings.max_queue),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")


def _v1_router(service: _Service, settings: ServeSettings, recognizer: Recognizer) -> APIRouter:
    """The versioned API (behind the key when one is set): the model's description and prediction."""
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(_auth(settings))] if settings.api_key else [])

    @v1.get("/model", summary="The served model: name, classes, preprocessing, model-card metrics, limits",
            responses={401: _ERRORS[401]})
    async def model() -> JSONResponse:
        return JSONResponse(service.model_record)

    @v1.post("/predict", summary="Detect every face in an image and classify its expression",
             responses={200: {"model": PredictOut, "description": "the faces, best detection first"}, **_ERRORS},
             openapi_extra=_predict_openapi(settings))
    async def predict(request: Request) -> JSONResponse:
        return await _predict(request, service, settings, recognizer)

    return v1


async def _predict(request: Request, service: _Service, settings: ServeSettings,
                   recognizer: Recognizer) -> JSONResponse:
    """POST /v1/predict: check the options, read the upload within its limits, detect and align in a worker,
    classify in the shared micro-batch, and answer with every face."""
    metrics = service.metrics
    t0 = time.perf_counter()
    can_detect = recognizer.detector is not None
    query = request.query_params.multi_items()
    options_from(query, (), settings.max_faces, can_detect)  # refuse bad options before reading the body
    client = request.client.host if request.client else "unknown"
    refusal = service.upload_refusal(client)
    if refusal is not None:
        if refusal.status == 429:
            # answered slowly: a client over its cap that reconnects at once would otherwise spin the server
            # answering 429s; a second's wait costs an idle coroutine and caps that loop at 1/s per connection
            await asyncio.sleep(_REFUSAL_DELAY_S)
        raise refusal
    with service.upload_place(client):
        try:
            body = await read_body(request.stream(), request.headers.get("content-length"),
                                   settings.max_body_bytes, settings.body_timeout_s)
        except ClientDisconnect:
            raise ApiError(400, "client_disconnected", "the client closed the connection mid-body") from None
    upload = parse_body(body, request.headers.get("content-type"))
    del body
    max_faces, detect = options_from(query, upload.fields.items(), settings.max_faces, can_detect)
    if service.inflight >= settings.max_queue:
        raise ApiError(503, "queue_full", f"the server is busy ({service.inflight} requests in progress); retry "
                       "shortly", headers={"Retry-After": str(service.retry_after())})
    service.inflight += 1
    announced = False
    try:
        service.start()  # no-op once running (the lifespan starts it; embedding without lifespan still works)
        service.batcher.expect()
        announced = True
        loop = asyncio.get_running_loop()
        prepared = await loop.run_in_executor(service.executor, service.prepare, upload.data, max_faces, detect)
        batch_info = None
        probs = np.zeros((0, len(recognizer.classes)), np.float32)
        queue_s = forward_s = 0.0
        if prepared.crops:
            future = service.batcher.submit(prepared.crops)
            announced = False
            try:
                res = await asyncio.wrap_future(future)
            except Exception as err:
                raise ApiError(500, "inference_failed", f"the model failed ({type(err).__name__}: "
                               f"{str(err)[:200]})") from None
            probs, queue_s, forward_s = res.probabilities, res.queued_s, res.forward_s
            batch_info = {"faces": res.batch_faces, "requests": res.batch_requests}
        else:
            service.batcher.cancel()
            announced = False
    finally:
        if announced:
            service.batcher.cancel()
        service.inflight -= 1
    faces = [service.result(f, p, prepared.width, prepared.height)
             for f, p in zip(prepared.faces, probs, strict=True)] if prepared.crops else []
    total = time.perf_counter() - t0
    service.note_latency(total)
    metrics.prediction(total, len(faces))
    body_out = {
        "model": service.model_name,
        "image": {"width": prepared.width, "height": prepared.height, "format": prepared.format},
        "detect": detect,
        "faces": faces,
        "timings_ms": {k: round(v * 1000, 2) for k, v in (
            ("decode", prepared.decode_s), ("detect", prepared.detect_s), ("queue", queue_s),
            ("forward", forward_s), ("total", total))},
        "batch": batch_info,
    }
    return JSONResponse(body_out, headers={"Cache-Control": "no-store"})
