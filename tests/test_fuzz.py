"""Seeded fuzzing of the three places untrusted bytes enter: image headers, checkpoint metadata, multipart bodies.

The rule checked: only the documented error types come out (``ApiError`` from uploads, ``CheckpointError`` from
metadata), and the server still answers ``/healthz`` after every request. A seeded generator (not hypothesis:
no extra dependency, and the same cases on every run) keeps each test to a few seconds; a failure prints the
seed and case number, which reproduce it exactly.
"""

from __future__ import annotations

import asyncio
import copy
import io
import json
import random

import httpx
import numpy as np
import pytest
from PIL import Image

from poster_fer.inference import Recognizer
from poster_fer.weights import CheckpointError
from poster_fer.weights.checks import check_metadata
from poster_fer_apps.serve import ServeSettings, create_app
from poster_fer_apps.serve.errors import ApiError
from poster_fer_apps.serve.uploads import decode_image, parse_body

SEED = 20261202
CLASSES = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear"]


def _images() -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for fmt, mode in (("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "I;16"), ("JPEG", "RGB"), ("BMP", "RGB"),
                      ("WEBP", "RGB"), ("PNG", "P"), ("PNG", "L")):
        arr = rng.integers(0, 256, (20, 24, 4 if mode == "RGBA" else 3), dtype=np.uint8)
        im = Image.fromarray(arr[..., :4] if mode == "RGBA" else arr[..., :3])
        if mode in ("P", "L", "I;16"):
            im = im.convert("L" if mode != "P" else "P")
            if mode == "I;16":
                im = Image.fromarray(np.asarray(im).astype(np.uint16) * 257)
        buf = io.BytesIO()
        im.save(buf, format=fmt)
        out.append(buf.getvalue())
    return out


def _mutate(data: bytes, r: random.Random) -> bytes:
    b = bytearray(data)
    kind = r.randrange(5)
    if kind == 0:  # flip bytes in the header
        for _ in range(r.randint(1, 6)):
            b[r.randrange(min(len(b), 64))] = r.randrange(256)
    elif kind == 1:  # flip bytes anywhere
        for _ in range(r.randint(1, 20)):
            b[r.randrange(len(b))] = r.randrange(256)
    elif kind == 2:  # truncate
        b = b[: r.randrange(1, len(b))]
    elif kind == 3:  # huge or zero dimensions written into the first 32 bytes
        pos = r.randrange(8, 28)
        b[pos:pos + 4] = r.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\x00\x01", b"\x00\x01\x00\x00"])
    else:  # splice two files
        b = b[: len(b) // 2] + bytes(r.randrange(256) for _ in range(r.randint(0, 40)))
    return bytes(b)


def test_fuzzed_images_only_raise_api_errors():
    r = random.Random(SEED)
    seeds = _images()
    outcomes = {"ok": 0, "refused": 0}
    for case in range(600):
        data = _mutate(r.choice(seeds), r)
        try:
            img = decode_image(data, max_pixels=4_000_000, max_bytes=16 * 2**20)
        except ApiError as err:
            assert 400 <= err.status < 500, (SEED, case, err.status)
            outcomes["refused"] += 1
            continue
        except Exception as err:  # noqa: BLE001 - the point of the test
            pytest.fail(f"seed {SEED} case {case}: {type(err).__name__}: {err}")
        assert img.rgb.dtype == np.uint8 and img.rgb.ndim == 3 and img.rgb.shape[2] == 3
        outcomes["ok"] += 1
    assert outcomes["ok"] > 20 and outcomes["refused"] > 100  # both paths really exercised


GOOD_META = {"format": "poster-fer/1", "model": "poster_v1_tiny", "family": "poster_v1",
             "config": {"num_classes": 7, "input_size": 56}, "classes": CLASSES,
             "preprocessing": {"input_size": 56, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
             "temperature": 1.5, "logit_bias": [0.0] * 7}
_VALUES = [None, 0, -1, 1e308, float("nan"), float("inf"), "", "x" * 300, [], {}, [1, 2], {"a": 1}, True, 3.5,
           ["a"] * 7, [[1, 2]] * 5, -(10**30)]


def _mutate_meta(r: random.Random) -> object:
    meta = copy.deepcopy(GOOD_META)
    if r.random() < 0.05:
        return r.choice(_VALUES)
    for _ in range(r.randint(1, 3)):
        target = meta
        nested = [v for k, v in meta.items() if k in ("config", "preprocessing") and isinstance(v, dict)]
        if nested and r.random() < 0.5:
            target = r.choice(nested)
        keys = list(target) + ["crop_geometry", "extra"]
        key = r.choice(keys)
        if r.random() < 0.15:
            target.pop(key, None)
        else:
            target[key] = r.choice(_VALUES)
    return meta


def test_fuzzed_metadata_only_raises_checkpoint_errors():
    r = random.Random(SEED)
    refused = 0
    for case in range(1500):
        meta = _mutate_meta(r)
        try:
            check_metadata(json.loads(json.dumps(meta)), "fuzz.json", "poster-fer/1")
        except CheckpointError as err:
            assert "fuzz.json" in str(err)
            refused += 1
        except Exception as err:  # noqa: BLE001
            pytest.fail(f"seed {SEED} case {case}: {type(err).__name__}: {err} for {meta!r}"[:600])
    assert refused > 500


def _multipart(r: random.Random, image: bytes) -> tuple[bytes, str]:
    boundary = r.choice(["b0undary", "x" * r.randint(1, 90), "", "a b", "\u00e9t\u00e9"])
    parts = []
    for _ in range(r.randint(0, 10)):
        name = r.choice(["file", "max_faces", "detect", "other", "", "file\"; filename=\"x"])
        headers = r.choice([f'Content-Disposition: form-data; name="{name}"',
                            f'Content-Disposition: form-data; name="{name}"; filename="a.png"', "Content-Type: x", ""])
        value = image if name.startswith("file") else r.choice([b"3", b"true", b"x" * 2000, b"-1", b""])
        parts.append(f"--{boundary}\r\n{headers}\r\n\r\n".encode("utf-8", "replace") + value + b"\r\n")
    body = b"".join(parts) + (f"--{boundary}--\r\n".encode("utf-8", "replace") if r.random() < 0.8 else b"")
    if r.random() < 0.3 and body:
        cut = r.randrange(len(body))
        body = body[:cut] + bytes([r.randrange(256)]) + body[cut + 1:]
    return body, f"multipart/form-data; boundary={boundary}" if r.random() < 0.9 else "multipart/form-data"


def test_fuzzed_multipart_only_raises_api_errors():
    r = random.Random(SEED)
    image = _images()[0]
    for case in range(800):
        body, ctype = _multipart(r, image)
        try:
            parse_body(body, ctype)
        except ApiError as err:
            assert 400 <= err.status < 500, (SEED, case)
        except Exception as err:  # noqa: BLE001
            pytest.fail(f"seed {SEED} case {case}: {type(err).__name__}: {err}")


class _Fake:
    def __init__(self) -> None:
        self.meta = {"model": "fake", "classes": CLASSES, "preprocessing": {"input_size": 8}}
        self.device = "cpu"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.zeros((len(batch), len(CLASSES)), np.float32)


def test_server_answers_healthz_after_every_fuzzed_request():
    app = create_app(Recognizer(_Fake(), detector=None), ServeSettings(max_pixels=4_000_000))
    r = random.Random(SEED)
    seeds = _images()

    async def go(c: httpx.AsyncClient) -> list[int]:
        statuses = []
        for case in range(120):
            if case % 2:
                body, ctype = _multipart(r, _mutate(r.choice(seeds), r))
            else:
                body, ctype = _mutate(r.choice(seeds), r), r.choice(["image/png", "application/octet-stream", ""])
            resp = await c.post("/v1/predict?detect=false", content=body,
                                headers={"Content-Type": ctype.encode("utf-8")})
            assert resp.status_code < 500, (SEED, case, resp.text)
            assert set(resp.json()) >= ({"error"} if resp.status_code >= 400 else {"faces"})
            statuses.append(resp.status_code)
            assert (await c.get("/healthz")).status_code == 200, (SEED, case)
        return statuses

    async def run() -> list[int]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=30) as client:
                return await go(client)

    statuses = asyncio.run(run())
    assert 200 in statuses and any(s >= 400 for s in statuses)
