"""The HTTP connection itself: uvicorn's h11 protocol with a header deadline and JSON protocol errors.

Why: uvicorn times out idle keep-alive connections *between* requests, but a connection that sends nothing, or
sends half a request line and stops, stays open for as long as the client likes; 500 such sockets cost the
server file descriptors and memory and, before the app ever sees a request, no limit of ours applies. Here
every connection must deliver a complete request head (request line and headers) within ``header_timeout_s``
of connecting or of its previous response, or it is closed. Malformed requests that never reach the app get
the service's documented JSON error body instead of uvicorn's plain text.

This subclasses uvicorn's ``H11Protocol`` (passed as ``uvicorn.Config(http=...)``); :func:`guarded_protocol`
returns None when that class is unavailable, and the server then runs on uvicorn's own protocol.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

__all__ = ["guarded_protocol"]

log = logging.getLogger(__name__)


def guarded_protocol(header_timeout_s: float) -> type[asyncio.Protocol] | None:
    """An h11 protocol class closing connections that do not send a request head within ``header_timeout_s``."""
    try:
        import h11
        from uvicorn.protocols.http.h11_impl import H11Protocol
    except ImportError:  # pragma: no cover - uvicorn without h11
        log.warning("uvicorn's h11 protocol is unavailable: connections have no header deadline")
        return None

    class GuardedH11Protocol(H11Protocol):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._head_timer: asyncio.TimerHandle | None = None
            self._arm()

        def _arm(self) -> None:
            """Start the deadline for the next request head (the current cycle is the one already answered)."""
            self._disarm()
            self._cycle_at_arm = self.cycle
            self._head_timer = self.loop.call_later(header_timeout_s, self._head_timeout)

        def _disarm(self) -> None:
            timer = getattr(self, "_head_timer", None)
            if timer is not None:
                timer.cancel()
                self._head_timer = None

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not getattr(self, "_cycle_at_arm", None):  # a request head arrived in time
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _head_timeout(self) -> None:
            self._head_timer = None
            if self.transport.is_closing() or self.cycle is not self._cycle_at_arm:
                return
            self.transport.close()  # silent or half-sent: nothing a response could help

        def send_400_response(self, msg: str) -> None:
            _answer_bad_request(self, h11, msg)

    return GuardedH11Protocol


def _answer_bad_request(protocol: Any, h11: Any, msg: str) -> None:
    """A malformed request head gets the API's JSON error shape (uvicorn's own answer is plain text), then the
    connection closes."""
    body = json.dumps({"error": {"kind": "bad_http", "message": f"malformed HTTP request ({msg})"}})
    data = body.encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
               (b"connection", b"close")]
    try:
        protocol.transport.write(protocol.conn.send(h11.Response(status_code=400, headers=headers,
                                                                 reason=b"Bad Request")))
        protocol.transport.write(protocol.conn.send(h11.Data(data=data)))
        protocol.transport.write(protocol.conn.send(h11.EndOfMessage()))
    except h11.LocalProtocolError:  # the connection is past answering
        pass
    protocol.transport.close()
