"""The service's one error shape: ``{"error": {"kind": ..., "message": ...}}`` with a 4xx/5xx status.

Why: clients (and the web page) branch on ``kind`` and show ``message``; a stable machine-readable kind per
problem is what lets a client tell "send a smaller photo" from "try again later".
"""

from __future__ import annotations

__all__ = ["ApiError"]


class ApiError(Exception):
    """A request the service refuses, with the HTTP status, a short kind and a message naming the problem."""

    def __init__(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = int(status)
        self.kind = kind
        self.message = message
        self.headers = dict(headers or {})

    def body(self) -> dict[str, dict[str, str]]:
        """The JSON body sent to the client."""
        return {"error": {"kind": self.kind, "message": self.message}}
