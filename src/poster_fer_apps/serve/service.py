"""The state behind one server: the recognizer views (one detector each), the worker threads, the micro-batcher,
the metrics, the upload places, and what ``GET /v1/model`` answers."""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import math
import queue
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from poster_fer import __version__
from poster_fer.card import thaw
from poster_fer.faces import Face, FaceDetector
from poster_fer.inference import Recognizer
from poster_fer.jsonable import to_jsonable

from .batching import MicroBatcher
from .errors import ApiError
from .metrics import Metrics
from .settings import ServeSettings
from .uploads import SUPPORTED_FORMATS, decode_image

__all__ = ["PUBLIC_PROVENANCE", "Prepared", "Service", "public_provenance"]

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    width: int
    height: int
    format: str
    faces: list[Face | None]
    crops: list[np.ndarray]
    decode_s: float
    detect_s: float


class Service:
    """The state behind one app: recognizer views (one detector each), worker threads, batcher, metrics."""

    def __init__(self, recognizer: Recognizer, settings: ServeSettings, detectors: Sequence[FaceDetector]) -> None:
        self.rec = recognizer
        self.settings = settings
        # the weights' name with its tag (poster_v1_mfn64_image.ferplus), else the architecture's
        self.model_name = str(recognizer.card.display_name or "model")
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

    def prepare(self, data: bytes, max_faces: int, detect: bool) -> Prepared:
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
        return Prepared(w, h, fmt, faces, crops, t1 - t0, time.perf_counter() - t1)

    def result(self, face: Face | None, probs: np.ndarray, width: int, height: int) -> dict[str, Any]:
        """One face as the documented wire keys ("scores"; see FaceResult.to_record), built by the recognizer."""
        return self.rec.result(face, probs, (width, height)).to_record()

    @functools.cached_property
    def model_record(self) -> dict[str, Any]:
        """What ``GET /v1/model`` answers (built once: the model does not change while serving)."""
        card = self.rec.card
        s = self.settings
        record = {
            "name": self.model_name,
            "classes": list(self.rec.classes),
            "num_classes": len(self.rec.classes),
            "preprocessing": self.rec.preprocessing.to_dict(),
            "temperature": card.temperature,
            "logit_bias": card.logit_bias,
            "operating_point": card.operating_point,
            "metrics": thaw(card.metrics) or None,
            "weights": card.name or card.extra.get("weights"),  # a retired name a file recorded, as read
            "licence": card.licence or None,
            "provenance": public_provenance(card.provenance_record() or None),
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
PUBLIC_PROVENANCE = ("recipe", "git_revision", "epochs_run", "model_card", "storage")


def public_provenance(prov: Any) -> dict[str, Any] | None:
    if not isinstance(prov, dict):
        return None
    return {k: prov[k] for k in PUBLIC_PROVENANCE if k in prov and not _looks_like_path(prov[k])}


def _looks_like_path(value: Any) -> bool:
    return isinstance(value, str) and (value.startswith(("/", "~", "\\")) or value[1:3] in (":\\", ":/"))


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
