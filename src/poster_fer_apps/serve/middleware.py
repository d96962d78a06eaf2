"""What wraps every request: the observer middleware (counts, protective headers), the one JSON error shape for
every failure, CORS, and the API-key check."""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Annotated, Any

from fastapi import FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ApiError
from .metrics import Metrics
from .settings import ServeSettings

__all__ = ["ASSET_CSP", "ISOLATION_HEADERS", "ROUTES", "Observe", "api_key_check", "error_response",
           "install_error_handlers", "install_middleware", "route_name"]

log = logging.getLogger(__name__)

#: The routes the metrics count by name (anything else is "other"; the runtime files count as "/web/ort").
ROUTES = ("/", "/healthz", "/metrics", "/v1/predict", "/v1/model", "/docs", "/openapi.json", "/web/poster_fer.js",
          "/web/model.json", "/web/model.onnx", "/web/detector.onnx")
#: Counted under one name each: every file below these folders.
_ROUTE_FOLDERS = ("/docs-static", "/web/ort")
#: The page and the in-browser mode's files are sent cross-origin isolated (COOP + COEP), so the browser lets
#: ONNX Runtime Web use threads (SharedArrayBuffer); CORP says they are for this origin only.
ISOLATION_HEADERS = ((b"cross-origin-opener-policy", b"same-origin"),
                     (b"cross-origin-embedder-policy", b"require-corp"),
                     (b"cross-origin-resource-policy", b"same-origin"))
#: The in-browser mode's own files (scripts, and the workers ONNX Runtime Web starts from them) may load code and
#: data from this origin only, and compile WebAssembly; the page at / has its own policy (app.py).
ASSET_CSP = (b"content-security-policy",
             b"default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; connect-src 'self'; worker-src 'self' blob:")
# The two ways to send the API key (declared so /docs offers an "Authorize" button).
_BEARER = HTTPBearer(auto_error=False, description="the server's API key as a bearer token")
_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="the server's API key")


class Observe:
    """ASGI middleware: counts every response by route and status, and sets protective headers."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        route = route_name(path)
        isolated = path == "/" or path.startswith("/web/")
        status = 500

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                extra = (*ISOLATION_HEADERS, *((ASSET_CSP,) if path.startswith("/web/") else ())) if isolated else ()
                for key, value in ((b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                                   *extra):
                    if key not in names:
                        headers.append((key, value))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            self.metrics.request(route, scope.get("method", ""), status)


def route_name(path: str) -> str:
    """The name a request's path is counted under in /metrics."""
    if path in ROUTES:
        return path
    return next((folder for folder in _ROUTE_FOLDERS if path.startswith(folder + "/")), "other")


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def api_key_check(settings: ServeSettings):
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


def install_error_handlers(app: FastAPI, metrics: Any) -> None:
    """Every error as the API's one JSON shape (kind, message), counted by kind in /metrics."""
    @app.exception_handler(ApiError)
    async def api_error(_request: Request, err: ApiError) -> JSONResponse:
        metrics.error(err.kind)
        return error_response(err)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, err: StarletteHTTPException) -> JSONResponse:
        kinds = {404: "not_found", 405: "method_not_allowed"}
        api = ApiError(err.status_code, kinds.get(err.status_code, "http_error"), str(err.detail),
                       headers=dict(err.headers or {}))
        metrics.error(api.kind)
        return error_response(api)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, err: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in err.errors())
        api = ApiError(422, "bad_request", problems or "invalid request")
        metrics.error(api.kind)
        return error_response(api)

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, err: Exception) -> JSONResponse:
        log.exception("unhandled error")
        metrics.error("internal")
        return error_response(ApiError(500, "internal", f"internal error ({type(err).__name__})"))


def install_middleware(app: FastAPI, settings: ServeSettings, metrics: Any) -> None:
    """CORS when origins are allowed, and the request observer (latency, status, slow-client guard)."""
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type"], max_age=600)
    app.add_middleware(Observe, metrics=metrics)
