"""``poster-fer serve``: every endpoint, every kind of bad upload, API keys, CORS, the queue limit, micro-batching,
and the real command line on a loopback port. The model is a tiny saved checkpoint (never the default model)."""

from __future__ import annotations

import asyncio
import io
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from poster_fer import create_model, save_model
from poster_fer.faces import get_geometry, load_image
from poster_fer.inference import Recognizer
from poster_fer.samples import sample_path
from poster_fer_apps.cli import main
from poster_fer_apps.serve import ServeSettings, create_app

#: class names for the tiny models these tests build (save_model refuses a model without any)
_CLASS_NAMES = {n: [f"c{i}" for i in range(n)] for n in range(1, 11)}
_CLASS_NAMES[7] = ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"]
_CLASS_NAMES[8] = ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt"]

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny models, one thread

SIZE = 56
CLASSES = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear"]


# -- fixtures and helpers ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("poster_v1_tiny", num_classes=7, input_size=SIZE, backbone_size=SIZE, classes=_CLASS_NAMES[7])
    with torch.no_grad():  # a sharper head, so labels differ between faces
        model.head.linear.weight.mul_(30.0)
    prep = {"input_size": SIZE, "crop_geometry": get_geometry("rafdb").to_dict(), "grayscale": False}
    metrics = {"test": {"accuracy": 0.5, "f1_contempt": float("nan")}}  # NaN: metadata JSON allows it, HTTP not
    return str(save_model(model, tmp_path_factory.mktemp("ckpt") / "tiny", preprocessing=prep, classes=CLASSES,
                          metrics=metrics, temperature=1.5))


@pytest.fixture(scope="module")
def rec(ckpt):
    return Recognizer.from_checkpoint(ckpt)  # the YuNet detector bundled in the package


@pytest.fixture(scope="module")
def portrait() -> bytes:
    return sample_path().read_bytes()  # JPEG, 512x600, one face


@pytest.fixture(scope="module")
def portrait_rgb() -> np.ndarray:
    return load_image(sample_path())


def encode(rgb: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt, **kw)
    return buf.getvalue()


def serve(app, fn):
    """Run ``await fn(client)`` against the app (lifespan included) on a fresh event loop."""

    async def go():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=60) as client:
                return await fn(client)

    return asyncio.run(go())


def error_of(response: httpx.Response) -> tuple[int, str, str]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"kind", "message"}
    return response.status_code, body["error"]["kind"], body["error"]["message"]


class FakeBackend:
    """A model stand-in: logits that favour class ``i % C`` for the i-th crop, with optional delay or gate."""

    def __init__(self, delay: float = 0.0, gate: threading.Event | None = None, fail: bool = False) -> None:
        self.meta = {"model": "fake", "classes": CLASSES, "preprocessing": {"input_size": 8}}
        self.device = "cpu"
        self.calls: list[int] = []
        self.delay = delay
        self.gate = gate
        self.fail = fail
        self.entered = threading.Event()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(len(batch))
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(30), "test gate never opened"
        if self.delay:
            time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("the fake model broke")
        logits = np.zeros((len(batch), len(CLASSES)), np.float32)
        logits[np.arange(len(batch)), np.arange(len(batch)) % len(CLASSES)] = 5.0
        return logits


def crop_png(value: int = 120) -> bytes:
    return encode(np.full((24, 24, 3), value, np.uint8), "PNG")


async def wait_for(predicate, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached in time"
        await asyncio.sleep(0.005)


# -- predictions ---------------------------------------------------------------------------------------------


def test_predict_every_format_raw_and_multipart_matches_the_library(rec, portrait, portrait_rgb):
    app = create_app(rec)
    uploads = {"JPEG": (portrait, "image/jpeg"), "PNG": (encode(portrait_rgb, "PNG"), "image/png"),
               "WEBP": (encode(portrait_rgb, "WEBP", lossless=True), "image/webp"),
               "BMP": (encode(portrait_rgb, "BMP"), "image/bmp")}

    async def go(c):
        out = {}
        for fmt, (data, media) in uploads.items():
            out[fmt, "raw"] = await c.post("/v1/predict", content=data, headers={"Content-Type": media})
            out[fmt, "form"] = await c.post("/v1/predict", files={"file": ("x.img", data, media)})
        # no Content-Type at all, and a lying one: the format comes from the bytes
        out["JPEG", "untyped"] = await c.post("/v1/predict", content=portrait)
        out["JPEG", "mislabelled"] = await c.post("/v1/predict", content=portrait,
                                                  headers={"Content-Type": "image/png"})
        # what `curl --data-binary @photo.jpg URL` sends
        out["JPEG", "curl"] = await c.post("/v1/predict", content=portrait,
                                           headers={"Content-Type": "application/x-www-form-urlencoded"})
        return out

    responses = serve(app, go)
    expected = rec.predict(portrait_rgb)
    assert len(expected) == 1
    for (fmt, how), r in responses.items():
        assert r.status_code == 200, (fmt, how, r.text)
        body = r.json()
        assert body["model"] == "poster_v1_tiny" and body["detect"] is True
        assert body["image"] == {"width": 512, "height": 600, "format": fmt}
        (face,) = body["faces"]
        assert list(face) == ["box", "landmarks", "landmarks_estimated", "score", "label", "confidence", "scores",
                              "detection"]
        assert list(face["scores"]) == CLASSES
        assert face["label"] == max(face["scores"], key=face["scores"].get)
        assert sum(face["scores"].values()) == pytest.approx(1, abs=1e-3)
        assert len(face["landmarks"]) == 5 and 0.6 <= face["score"] <= 1
        assert face["box"] == pytest.approx(list(expected[0].box), abs=0.02)
        # the same pixels (JPEG decoded once, the others lossless copies) give the library's own numbers
        assert face["label"] == expected[0].label
        assert face["scores"] == pytest.approx(expected[0].probabilities, abs=2e-4)
        assert set(body["timings_ms"]) == {"decode", "detect", "queue", "forward", "total"}
        assert body["timings_ms"]["total"] >= body["timings_ms"]["detect"] > 0
        assert body["batch"]["faces"] >= 1 and body["batch"]["requests"] >= 1
        assert r.headers["cache-control"] == "no-store"


def test_options_max_faces_and_detect(rec, portrait_rgb):
    tile = portrait_rgb[60:400, 80:440]
    group = np.ascontiguousarray(np.vstack([np.hstack([tile, tile[:, ::-1]]), np.hstack([tile[:, ::-1], tile])]))
    data = encode(group, "PNG")
    app = create_app(rec, ServeSettings(max_faces=10))

    async def go(c):
        return (await c.post("/v1/predict", content=data),
                await c.post("/v1/predict?max_faces=2", content=data),
                await c.post("/v1/predict", files={"file": ("g.png", data)}, data={"max_faces": "3"}),
                await c.post("/v1/predict?detect=false", content=data),
                await c.post("/v1/predict", files={"file": ("g.png", data)}, data={"detect": "no"}))

    every, two, three, whole, whole_form = serve(app, go)
    faces = every.json()["faces"]
    assert len(faces) == 4
    scores = [f["score"] for f in faces]
    assert scores == sorted(scores, reverse=True)  # best detection first
    assert [f["box"] for f in two.json()["faces"]] == [f["box"] for f in faces[:2]]
    assert len(three.json()["faces"]) == 3
    for r in (whole, whole_form):
        body = r.json()
        assert body["detect"] is False
        (face,) = body["faces"]
        assert face["box"] == [0, 0, group.shape[1], group.shape[0]]
        assert face["landmarks"] is None and face["score"] is None
    # the crop path classifies the whole upload, as Recognizer.predict(detect=False) does
    expected = rec.predict(group, detect=False)[0]
    assert whole.json()["faces"][0]["scores"] == pytest.approx(expected.probabilities, abs=2e-4)


def test_image_without_a_face_and_exif_rotation(rec, portrait_rgb):
    wall = encode(np.full((300, 400, 3), 90, np.uint8), "JPEG")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: "rotate 90 degrees clockwise to display"
    buf = io.BytesIO()
    Image.fromarray(portrait_rgb).rotate(90, expand=True).save(buf, format="JPEG", exif=exif, quality=92)
    app = create_app(rec)

    async def go(c):
        return await c.post("/v1/predict", content=wall), await c.post("/v1/predict", content=buf.getvalue())

    empty, rotated = serve(app, go)
    assert empty.status_code == 200 and empty.json()["faces"] == [] and empty.json()["batch"] is None
    body = rotated.json()
    assert body["image"]["width"] == 512 and body["image"]["height"] == 600  # upright, as the browser shows it
    assert len(body["faces"]) == 1


# -- bad input ----------------------------------------------------------------------------------------------


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge size (a decompression bomb's header)."""
    data = bytearray(encode(np.zeros((1, 1, 3), np.uint8), "PNG"))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    return bytes(data)


def _bad_requests(portrait: bytes, portrait_rgb: np.ndarray) -> list[tuple[str, dict, int, str, str]]:
    png = encode(portrait_rgb[:200, :200], "PNG")
    corrupt_png = png[:60] + bytes(range(256)) * 4 + png[60 + 1024:]
    boundary = "XyZ"
    broken_form = f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc".encode()
    return [
        # name, request kwargs, status, kind, words the message must contain
        ("empty raw body", {"content": b""}, 400, "empty_body", "empty"),
        ("empty file field", {"files": {"file": ("a.jpg", b"", "image/jpeg")}}, 400, "empty_body", "'file'"),
        ("text", {"content": b"hello, I am not a photo"}, 400, "not_an_image", "not an image"),
        ("random bytes", {"content": bytes(range(7, 250))}, 400, "not_an_image", "not an image"),
        ("truncated JPEG", {"content": portrait[: len(portrait) // 3]}, 400, "corrupt_image", "truncated"),
        ("corrupt PNG", {"content": corrupt_png}, 400, "corrupt_image", "PNG"),
        ("header only", {"content": b"\xff\xd8\xff"}, 400, "corrupt_image", "JPEG"),
        ("GIF", {"content": encode(portrait_rgb, "GIF")}, 415, "unsupported_type", "GIF"),
        ("TIFF", {"content": encode(portrait_rgb, "TIFF")}, 415, "unsupported_type", "TIFF"),
        ("text/plain", {"content": b"abc", "headers": {"Content-Type": "text/plain"}}, 415, "unsupported_type",
         "text/plain"),
        ("JSON", {"json": {"image": "photo.jpg"}}, 415, "unsupported_type", "application/json"),
        ("server path", {"data": {"file": "/etc/passwd"}}, 415, "unsupported_type", "urlencoded"),
        ("wrong field name", {"files": {"image": ("a.jpg", portrait, "image/jpeg")}}, 400, "bad_field", "'file'"),
        ("only a text field", {"files": {"file2": (None, b"x")}}, 400, "bad_field", "no form field named 'file'"),
        ("two files", {"files": [("file", ("a.jpg", portrait)), ("file", ("b.jpg", portrait))]}, 400, "bad_field",
         "more than one"),
        ("broken multipart", {"content": broken_form,
                              "headers": {"Content-Type": f"multipart/form-data; boundary={boundary}"}}, 400,
         "bad_multipart", "multipart"),
        ("no boundary", {"content": b"--x--", "headers": {"Content-Type": "multipart/form-data"}}, 400,
         "bad_multipart", "boundary"),
        ("bomb header", {"content": _png_claiming(60000, 60000)}, 413, "too_many_pixels", "pixels"),
        ("max_faces=0", {"params": {"max_faces": "0"}, "content": portrait}, 422, "bad_option", "max_faces"),
        ("max_faces=-3", {"params": {"max_faces": "-3"}, "content": portrait}, 422, "bad_option", "max_faces"),
        ("max_faces=abc", {"params": {"max_faces": "abc"}, "content": portrait}, 422, "bad_option", "max_faces"),
        ("max_faces=1.5", {"params": {"max_faces": "1.5"}, "content": portrait}, 422, "bad_option", "max_faces"),
        ("max_faces huge", {"params": {"max_faces": "9" * 40}, "content": portrait}, 422, "bad_option", "1 to 64"),
        ("max_faces over limit", {"params": {"max_faces": "65"}, "content": portrait}, 422, "bad_option", "64"),
        ("detect=maybe", {"params": {"detect": "maybe"}, "content": portrait}, 422, "bad_option", "detect"),
        ("unknown option", {"params": {"max_face": "3"}, "content": portrait}, 422, "bad_option", "'max_face'"),
        ("conflicting options", {"params": {"max_faces": "2"}, "files": {"file": ("a.jpg", portrait)},
                                 "data": {"max_faces": "3"}}, 422, "bad_option", "twice"),
        ("path as option", {"params": {"path": "/etc/passwd"}, "content": b""}, 422, "bad_option", "'path'"),
    ]


def test_every_bad_upload_is_a_clear_4xx_and_the_server_lives_on(rec, portrait, portrait_rgb):
    cases = _bad_requests(portrait, portrait_rgb)
    app = create_app(rec)

    async def go(c):
        out = [await c.post("/v1/predict", **kw) for _, kw, *_ in cases]
        return out, await c.get("/healthz"), await c.post("/v1/predict", content=portrait), await c.get("/metrics")

    responses, health, good, metrics = serve(app, go)
    for (name, _, status, kind, words), r in zip(cases, responses, strict=True):
        got_status, got_kind, message = error_of(r)
        assert (got_status, got_kind) == (status, kind), (name, r.text)
        assert words.lower() in message.lower(), (name, message)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert good.status_code == 200 and len(good.json()["faces"]) == 1
    counts = dict(re.findall(r'poster_fer_errors_total\{kind="(\w+)"\} (\d+)', metrics.text))
    expected: dict[str, int] = {}
    for _, _, _, kind, _ in cases:
        expected[kind] = expected.get(kind, 0) + 1
    assert {k: int(v) for k, v in counts.items()} == expected


def test_pixel_limit_refuses_before_decoding(rec):
    flat = encode(np.zeros((1000, 2000, 3), np.uint8), "PNG")  # 2 MP, a few kB
    assert len(flat) < 50_000
    app = create_app(rec, ServeSettings(max_pixels=1_000_000))

    async def go(c):
        return await c.post("/v1/predict", content=flat)

    status, kind, message = error_of(serve(app, go))
    assert (status, kind) == (413, "too_many_pixels")
    assert "2000x1000" in message and "1000000" in message


def test_body_limit_is_checked_while_reading(rec):
    limit = 1_000_000
    app = create_app(rec, ServeSettings(max_body_bytes=limit))
    sent = []

    async def endless():
        for _ in range(320):  # 20 MB if nobody stops reading
            sent.append(1)
            yield b"\0" * 65536

    async def go(c):
        big = await c.post("/v1/predict", content=endless())
        declared = await c.post("/v1/predict", content=b"\xff\xd8\xff" + b"\0" * (limit + 10))
        return big, declared

    big, declared = serve(app, go)
    assert error_of(big)[:2] == (413, "body_too_large")
    assert len(sent) <= limit // 65536 + 2  # reading stopped right after the limit
    status, kind, message = error_of(declared)  # Content-Length over the limit: refused before reading
    assert (status, kind) == (413, "body_too_large") and str(limit + 13) in message


def test_slow_body_times_out(rec):
    app = create_app(rec, ServeSettings(body_timeout_s=0.3))

    async def trickle():
        yield b"\xff\xd8\xff"
        await asyncio.sleep(5)
        yield b"\0"

    async def go(c):
        t = time.monotonic()
        r = await c.post("/v1/predict", content=trickle())
        return r, time.monotonic() - t

    r, seconds = serve(app, go)
    assert error_of(r)[:2] == (408, "body_timeout") and seconds < 3


def test_uploads_never_touch_disk(rec, monkeypatch):
    import tempfile

    def refuse(*_a, **_k):
        raise AssertionError("an upload was spooled to a temporary file")

    import starlette.formparsers

    for name in ("SpooledTemporaryFile", "TemporaryFile", "NamedTemporaryFile", "mkstemp", "mkdtemp"):
        monkeypatch.setattr(tempfile, name, refuse)
    # Starlette's own form parser (request.form()) holds its own reference: a regression to it fails here too
    monkeypatch.setattr(starlette.formparsers, "SpooledTemporaryFile", refuse, raising=False)
    noise = np.random.default_rng(0).integers(0, 256, size=(700, 600, 3), dtype=np.uint8)
    data = encode(noise, "PNG")  # incompressible: over the 1 MB where Starlette's form parser spools to disk
    assert len(data) > 1_100_000
    app = create_app(rec)

    async def go(c):
        return await c.post("/v1/predict", files={"file": ("big.png", data, "image/png")})

    r = serve(app, go)
    assert r.status_code == 200, r.text


def test_wrong_routes_and_methods_are_json_errors(rec):
    app = create_app(rec)

    async def go(c):
        return await c.get("/v1/predict"), await c.get("/nope"), await c.get("/../../etc/passwd")

    wrong_method, missing, traversal = serve(app, go)
    assert error_of(wrong_method)[:2] == (405, "method_not_allowed")
    assert error_of(missing)[:2] == (404, "not_found")
    assert traversal.status_code == 404


# -- other endpoints -------------------------------------------------------------------------------------


def test_model_health_metrics_page_and_docs(rec, portrait):
    app = create_app(rec, ServeSettings(max_batch=8))

    async def go(c):
        await c.post("/v1/predict", content=portrait)
        await c.post("/v1/predict", content=b"nope")
        names = ("/v1/model", "/healthz", "/metrics", "/", "/docs", "/openapi.json")
        out = {n: await c.get(n) for n in names}
        docs_js = re.search(r'src="(/docs-static/[^"]+\.js)"', out["/docs"].text)
        out["js"] = await c.get(docs_js.group(1)) if docs_js else None
        return out

    r = serve(app, go)
    model = r["/v1/model"].json()
    assert model["name"] == "poster_v1_tiny" and model["classes"] == CLASSES and model["num_classes"] == 7
    assert model["preprocessing"]["input_size"] == SIZE
    assert model["preprocessing"]["crop_geometry"]["name"] == "rafdb"
    assert model["limits"]["max_batch"] == 8 and model["limits"]["max_body_bytes"] == 10 * 2**20
    assert model["detector"] == "yunet" and model["device"] == "cpu"
    assert model["metrics"] == {"test": {"accuracy": 0.5, "f1_contempt": None}} and model["temperature"] == 1.5
    assert model["operating_point"] == "default"
    assert "NaN" not in r["/v1/model"].text

    assert r["/healthz"].json() == {"status": "ok", "model": "poster_v1_tiny", "inflight": 0}

    metrics = r["/metrics"]
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = metrics.text
    assert 'poster_fer_http_requests_total{route="/v1/predict",method="POST",status="200"} 1' in text
    assert 'poster_fer_http_requests_total{route="/v1/predict",method="POST",status="400"} 1' in text
    assert 'poster_fer_errors_total{kind="not_an_image"} 1' in text
    assert "poster_fer_faces_total 1" in text and "poster_fer_images_total 1" in text
    assert "poster_fer_predict_seconds_count 1" in text and "poster_fer_batch_faces_count 1" in text
    buckets = [int(v) for v in re.findall(r'poster_fer_predict_seconds_bucket\{le="[^"]+"\} (\d+)', text)]
    assert buckets == sorted(buckets) and buckets[-1] == 1
    assert re.search(r"^process_resident_memory_bytes \d+$", text, re.M)
    for line in text.splitlines():  # exposition format: comments or `name{labels} value`
        assert line.startswith("# ") or re.fullmatch(r'[a-z_]+(\{[^}]*\})? [0-9.e+-]+', line), line

    page = r["/"]
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    html = page.text
    for needed in ('id="file"', 'id="cam"', 'id="faces"', 'id="overlay"', "/v1/predict", "getUserMedia"):
        assert needed in html
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing loaded from elsewhere: works offline

    assert r["/docs"].status_code == 200 and "/openapi.json" in r["/docs"].text
    assert "cdn" not in r["/docs"].text.lower() and r["js"] is not None and r["js"].status_code == 200
    spec = r["/openapi.json"].json()
    op = spec["paths"]["/v1/predict"]["post"]
    assert {p["name"] for p in op["parameters"]} == {"max_faces", "detect"}
    assert op["parameters"][0]["schema"] == {"type": "integer", "minimum": 1, "maximum": 64}
    assert "multipart/form-data" in op["requestBody"]["content"] and "image/jpeg" in op["requestBody"]["content"]
    assert {"200", "400", "413", "415", "422", "503"} <= set(op["responses"])
    assert {"/v1/model", "/healthz", "/metrics"} <= set(spec["paths"])


def test_api_key_on(rec, portrait):
    app = create_app(rec, ServeSettings(api_key="s3cret-key"))

    async def go(c):
        return {
            "none": await c.get("/v1/model"),
            "wrong": await c.get("/v1/model", headers={"X-API-Key": "s3cret-kez"}),
            "prefix": await c.get("/v1/model", headers={"Authorization": "Bearer s3cret"}),
            "basic": await c.get("/v1/model", headers={"Authorization": "Basic czNjcmV0LWtleQ=="}),
            "header": await c.get("/v1/model", headers={"X-API-Key": "s3cret-key"}),
            "bearer": await c.get("/v1/model", headers={"Authorization": "Bearer s3cret-key"}),
            "predict none": await c.post("/v1/predict", content=portrait),
            "predict bad option": await c.post("/v1/predict?max_faces=0", content=portrait),
            "predict ok": await c.post("/v1/predict", content=portrait, headers={"X-API-Key": "s3cret-key"}),
            "health": await c.get("/healthz"),
            "page": await c.get("/"),
            "metrics": await c.get("/metrics"),
        }

    r = serve(app, go)
    for name in ("none", "wrong", "prefix", "basic", "predict none", "predict bad option"):
        assert error_of(r[name])[:2] == (401, "unauthorized"), name
        assert r[name].headers["www-authenticate"] == "Bearer"
    for name in ("header", "bearer", "predict ok", "health", "page", "metrics"):
        assert r[name].status_code == 200, name
    assert "s3cret" not in r["metrics"].text and "s3cret" not in r["page"].text
    assert len(r["predict ok"].json()["faces"]) == 1


def test_api_key_off_and_cors(rec):
    plain = create_app(rec)
    cors = create_app(rec, ServeSettings(cors_origins=("https://app.example",)))
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"}

    async def go_plain(c):
        return (await c.get("/v1/model", headers={"Origin": "https://evil.example"}),
                await c.options("/v1/predict", headers=preflight))

    async def go_cors(c):
        return (await c.get("/v1/model", headers={"Origin": "https://app.example"}),
                await c.get("/v1/model", headers={"Origin": "https://evil.example"}),
                await c.options("/v1/predict", headers=preflight))

    model, pre = serve(plain, go_plain)
    assert model.status_code == 200 and "access-control-allow-origin" not in model.headers
    assert "access-control-allow-origin" not in pre.headers
    allowed, other, pre = serve(cors, go_cors)
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in other.headers
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "https://app.example"


# -- concurrency -------------------------------------------------------------------------------------------


def test_full_queue_answers_503_with_retry_after():
    backend = FakeBackend(delay=0.5)
    app = create_app(Recognizer(backend, detector=None), ServeSettings(max_queue=2))
    service = app.state.service
    crop = crop_png()

    async def go(c):
        first = [asyncio.create_task(c.post("/v1/predict?detect=false", content=crop)) for _ in range(2)]
        await wait_for(lambda: service.inflight == 2)
        refused = await c.post("/v1/predict?detect=false", content=crop)
        done = await asyncio.gather(*first)
        after = await c.post("/v1/predict?detect=false", content=crop)
        return refused, done, after, await c.get("/metrics")

    refused, done, after, metrics = serve(app, go)
    status, kind, message = error_of(refused)
    assert (status, kind) == (503, "queue_full") and "busy" in message
    assert int(refused.headers["retry-after"]) >= 1
    assert [r.status_code for r in done] == [200, 200] and after.status_code == 200
    assert 'poster_fer_errors_total{kind="queue_full"} 1' in metrics.text


def test_concurrent_requests_share_one_forward_pass():
    gate = threading.Event()
    backend = FakeBackend(gate=gate)
    app = create_app(Recognizer(backend, detector=None), ServeSettings(max_batch=16, max_queue=16))
    service = app.state.service

    async def go(c):
        blocker = asyncio.create_task(c.post("/v1/predict?detect=false", content=crop_png(0)))
        await wait_for(backend.entered.is_set)  # the model is busy with the first request...
        rest = [asyncio.create_task(c.post("/v1/predict?detect=false", content=crop_png(40 * i))) for i in range(4)]
        await wait_for(lambda: service.batcher.queued_requests == 4)  # ...while four more queue up
        gate.set()
        return await blocker, await asyncio.gather(*rest), await c.get("/metrics")

    blocker, rest, metrics = serve(app, go)
    assert backend.calls == [1, 4]  # the four waiting requests went through the model together
    assert blocker.json()["batch"] == {"faces": 1, "requests": 1}
    labels = []
    for r in rest:
        body = r.json()
        assert r.status_code == 200 and body["batch"] == {"faces": 4, "requests": 4}
        labels.append(body["faces"][0]["label"])
    assert sorted(labels) == sorted(CLASSES[:4])  # each request got its own row of the batch back
    assert "poster_fer_batch_requests_count 2" in metrics.text and "poster_fer_batch_requests_sum 5" in metrics.text
    assert "poster_fer_batch_faces_sum 5" in metrics.text


def test_several_workers_each_with_a_detector(rec, portrait):
    from poster_fer.faces import build_detector

    app = create_app(rec, ServeSettings(workers=3), detectors=[build_detector("yunet"), build_detector("yunet")])

    async def go(c):
        return await asyncio.gather(*(c.post("/v1/predict", content=portrait) for _ in range(9)))

    responses = serve(app, go)
    boxes = {tuple(r.json()["faces"][0]["box"]) for r in responses}
    labels = {r.json()["faces"][0]["label"] for r in responses}
    assert all(r.status_code == 200 for r in responses) and len(boxes) == 1 and len(labels) == 1


def test_batcher_waits_only_for_requests_on_their_way():
    from poster_fer_apps.serve.batching import MicroBatcher

    calls: list[int] = []

    def classify(crops):
        calls.append(len(crops))
        return np.eye(len(crops), 3, dtype=np.float32)

    batcher = MicroBatcher(classify, max_batch=8, max_wait_s=5.0)
    batcher.start()
    try:
        crop = [np.zeros((4, 4, 3), np.uint8)]
        t = time.perf_counter()
        batcher.submit(crop, expected=False).result(timeout=10)  # nobody else is coming: no wait
        assert time.perf_counter() - t < 1.0 and calls == [1]

        batcher.expect()
        batcher.expect()  # two requests announced (being decoded and detected)...
        first = batcher.submit(crop)
        time.sleep(0.2)
        assert not first.done()  # ...so the batch waits for the second
        second = batcher.submit(crop)
        assert first.result(timeout=10).batch_requests == 2 and second.result(timeout=10).batch_requests == 2
        assert calls == [1, 2]

        batcher.expect()
        batcher.expect()
        third = batcher.submit(crop)
        batcher.cancel()  # the other one found no face: stop waiting for it
        assert third.result(timeout=2).batch_requests == 1
    finally:
        batcher.stop()
    assert not batcher.running


def test_a_failing_model_is_contained():
    backend = FakeBackend(fail=True)
    app = create_app(Recognizer(backend, detector=None))

    async def go(c):
        failed = await c.post("/v1/predict?detect=false", content=crop_png())
        backend.fail = False
        return failed, await c.post("/v1/predict?detect=false", content=crop_png()), await c.get("/healthz")

    failed, ok, health = serve(app, go)
    assert error_of(failed)[:2] == (500, "inference_failed") and "broke" in error_of(failed)[2]
    assert ok.status_code == 200 and health.json()["status"] == "ok"


def test_no_detector_server_refuses_detection():
    app = create_app(Recognizer(FakeBackend(), detector=None))

    async def go(c):
        return await c.post("/v1/predict", content=crop_png())

    status, kind, message = error_of(serve(app, go))
    assert (status, kind) == (422, "bad_option") and "detect=false" in message


def test_settings_are_validated():
    for bad in ({"max_queue": 0}, {"max_body_bytes": -1}, {"workers": 0}, {"max_wait_ms": -1}, {"api_key": " "},
                {"max_faces": True}):
        with pytest.raises(ValueError):
            ServeSettings(**bad)


# -- the command line --------------------------------------------------------------------------------------


def test_cli_refuses_bad_setup(ckpt, tmp_path, capsys):
    assert main(["serve", "--weights", str(tmp_path / "missing"), "--port", "0"]) == 2
    assert "missing" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:  # a usage error, before any model loads
        main(["serve", "--weights", ckpt, "--max-queue", "0"])
    assert info.value.code == 2 and "--max-queue" in capsys.readouterr().err


def start_server(*args: str) -> tuple[subprocess.Popen, str]:
    """``poster-fer serve --port 0 ARGS`` in a subprocess; returns it and its base URL once it listens."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "poster_fer_apps.cli", "serve", "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)

    threading.Thread(target=read, daemon=True).start()
    end = time.monotonic() + 120
    while time.monotonic() < end and proc.poll() is None:
        found = next((m for line in lines if (m := re.search(r"http://[\d.:\[\]]+/", line))), None)
        if found:
            return proc, found.group(0).rstrip("/")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"server did not start: {''.join(lines)} {proc.stderr.read()}")


def stop_server(proc: subprocess.Popen, sig: int = signal.SIGINT) -> tuple[int, str]:
    """Stop the server as Ctrl-C (or ``sig``) would; returns its exit status and stderr."""
    proc.send_signal(sig)
    try:
        code = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    return code, proc.stderr.read()


@pytest.mark.slow
def test_cli_server_on_a_free_loopback_port(ckpt, portrait):
    proc, url = start_server("--weights", ckpt, "--api-key", "k3y")
    try:
        assert url.startswith("http://127.0.0.1:")  # loopback unless told otherwise
        with httpx.Client(base_url=url, timeout=30) as c:
            end = time.monotonic() + 60
            while True:
                try:
                    health = c.get("/healthz")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < end
                    time.sleep(0.1)
            assert health.status_code == 200 and health.json()["model"] == "poster_v1_tiny"
            assert c.post("/v1/predict", content=portrait).status_code == 401
            r = c.post("/v1/predict", files={"file": ("p.jpg", portrait, "image/jpeg")}, headers={"X-API-Key": "k3y"})
            assert r.status_code == 200 and len(r.json()["faces"]) == 1
            assert c.get("/").status_code == 200
            big = c.post("/v1/predict", content=b"\xff\xd8\xff" + bytes(11 * 2**20), headers={"X-API-Key": "k3y"})
            assert error_of(big)[:2] == (413, "body_too_large")
            assert c.get("/healthz").status_code == 200
    finally:
        code, err = stop_server(proc)
    assert code == 0, err
    assert "stopped" in err


def test_cli_without_the_serve_extra(ckpt):
    script = ("import sys\n"
              "sys.modules['fastapi'] = None  # as if the serve extra were not installed\n"
              "from poster_fer_apps.cli import build_parser, main\n"
              "print(build_parser().format_help())\n"
              "print('status', main(['serve', '--weights', sys.argv[1], '--port', '0']))\n")
    done = subprocess.run([sys.executable, "-c", script, ckpt], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "predict" in done.stdout and "serve" in done.stdout  # every command is still offered
    assert "status 2" in done.stdout and "pip install 'poster-fer[serve]'" in done.stderr


def test_cli_help_lists_serve(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert "--api-key" in out and "127.0.0.1" in out


def test_runner_listens_and_names_a_taken_port():
    from poster_fer_apps.serve.runner import is_loopback, listen

    sock = listen("127.0.0.1", 0)
    try:
        port = sock.getsockname()[1]
        assert port > 0
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
            listen("127.0.0.1", port).close()
    finally:
        sock.close()
    with pytest.raises(OSError, match="port must be 0..65535"):
        listen("127.0.0.1", 70000)
    assert is_loopback("localhost") and is_loopback("::1") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")


def test_openapi_has_no_duplicate_operation_ids_and_healthz_answers_head():
    """Issue 39 item 9: one route for GET and HEAD gave both one operation id (FastAPI warned on /docs)."""
    import warnings

    from fastapi.testclient import TestClient

    from poster_fer_apps.serve.app import create_app

    app = create_app(Recognizer(backend=None))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spec = app.openapi()
    ids = [op["operationId"] for path in spec["paths"].values() for op in path.values()]
    assert len(ids) == len(set(ids))
    with TestClient(app) as client:
        assert client.head("/healthz").status_code == 200 and client.get("/healthz").json()["status"] == "ok"
        # issue 39 item 9: the shipped model's name keeps its tag in the answers and the Recognizer's repr
        assert client.get("/healthz").json()["model"] == "poster_v1_mfn64_image.ferplus"
    assert "model='poster_v1_mfn64_image.ferplus'" in repr(Recognizer(backend=None))
