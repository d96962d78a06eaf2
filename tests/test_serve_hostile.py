"""Issue 24's server rows: stalled uploads, idle connections, protocol errors, multipart oddities, what
``/v1/model`` shows, and who may serve without a key. Socket-level checks run a real uvicorn server (the same
``build_server`` the CLI uses) on a loopback port in a thread; the classifier is a fake, so they stay fast."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from poster_fer.inference import Recognizer
from poster_fer_apps.cli import main
from poster_fer_apps.serve import ServeSettings, create_app
from poster_fer_apps.serve.runner import build_server, listen

CLASSES = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear"]


class FakeBackend:
    def __init__(self) -> None:
        self.meta = {"model": "fake", "classes": CLASSES, "preprocessing": {"input_size": 8},
                     "provenance": {"recipe": "r", "git_revision": "abc", "command": "poster-fer train --out /home/u/x",
                                    "machine": {"platform": "Linux-secret"}, "model_card": "/home/u/card.md"}}
        self.device = "cpu"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.zeros((len(batch), len(CLASSES)), np.float32)


def png(value: int = 100, size: int = 24) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def server():
    """A live server (fake model, no detector) on 127.0.0.1; yields (host, port, settings)."""
    started: list[tuple] = []

    def start(**overrides):
        settings = ServeSettings(**{"max_uploads_per_client": 4, "body_timeout_s": 20, "header_timeout_s": 1.0,
                                    **overrides})
        app = create_app(Recognizer(FakeBackend(), detector=None), settings)
        sock = listen("127.0.0.1", 0)
        srv = build_server(app, header_timeout_s=settings.header_timeout_s)
        thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        end = time.monotonic() + 30
        while not srv.started:
            assert time.monotonic() < end, "server did not start"
            time.sleep(0.02)
        started.append((srv, thread, sock))
        return sock.getsockname()[:2]

    yield start
    for srv, thread, sock in started:
        srv.should_exit = True
        thread.join(15)
        sock.close()


def _raw(host, port, data: bytes, source: str = "127.0.0.1") -> socket.socket:
    s = socket.create_connection((host, port), timeout=10, source_address=(source, 0))
    if data:
        s.sendall(data)
    return s


def _stalled_upload(host, port, source: str) -> socket.socket:
    head = (b"POST /v1/predict?detect=false HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Content-Length: 5000\r\n\r\n")
    return _raw(host, port, head, source)


def _read_all(s: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := s.recv(65536):
            chunks.append(chunk)
    except (TimeoutError, ConnectionResetError):
        pass
    return b"".join(chunks)


def test_stalled_uploads_hold_no_queue_place_and_are_capped_per_client(server):
    host, port = server(max_queue=2)
    stalled = [_stalled_upload(host, port, "127.0.0.2") for _ in range(6)]  # more than queue and per-client cap
    try:
        time.sleep(0.5)
        with httpx.Client(base_url=f"http://{host}:{port}", timeout=10) as c:
            for _ in range(3):  # a well-behaved client on another address is served at once
                t = time.monotonic()
                r = c.post("/v1/predict?detect=false", content=png(), headers={"Content-Type": "image/png"})
                assert r.status_code == 200, r.text
                assert time.monotonic() - t < 5
        # the attacker's address got at most 4 upload places; the rest were told so, in the JSON error shape
        answers = [s for s in stalled[4:]]
        for s in answers:
            s.settimeout(5)
            text = _read_all(s).decode("latin-1")
            assert " 429 " in text.split("\r\n")[0] and '"too_many_uploads"' in text
    finally:
        for s in stalled:
            s.close()


def test_idle_and_half_sent_connections_are_closed(server):
    host, port = server(header_timeout_s=0.5)
    idle = _raw(host, port, b"")
    half = _raw(host, port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # the head never ends
    try:
        for s in (idle, half):
            s.settimeout(5)
            t = time.monotonic()
            assert _read_all(s) == b""  # closed by the server, not by our timeout
            assert time.monotonic() - t < 4
        # a client that sends its request in time is answered, and may keep the connection for the next one
        ok = _raw(host, port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        ok.settimeout(5)
        assert b"200 OK" in ok.recv(4096)
        ok.close()
    finally:
        idle.close()
        half.close()


def test_protocol_level_errors_are_json(server):
    host, port = server()
    s = _raw(host, port, b"THIS IS NOT HTTP\r\n\r\n")
    s.settimeout(5)
    text = _read_all(s).decode("latin-1")
    s.close()
    head, _, body = text.partition("\r\n\r\n")
    assert " 400 " in head.split("\r\n")[0] and "application/json" in head
    assert json.loads(body)["error"]["kind"] == "bad_http"


def _serve(app, fn):
    async def go():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=30) as client:
                return await fn(client)

    return asyncio.run(go())


def test_multipart_oddities_head_requests_and_model_record():
    app = create_app(Recognizer(FakeBackend(), detector=None), ServeSettings())
    boundary = "b" * 300
    long_body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\n").encode() + png() + \
        f"\r\n--{boundary}--\r\n".encode()
    short = "xyz"
    no_disposition = (f"--{short}\r\nContent-Type: image/png\r\n\r\n").encode() + png() + \
        f"\r\n--{short}--\r\n".encode()
    corrupt = png()[:60] + b"\0" * 40

    async def go(c):
        out = {}
        out["long"] = await c.post("/v1/predict?detect=false", content=long_body,
                                   headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        out["nodisp"] = await c.post("/v1/predict?detect=false", content=no_disposition,
                                     headers={"Content-Type": f"multipart/form-data; boundary={short}"})
        out["corrupt"] = await c.post("/v1/predict?detect=false", content=corrupt)
        out["head_root"] = await c.head("/")
        out["head_health"] = await c.head("/healthz")
        out["model"] = await c.get("/v1/model")
        return out

    r = _serve(app, go)
    assert r["long"].status_code == 400 and r["long"].json()["error"]["kind"] == "bad_multipart"
    assert "Content-Disposition" in r["nodisp"].json()["error"]["message"]
    assert r["corrupt"].status_code == 400 and "0x" not in r["corrupt"].json()["error"]["message"]
    assert r["head_root"].status_code == 200 and r["head_health"].status_code == 200
    record = r["model"].json()
    text = json.dumps(record)
    assert record["provenance"] == {"recipe": "r", "git_revision": "abc"}
    assert "/home/" not in text and "Linux-secret" not in text


def test_serving_beyond_loopback_needs_a_key_or_the_explicit_flag(capsys, monkeypatch):
    monkeypatch.delenv("POSTER_FER_API_KEY", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "--insecure-no-key" in err and "API key" in err
