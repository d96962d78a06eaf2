"""Counters and histograms of the service, written in Prometheus' text format for ``GET /metrics``.

Why not prometheus_client: a dozen numbers do not justify a dependency, and one lock-protected object keeps
them consistent with each other. Format: https://prometheus.io/docs/instrumenting/exposition_formats/.
"""

from __future__ import annotations

import math
import os
import threading
from collections import defaultdict

__all__ = ["Histogram", "Metrics", "resident_memory_bytes"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Histogram:
    """Cumulative-bucket histogram (Prometheus semantics); not locked itself."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = tuple(sorted(buckets))
        self.counts = [0] * len(self.buckets)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.sum += value
        for i, edge in enumerate(self.buckets):
            if value <= edge:
                self.counts[i] += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out = [f'{name}_bucket{{{labels}{sep}le="{_num(edge)}"}} {n}' for edge, n in zip(self.buckets, self.counts,
                                                                                        strict=True)]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}')
        braces = f"{{{labels}}}" if labels else ""
        out.append(f"{name}_sum{braces} {_num(self.sum)}")
        out.append(f"{name}_count{braces} {self.count}")
        return out


class Metrics:
    """Everything ``/metrics`` reports; every method is thread-safe."""

    def __init__(self, model: str, device: str) -> None:
        self._lock = threading.Lock()
        self.model = model
        self.device = device
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)  # (route, method, status) -> n
        self.errors: dict[str, int] = defaultdict(int)  # kind -> n
        self.latency = Histogram(LATENCY_BUCKETS)  # successful predictions, seconds
        self.batch_faces = Histogram(BATCH_BUCKETS)
        self.batch_requests = Histogram(BATCH_BUCKETS)
        self.forward_seconds = Histogram(LATENCY_BUCKETS)
        self.faces = 0
        self.images = 0

    def request(self, route: str, method: str, status: int) -> None:
        with self._lock:
            self.requests[(route, method, status)] += 1

    def error(self, kind: str) -> None:
        with self._lock:
            self.errors[kind] += 1

    def prediction(self, seconds: float, faces: int) -> None:
        with self._lock:
            self.latency.observe(seconds)
            self.faces += faces
            self.images += 1

    def batch(self, faces: int, requests: int, seconds: float) -> None:
        with self._lock:
            self.batch_faces.observe(faces)
            self.batch_requests.observe(requests)
            self.forward_seconds.observe(seconds)

    def render(self, inflight: int, queue_limit: int) -> str:
        """The exposition text."""
        p = "poster_fer"
        with self._lock:
            lines = [f"# HELP {p}_model_info The served model (value always 1).", f"# TYPE {p}_model_info gauge",
                     f'{p}_model_info{{model="{_label(self.model)}",device="{_label(self.device)}"}} 1',
                     f"# HELP {p}_http_requests_total HTTP requests by route, method and status.",
                     f"# TYPE {p}_http_requests_total counter"]
            for (route, method, status), n in sorted(self.requests.items()):
                lines.append(f'{p}_http_requests_total{{route="{_label(route)}",method="{method}",'
                             f'status="{status}"}} {n}')
            lines += [f"# HELP {p}_errors_total Refused or failed requests by kind (the error body's kind).",
                      f"# TYPE {p}_errors_total counter"]
            lines += [f'{p}_errors_total{{kind="{_label(k)}"}} {n}' for k, n in sorted(self.errors.items())]
            lines += [f"# HELP {p}_predict_seconds Time to answer a successful /v1/predict, from the first byte "
                      "read to the result.", f"# TYPE {p}_predict_seconds histogram",
                      *self.latency.lines(f"{p}_predict_seconds"),
                      f"# HELP {p}_images_total Images answered by /v1/predict (with or without faces).",
                      f"# TYPE {p}_images_total counter",
                      f"{p}_images_total {self.images}",
                      f"# HELP {p}_faces_total Faces classified.", f"# TYPE {p}_faces_total counter",
                      f"{p}_faces_total {self.faces}",
                      f"# HELP {p}_batch_faces Faces per forward pass of the model.",
                      f"# TYPE {p}_batch_faces histogram", *self.batch_faces.lines(f"{p}_batch_faces"),
                      f"# HELP {p}_batch_requests Requests sharing one forward pass.",
                      f"# TYPE {p}_batch_requests histogram", *self.batch_requests.lines(f"{p}_batch_requests"),
                      f"# HELP {p}_forward_seconds Duration of each forward pass (preprocessing included).",
                      f"# TYPE {p}_forward_seconds histogram", *self.forward_seconds.lines(f"{p}_forward_seconds")]
        lines += [f"# HELP {p}_inflight_requests Requests in the service now.", f"# TYPE {p}_inflight_requests gauge",
                  f"{p}_inflight_requests {inflight}",
                  f"# HELP {p}_queue_limit Requests admitted at once before 503.", f"# TYPE {p}_queue_limit gauge",
                  f"{p}_queue_limit {queue_limit}"]
        rss = resident_memory_bytes()
        if rss is not None:
            lines += ["# HELP process_resident_memory_bytes Resident memory of the server process.",
                      "# TYPE process_resident_memory_bytes gauge", f"process_resident_memory_bytes {rss}"]
        return "\n".join(lines) + "\n"


def resident_memory_bytes(pid: int | None = None) -> int | None:
    """Resident set size from ``/proc`` (Linux); None elsewhere."""
    try:
        with open(f"/proc/{pid or os.getpid()}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _num(v: float) -> str:
    if isinstance(v, int) or (math.isfinite(v) and float(v).is_integer()):
        return str(int(v))
    return repr(float(v))


def _label(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
