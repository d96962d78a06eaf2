"""The ASGI app: ``create_app(recognizer, settings)`` -> FastAPI with the API, the page, docs and metrics.

Request path of ``POST /v1/predict``: an upload place (429 when this client already sends
``max_uploads_per_client`` bodies, 503 past ``max_uploads`` in all) -> the body, read into memory with a
running size check and a deadline -> admission (503 when ``max_queue`` requests are already in: only complete
uploads queue, so stalled senders cannot starve the others) -> decode + detect + align on a worker thread
(never on the event loop) -> the crops join the micro-batch queue (:mod:`poster_fer_apps.serve.batching`) -> one
forward pass for every request in the batch -> JSON. Every refusal is an
:class:`~poster_fer_apps.serve.errors.ApiError` rendered as ``{"error": {"kind", "message"}}``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.requests import ClientDisconnect

from poster_fer import __version__
from poster_fer.faces import FaceDetector
from poster_fer.inference import Recognizer

from .browser import add_browser_routes
from .errors import ApiError
from .middleware import api_key_check, install_error_handlers, install_middleware
from .schemas import ERRORS, PredictOut, predict_openapi
from .service import Prepared, Service
from .settings import ServeSettings
from .uploads import Upload, options_from, parse_body, read_body

__all__ = ["create_app"]

log = logging.getLogger(__name__)

# 'wasm-unsafe-eval': compiling WebAssembly (the in-browser mode's ONNX Runtime); worker-src: its threads are
# workers started from its own script on this origin. Still nothing from another origin.
_PAGE_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline' 'wasm-unsafe-eval'; "
             "style-src 'self' 'unsafe-inline'; img-src 'self' blob: data:; media-src 'self' blob: mediastream:; "
             "connect-src 'self'; worker-src 'self' blob:; frame-ancestors 'none'; base-uri 'none'; "
             "form-action 'none'")

#: How long an over-cap client waits for its 429 (see the predict handler).
_REFUSAL_DELAY_S = 1.0


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
    service = Service(recognizer, settings, detectors)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        service.start()
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, service.stop)

    app = _new_fastapi(lifespan)
    app.state.service = service
    install_error_handlers(app, service.metrics)
    install_middleware(app, settings, service.metrics)
    _add_public_routes(app, service, settings)
    add_browser_routes(app, recognizer, settings)
    app.include_router(_v1_router(service, settings, recognizer))
    return app


def _add_public_routes(app: FastAPI, service: Service, settings: ServeSettings) -> None:
    """The page, liveness and Prometheus metrics: no key needed."""
    page = resources.files("poster_fer_apps.serve").joinpath("static/index.html").read_text(encoding="utf-8")
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


#: The in-browser mode's files: where the page fetches them, and their media types.
def _v1_router(service: Service, settings: ServeSettings, recognizer: Recognizer) -> APIRouter:
    """The versioned API (behind the key when one is set): the model's description and prediction."""
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(api_key_check(settings))] if settings.api_key else [])

    @v1.get("/model", summary="The served model: name, classes, preprocessing, model-card metrics, limits",
            responses={401: ERRORS[401]})
    async def model() -> JSONResponse:
        return JSONResponse(service.model_record)

    @v1.post("/predict", summary="Detect every face in an image and classify its expression",
             responses={200: {"model": PredictOut, "description": "the faces, best detection first"}, **ERRORS},
             openapi_extra=predict_openapi(settings))
    async def predict(request: Request) -> JSONResponse:
        return await _predict(request, service, settings, recognizer)

    return v1


async def _predict(request: Request, service: Service, settings: ServeSettings,
                   recognizer: Recognizer) -> JSONResponse:
    """POST /v1/predict: check the options, read the upload within its limits, detect and align in a worker,
    classify in the shared micro-batch, and answer with every face."""
    t0 = time.perf_counter()
    can_detect = recognizer.detector is not None
    query = request.query_params.multi_items()
    options_from(query, (), settings.max_faces, can_detect)  # refuse bad options before reading the body
    upload = await _receive(request, service, settings)
    max_faces, detect = options_from(query, upload.fields.items(), settings.max_faces, can_detect)
    if service.inflight >= settings.max_queue:
        raise ApiError(503, "queue_full", f"the server is busy ({service.inflight} requests in progress); retry "
                       "shortly", headers={"Retry-After": str(service.retry_after())})
    service.inflight += 1
    try:
        prepared, probs, queue_s, forward_s, batch_info = await _detect_and_classify(
            service, upload.data, max_faces, detect, len(recognizer.classes))
    finally:
        service.inflight -= 1
    faces = [service.result(f, p, prepared.width, prepared.height)
             for f, p in zip(prepared.faces, probs, strict=True)] if prepared.crops else []
    total = time.perf_counter() - t0
    service.note_latency(total)
    service.metrics.prediction(total, len(faces))
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


async def _receive(request: Request, service: Service, settings: ServeSettings) -> Upload:
    """The upload, read under this client's upload place (refused first when it has no place left)."""
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
    return parse_body(body, request.headers.get("content-type"))


async def _detect_and_classify(service: Service, data: bytes, max_faces: int, detect: bool,
                               num_classes: int) -> tuple[Prepared, np.ndarray, float, float, dict[str, int] | None]:
    """Decode, detect and align on a worker thread, then join the micro-batch: (prepared upload, probabilities,
    queued seconds, forward seconds, the batch it joined). The batcher expects the request from the start, so
    a batch being formed waits for its crops; every exit path settles that expectation."""
    announced = False
    try:
        service.start()  # no-op once running (the lifespan starts it; embedding without lifespan still works)
        service.batcher.expect()
        announced = True
        loop = asyncio.get_running_loop()
        prepared = await loop.run_in_executor(service.executor, service.prepare, data, max_faces, detect)
        if not prepared.crops:
            return prepared, np.zeros((0, num_classes), np.float32), 0.0, 0.0, None
        future = service.batcher.submit(prepared.crops)
        announced = False
        try:
            res = await asyncio.wrap_future(future)
        except Exception as err:
            raise ApiError(500, "inference_failed", f"the model failed ({type(err).__name__}: "
                           f"{str(err)[:200]})") from None
        batch = {"faces": res.batch_faces, "requests": res.batch_requests}
        return prepared, res.probabilities, res.queued_s, res.forward_s, batch
    finally:
        if announced:
            service.batcher.cancel()
