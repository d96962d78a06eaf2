"""Limits and switches of the HTTP service, in one validated record.

Why a record of its own: the command line, tests and embedding applications all build the app through
:func:`poster_fer_apps.serve.create_app`, and every limit that protects the server (body size, pixel count, queue
length) must be checked once, in one place, before the server accepts its first request.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from poster_fer.constants import DEFAULT_MAX_PIXELS  # not from faces, which imports OpenCV: settings feed --help

__all__ = ["API_KEY_ENV", "DEFAULT_MAX_BODY_BYTES", "ServeSettings"]

#: Environment variable the command line reads the API key from (keeps the key out of the process list).
API_KEY_ENV = "POSTER_FER_API_KEY"
#: 10 MiB: a large phone photo as JPEG fits; anything bigger is refused while it is still arriving.
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True)
class ServeSettings:
    """What the service accepts and how it batches.

    Attributes:
        max_body_bytes: largest request body; larger ones get 413 as soon as the limit is crossed.
        max_pixels: largest decoded image (width x height), checked from the header before decoding, so a
            small file that expands to gigabytes (a decompression bomb) is refused without being decoded.
        max_faces: most faces returned per image, and the largest value the ``max_faces`` option accepts.
        max_batch: most faces per forward pass of the model.
        max_wait_ms: how long a batch waits for requests that are still being decoded or detected.
        max_queue: most requests in the service at once once their bodies have arrived (decoding, detecting,
            waiting, classifying); the next one gets 503 with ``Retry-After`` instead of piling up. Bodies are
            read before, in an upload place (``max_uploads_per_client`` per address, ``max_uploads`` in all).
        workers: threads that decode images and detect faces (each with its own detector).
        api_key: when set, every ``/v1/*`` call must send it (``Authorization: Bearer`` or ``X-API-Key``).
        cors_origins: origins allowed to call the API from other web pages; empty: CORS off.
        body_timeout_s: a client must deliver its whole body within this time (408 otherwise).
        max_uploads: bodies being received at once, over all clients (503 beyond). Bodies are read before a
            request takes a place in the queue, so slow or stalled senders hold only upload places.
        max_uploads_per_client: bodies being received at once from one client address (429 beyond), so one
            client that stalls its uploads cannot take every upload place.
        header_timeout_s: a connection must send a complete request head within this time of connecting (or of
            its previous response), else it is closed (:mod:`poster_fer_apps.serve.protocol`).
    """

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_faces: int = 64
    max_batch: int = 32
    max_wait_ms: float = 10.0
    max_queue: int = 32
    workers: int = 1
    api_key: str | None = None
    cors_origins: tuple[str, ...] = field(default=())
    body_timeout_s: float = 30.0
    max_uploads: int = 64
    max_uploads_per_client: int = 16
    header_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_pixels", "max_faces", "max_batch", "max_queue", "workers",
                     "max_uploads", "max_uploads_per_client"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0 <= float(self.max_wait_ms) <= 10_000:
            raise ValueError(f"max_wait_ms must be between 0 and 10000, got {self.max_wait_ms!r}")
        for name in ("body_timeout_s", "header_timeout_s"):
            if not 0 < float(getattr(self, name)) <= 3600:
                raise ValueError(f"{name} must be in (0, 3600], got {getattr(self, name)!r}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key is empty; give a real key or None")
        object.__setattr__(self, "cors_origins", tuple(str(o) for o in self.cors_origins))
