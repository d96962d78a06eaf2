"""Micro-batching: face crops from concurrent requests share one forward pass of the model.

Why: a forward pass over 16 faces costs far less than 16 passes over one (the model's weights are read once,
the matrix products are larger), so a server that classifies each request alone wastes most of its CPU under
load. One thread owns the model; requests hand it their crops and wait on a future.

A batch closes when it holds ``max_batch`` faces, or when no more requests are on their way (none is being
decoded or detected), or after ``max_wait_s`` at most. The middle rule keeps a lone client from paying the wait:
the batcher only waits for requests it knows are coming (:meth:`MicroBatcher.expect`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

__all__ = ["BatchResult", "MicroBatcher"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchResult:
    """One request's share of a forward pass: its probabilities and what the pass looked like."""

    probabilities: np.ndarray  # (faces of this request, classes)
    queued_s: float  # from submit to the start of the forward pass
    forward_s: float  # the whole batch's forward pass (preprocessing included)
    batch_faces: int
    batch_requests: int


@dataclass
class _Item:
    crops: Sequence[np.ndarray]
    future: Future
    submitted: float


class MicroBatcher:
    """A thread that classifies queued crops in batches; :meth:`submit` returns a future per request.

    ``classify`` maps a list of crops to probabilities ``(N, C)``; it only ever runs on the batcher's thread,
    so a model that is not thread-safe is safe here. ``on_batch(faces, requests, seconds)`` is told about
    every forward pass (for metrics).
    """

    def __init__(
        self,
        classify: Callable[[list[np.ndarray]], np.ndarray],
        max_batch: int = 32,
        max_wait_s: float = 0.01,
        on_batch: Callable[[int, int, float], None] | None = None,
        name: str = "poster-fer-batcher",
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must not be negative, got {max_wait_s}")
        self.classify = classify
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_s)
        self.on_batch = on_batch
        self._name = name
        self._cond = threading.Condition()
        self._items: list[_Item] = []
        self._faces = 0  # faces in self._items
        self._upstream = 0  # requests announced with expect() that have not submitted or cancelled yet
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread (idempotent)."""
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Classify what is queued, then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- requests ---------------------------------------------------------------------------------------

    def expect(self) -> None:
        """Announce a request that will submit soon (it is being decoded or detected): batches wait for it."""
        with self._cond:
            self._upstream += 1

    def cancel(self) -> None:
        """An announced request will not submit (it failed, or found no face)."""
        with self._cond:
            self._upstream = max(0, self._upstream - 1)
            self._cond.notify_all()

    def submit(self, crops: Sequence[np.ndarray], expected: bool = True) -> Future:
        """Queue one request's crops; the future gets a :class:`BatchResult`. ``expected``: it was announced."""
        if not crops:
            raise ValueError("submit needs at least one crop")
        if not self.running:
            raise RuntimeError("the batcher is not running")
        fut: Future = Future()
        with self._cond:
            if self._stopping:
                raise RuntimeError("the batcher is stopping")
            if expected:
                self._upstream = max(0, self._upstream - 1)
            self._items.append(_Item(crops, fut, time.perf_counter()))
            self._faces += len(crops)
            self._cond.notify_all()
        return fut

    @property
    def queued_requests(self) -> int:
        """Requests waiting for a forward pass (not counting the one running)."""
        with self._cond:
            return len(self._items)

    # -- the thread -------------------------------------------------------------------------------------

    def _take(self) -> list[_Item] | None:
        """Wait for work and return the next batch; None when stopping with nothing left."""
        with self._cond:
            while not self._items and not self._stopping:
                self._cond.wait()
            if not self._items:
                return None
            deadline = time.perf_counter() + self.max_wait_s
            while self._faces < self.max_batch and self._upstream > 0 and not self._stopping:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch: list[_Item] = []
            faces = 0
            while self._items and (not batch or faces + len(self._items[0].crops) <= self.max_batch):
                item = self._items.pop(0)
                self._faces -= len(item.crops)
                # a request whose client went away cancelled its future: leave it out of the pass
                if item.future.set_running_or_notify_cancel():
                    batch.append(item)
                    faces += len(item.crops)
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            if not batch:
                continue
            crops = [c for item in batch for c in item.crops]
            start = time.perf_counter()
            try:
                probs = np.asarray(self.classify(crops))
            except BaseException as err:  # the model failed: every waiting request hears why, the thread lives
                log.exception("forward pass over %d faces failed", len(crops))
                for item in batch:
                    item.future.set_exception(err)
                continue
            seconds = time.perf_counter() - start
            if self.on_batch is not None:
                try:
                    self.on_batch(len(crops), len(batch), seconds)
                except Exception:  # metrics must never break classification
                    log.exception("on_batch callback failed")
            i = 0
            for item in batch:
                n = len(item.crops)
                item.future.set_result(BatchResult(probs[i:i + n], start - item.submitted, seconds, len(crops),
                                                   len(batch)))
                i += n
