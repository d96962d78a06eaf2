"""The page's in-browser mode, server side: ``/web/*`` serves poster_fer.js, the pinned onnxruntime-web files, the
served model's ONNX file, the detector and the model's description (poster_fer.web.web_card with this server's
detection settings), so the page can label photos on the visitor's machine (docs/serving.md, "In-browser mode")."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from poster_fer.inference import Recognizer

from .errors import ApiError
from .middleware import api_key_check
from .settings import ServeSettings

__all__ = ["WEB_PREFIX", "BrowserAssets", "add_browser_routes", "browser_assets"]

log = logging.getLogger(__name__)


WEB_PREFIX = "/web"
_MEDIA_TYPES = {".mjs": "text/javascript; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".wasm": "application/wasm", ".onnx": "application/octet-stream"}


@dataclass(frozen=True)
class BrowserAssets:
    """What the page's in-browser mode needs from this server: the model's ONNX file, the detector's, the model's
    description for poster_fer.js, and the runtime files; ``reason`` says why the mode is unavailable (None: it is
    available)."""

    model: Path | None = None
    detector: Path | None = None
    card: dict[str, Any] | None = None
    runtime: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None


def _served_onnx(recognizer: Recognizer) -> Path | None:
    """The ONNX file of the served model: the ONNX backend's own file, else the ``model.onnx`` a shipped model
    carries beside its weights (the same network, checked against the index). None: there is none (an official
    ``.pth``, or your own checkpoint opened with PyTorch)."""
    from poster_fer.constants import ONNX_FILE

    path = getattr(recognizer.backend, "path", None)
    if path is not None and Path(path).suffix == ".onnx" and Path(path).is_file():
        return Path(path)
    card = recognizer.card
    if card.shipped:
        try:
            candidate = card.path() / ONNX_FILE
        except Exception:  # a broken install: the server runs, the browser mode says it is unavailable
            return None
        return candidate if candidate.is_file() else None
    return None


def browser_assets(recognizer: Recognizer, settings: ServeSettings) -> BrowserAssets:
    """Whether the page can run this server's model in the browser, and with which files and settings: the same
    ONNX file, the same YuNet file, the same calibration and detector settings as ``/v1/predict`` uses."""
    from poster_fer.web import WebExportError, runtime_files, runtime_record, web_card

    try:
        runtime = runtime_files(verify=False)  # listed, not hashed: the server starts without reading 15 MB
    except WebExportError as err:
        return BrowserAssets(reason=str(err))
    model = _served_onnx(recognizer)
    if model is None:
        return BrowserAssets(runtime=runtime, reason="the served model has no ONNX file (the browser runs ONNX "
                             "only: serve a shipped model, or your own with its model.onnx)")
    detector = recognizer.detector
    det_path = getattr(detector, "model_path", None)
    if getattr(detector, "name", None) != "yunet" or det_path is None:
        return BrowserAssets(runtime=runtime, reason="the browser runs the YuNet detector only, and this server "
                             f"uses {getattr(detector, 'name', None) or 'no detector'}")
    try:
        card = web_card(recognizer.card, recognizer.card.operating_point)
    except WebExportError as err:
        return BrowserAssets(runtime=runtime, reason=str(err))
    record = runtime_record()
    card["detector"].update(_detector_settings(recognizer, settings))
    card["files"] = {"model": f"{WEB_PREFIX}/model.onnx", "detector": f"{WEB_PREFIX}/detector.onnx"}
    card["runtime"] = {"package": record["package"], "version": record["version"], "folder": f"{WEB_PREFIX}/ort/",
                       "entry": "ort.wasm.min.mjs"}
    card["bytes"] = {"model": model.stat().st_size, "detector": Path(det_path).stat().st_size,
                     "runtime": sum(int(e["bytes"]) for e in record["files"].values())}
    return BrowserAssets(model=model, detector=Path(det_path), card=card, runtime=runtime)


def _detector_settings(recognizer: Recognizer, settings: ServeSettings) -> dict[str, Any]:
    """The detection settings of this server, as poster_fer.js takes them (0: no limit)."""
    from poster_fer.web.export import DETECTOR_SETTINGS

    limits = [n for n in (settings.max_faces, recognizer.max_faces) if n]
    return {
        # YuNetDetector keeps its threshold inside OpenCV's object; a detector that states it is read, else the
        # Recognizer's default (which `poster-fer serve --threshold` changes; see docs/serving.md)
        "score_threshold": float(getattr(recognizer.detector, "score_threshold", DETECTOR_SETTINGS["score_threshold"])),
        "detect_size": int(recognizer.detect_size or 0), "pad_small": bool(recognizer.pad_small),
        "whole_image_fallback": bool(recognizer.whole_image_fallback), "max_faces": min(limits) if limits else 0,
    }


def _asset_response(request: Request, resource: Any, name: str) -> Response:
    """One of the in-browser mode's files, revalidated on each visit: 304 when the browser's copy is current (its
    ETag), so the 17 MB are downloaded once, yet a replaced model or runtime is never served stale."""
    headers = {"Cache-Control": "no-cache"}
    media = _MEDIA_TYPES.get(Path(name).suffix, "application/octet-stream")
    if not isinstance(resource, Path):  # a package that is not plain files on disk
        return Response(resource.read_bytes(), media_type=media, headers=headers)
    stat = resource.stat()
    headers["ETag"] = f'"{stat.st_size:x}-{stat.st_mtime_ns:x}"'
    if headers["ETag"] in (tag.strip() for tag in request.headers.get("if-none-match", "").split(",")):
        return Response(status_code=304, headers=headers)
    return FileResponse(resource, media_type=media, headers=headers)


def add_browser_routes(app: FastAPI, recognizer: Recognizer, settings: ServeSettings) -> None:
    """``/web/*``: poster_fer.js and the runtime (public, like the page), and the model's ONNX file and
    description (behind the API key when one is set: they are the model the key guards; the page sends its key)."""
    assets = browser_assets(recognizer, settings)
    script = resources.files("poster_fer.web").joinpath("static/poster_fer.js")
    keyed = [Depends(api_key_check(settings))] if settings.api_key else []
    if assets.reason:
        log.info("the page's in-browser mode is unavailable: %s", assets.reason)

    def available() -> BrowserAssets:
        if assets.reason:
            raise ApiError(404, "browser_unavailable", f"in-browser mode is unavailable: {assets.reason}")
        return assets

    @app.get(f"{WEB_PREFIX}/poster_fer.js", include_in_schema=False)
    async def pipeline_script(request: Request) -> Response:
        return _asset_response(request, script, "poster_fer.js")

    @app.get(f"{WEB_PREFIX}/ort/{{name}}", include_in_schema=False)
    async def runtime_file(request: Request, name: str) -> Response:
        if name not in assets.runtime:
            raise ApiError(404, "not_found", f"no runtime file {name!r}")
        return _asset_response(request, assets.runtime[name], name)

    @app.get(f"{WEB_PREFIX}/detector.onnx", include_in_schema=False)
    async def detector_file(request: Request) -> Response:
        return _asset_response(request, available().detector, "detector.onnx")

    @app.get(f"{WEB_PREFIX}/model.onnx", include_in_schema=False, dependencies=keyed)
    async def model_file(request: Request) -> Response:
        return _asset_response(request, available().model, "model.onnx")

    @app.get(f"{WEB_PREFIX}/model.json", include_in_schema=False, dependencies=keyed)
    async def model_card() -> JSONResponse:
        return JSONResponse(available().card, headers={"Cache-Control": "no-cache"})
