"""Running the app: the listening socket and uvicorn with a clean Ctrl-C / SIGTERM exit.

Kept apart from ``poster-fer serve`` (which only parses options) so a script can serve an app the same way:
``sock = listen("127.0.0.1", 0); run(app, sock)``.
"""

from __future__ import annotations

import ipaddress
import signal
import socket
from typing import Any

__all__ = ["build_server", "is_loopback", "listen", "run"]


def listen(host: str, port: int) -> socket.socket:
    """A bound, listening socket. We bind it ourselves so that port 0 gives a free port that can be printed, and
    so that a taken port fails before a model is loaded. Raises ``OSError`` with a one-line reason."""
    if not 0 <= port <= 65535:
        raise OSError(f"port must be 0..65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise OSError(f"cannot resolve host {host!r} ({err})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as err:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} ({err.strerror or err})") from None
    sock.set_inheritable(True)
    return sock


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_server(app: Any, access_log: bool = False, header_timeout_s: float = 10.0) -> Any:
    """The uvicorn server :func:`run` uses: connections must send a complete request head within
    ``header_timeout_s`` (:mod:`poster_fer_apps.serve.protocol`); idle keep-alive connections close after 5 s."""
    import uvicorn

    from .protocol import guarded_protocol

    config = uvicorn.Config(app, log_level="info" if access_log else "warning", access_log=access_log,
                            lifespan="on", server_header=False, timeout_graceful_shutdown=10,
                            http=guarded_protocol(header_timeout_s) or "auto", timeout_keep_alive=5)
    return uvicorn.Server(config)


def run(app: Any, sock: socket.socket, access_log: bool = False, header_timeout_s: float = 10.0) -> None:
    """Serve ``app`` on ``sock`` until SIGINT/SIGTERM, then return normally (the socket is closed)."""
    server = build_server(app, access_log, header_timeout_s)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM and then re-raises the signal to the handler it found;
    # no-op handlers make that a normal exit (status 0) instead of KeyboardInterrupt or death by SIGTERM.
    previous = {sig: signal.signal(sig, _ignore) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _ignore(_sig: int, _frame: object) -> None:
    """Signal handler that does nothing (see :func:`run`)."""
