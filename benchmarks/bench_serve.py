"""Load test of ``poster-fer serve``: a real server on loopback, N concurrent clients, bounded in count and time.

Starts ``poster-fer serve`` (the shipped default model, or ``--weights``) on a free 127.0.0.1 port and drives it
with 1, 4 and 16 concurrent keep-alive clients posting two JPEGs: the one-face portrait (the astronaut, as in
``bench_photo_pipeline.py``) and the 16-face 1024 px photo made from it by ``bench_photo_pipeline.group_image``.
Per level it records requests/s, faces/s, p50/p95/p99 latency, errors and the server's own batch sizes (from
``/metrics``); over the run, the server's resident memory before and after 2,000 requests. Writes JSON with three
summary keys up front:

* ``scaling_16_vs_1``: requests/s at 16 clients over 1 client, one-face portrait (target >= 2: batching works);
* ``p99_s_16``: p99 latency in seconds at 16 clients, portrait (target <= 1 s);
* ``errors``: failed requests over the whole run (target 0); plus ``rss_growth_mb`` (target <= 50).

The clients are a minimal asyncio HTTP/1.1 client (raw sockets, keep-alive), so the load generator costs little
CPU next to the server on a small machine; it still shares the machine's cores, which the JSON says.

    python benchmarks/bench_serve.py [--weights CKPT]
        [--out benchmarks/results/speed/serve/cpu-poster_v1_mfn64_image.ferplus.json]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _photo import group_image  # noqa: E402  (the 16-face photo, made the same way)

from poster_fer.assets import shared_path  # noqa: E402
from poster_fer.faces import load_image  # noqa: E402
from poster_fer.provenance import cpu_flags, cpu_model, git_state, load_average  # noqa: E402
from poster_fer.samples import sample_path  # noqa: E402
from poster_fer_apps.serve.metrics import resident_memory_bytes  # noqa: E402

TARGETS = {"scaling_16_vs_1": 2.0, "p99_s_16": 1.0, "errors": 0, "rss_growth_mb": 50.0}


# -- server -------------------------------------------------------------------------------------------------


def start_server(extra: list[str]) -> tuple[subprocess.Popen, str, int]:
    """``poster-fer serve --port 0`` in a subprocess; returns it, its host and port once it listens."""
    cmd = [sys.executable, "-m", "poster_fer_apps.cli", "serve", "--port", "0", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    end = time.monotonic() + 180
    while time.monotonic() < end and proc.poll() is None:
        for line in list(lines):
            if m := re.search(r"http://([\d.]+):(\d+)/", line):
                return proc, m.group(1), int(m.group(2))
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"the server did not start: {proc.stderr.read()}")


def stop_server(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


# -- a small HTTP/1.1 client ----------------------------------------------------------------------------


class Connection:
    """One keep-alive connection; ``request`` returns (status, body bytes)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"", content_type: str = "") -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Length: {len(body)}\r\n"
        if content_type:
            head += f"Content-Type: {content_type}\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        await self.writer.drain()
        assert self.reader is not None
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("server closed the connection")
        status = int(status_line.split()[1])
        length, close = 0, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and value.strip().lower() == "close":
                close = True
        data = await self.reader.readexactly(length)
        if close:
            await self.close()
        return status, data

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
        self.reader = self.writer = None


async def run_level(host: str, port: int, image: bytes, clients: int, requests: int, max_seconds: float,
                    expect_faces: int) -> dict[str, Any]:
    """``requests`` posts spread over ``clients`` concurrent connections (stopping early at ``max_seconds``)."""
    latencies: list[float] = []
    errors: list[str] = []
    faces = 0
    remaining = requests
    deadline = time.perf_counter() + max_seconds

    async def client() -> None:
        nonlocal remaining, faces
        conn = Connection(host, port)
        try:
            while remaining > 0 and time.perf_counter() < deadline:
                remaining -= 1
                t = time.perf_counter()
                try:
                    status, body = await conn.request("POST", "/v1/predict", image, "image/jpeg")
                except (OSError, ConnectionError, asyncio.IncompleteReadError) as err:
                    errors.append(f"{type(err).__name__}: {err}")
                    await conn.close()
                    continue
                latencies.append(time.perf_counter() - t)
                if status != 200:
                    errors.append(f"HTTP {status}: {body[:200]!r}")
                    continue
                n = len(json.loads(body)["faces"])
                if n != expect_faces:
                    errors.append(f"{n} faces, expected {expect_faces}")
                faces += n
        finally:
            await conn.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - start
    lat = np.asarray(latencies) if latencies else np.zeros(1)
    done = len(latencies)
    return {
        "clients": clients, "requests": done, "seconds": round(wall, 3),
        "requests_per_s": round(done / wall, 2), "faces_per_s": round(faces / wall, 2),
        "latency_s": {"mean": round(float(lat.mean()), 4), "p50": round(float(np.percentile(lat, 50)), 4),
                      "p95": round(float(np.percentile(lat, 95)), 4), "p99": round(float(np.percentile(lat, 99)), 4),
                      "max": round(float(lat.max()), 4)},
        "errors": len(errors), "error_examples": sorted(set(errors))[:5],
        "stopped_by_time_limit": done < requests and not errors,
    }


def scrape(host: str, port: int) -> dict[str, float]:
    """The server's counters that a level's batching is read from."""
    async def get() -> bytes:
        conn = Connection(host, port)
        try:
            return (await conn.request("GET", "/metrics"))[1]
        finally:
            await conn.close()

    text = asyncio.run(get()).decode()
    out = {}
    for key in ("batch_faces_sum", "batch_faces_count", "batch_requests_sum", "batch_requests_count",
                "forward_seconds_sum", "images_total", "faces_total"):
        m = re.search(rf"^poster_fer_{key} ([0-9.e+-]+)$", text, re.M)
        out[key] = float(m.group(1)) if m else 0.0
    return out


def batching(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    d = {k: after[k] - before[k] for k in after}
    passes = d["batch_faces_count"] or 1
    return {"forward_passes": int(d["batch_faces_count"]),
            "mean_faces_per_pass": round(d["batch_faces_sum"] / passes, 2),
            "mean_requests_per_pass": round(d["batch_requests_sum"] / passes, 2),
            "forward_s_per_face": round(d["forward_seconds_sum"] / max(1.0, d["batch_faces_sum"]), 5)}


def run_provenance(weights: str | None, server_args: list[str], load_before: Any) -> dict[str, Any]:
    """What a serve benchmark's record says about how and where it ran (shared with bench_serve_attack.py)."""
    from poster_fer.constants import DEFAULT_MODEL

    return {"command": " ".join([Path(sys.executable).name, *sys.argv]),
            "server_command": f"poster-fer serve --port 0 {' '.join(server_args)}".strip(),
            "model": weights or f"{DEFAULT_MODEL} (the shipped default)", "git": git_state(),
            "machine": {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "cores": os.cpu_count(),
                        "python": sys.version.split()[0], "load_average_before": load_before,
                        "load_average_after": load_average()}}


def jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=None, help="checkpoint to serve (default: the shipped default model)")
    p.add_argument("--image", default=None, help="one-face portrait (default: the shared astronaut, else the "
                   "package's sample portrait)")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--inputs", nargs="+", default=["portrait", "group16"], choices=("portrait", "group16"),
                   help="which photos to run levels with (the portrait is always used for the RSS top-up)")
    p.add_argument("--portrait-requests", type=int, default=240, help="requests per level, portrait")
    p.add_argument("--group-requests", type=int, default=64, help="requests per level, 16-face photo")
    p.add_argument("--level-seconds", type=float, default=30.0, help="time limit per level")
    p.add_argument("--rss-requests", type=int, default=2000, help="requests between the two RSS readings")
    p.add_argument("--server-arg", action="append", default=[], help="extra `poster-fer serve` argument "
                   "(repeatable, e.g. --server-arg=--max-wait-ms=5)")
    p.add_argument("--note", default="")
    p.add_argument("--out", type=Path, default=(REPO / "benchmarks/results/speed/serve"
                                                   / "cpu-poster_v1_mfn64_image.ferplus.json"))
    args = p.parse_args(argv)

    image_path = Path(args.image) if args.image else shared_path("samples", "astronaut.png")
    if not image_path.is_file():
        image_path = sample_path()
    portrait_rgb = load_image(image_path)
    inputs = {"portrait": (jpeg(portrait_rgb), 1), "group16": (jpeg(group_image(portrait_rgb)), 16)}
    server_args = (["--weights", args.weights] if args.weights else []) + args.server_arg
    t_start = time.time()
    load_before = load_average()
    proc, host, port = start_server(server_args)
    total_requests = 0
    try:
        # warm up: first requests pay lazy initialisation (allocator pools, OpenCV/ONNX buffers)
        for name, (data, n) in inputs.items():
            warm = asyncio.run(run_level(host, port, data, 4, 16, 60, n))
            total_requests += warm["requests"]
            if warm["errors"]:
                raise SystemExit(f"warm-up failed on {name}: {warm['error_examples']}")
        rss_before = resident_memory_bytes(proc.pid)
        counted_from = total_requests
        levels: dict[str, dict[str, Any]] = {}
        for name, (data, n) in inputs.items():
            if name not in args.inputs:
                continue
            for clients in args.clients:
                count = args.portrait_requests if name == "portrait" else args.group_requests
                before = scrape(host, port)
                res = asyncio.run(run_level(host, port, data, clients, count, args.level_seconds, n))
                res["server_batching"] = batching(before, scrape(host, port))
                total_requests += res["requests"]
                levels[f"{name}_c{clients}"] = res
                print(f"{name:8s} {clients:2d} clients: {res['requests_per_s']:7.2f} req/s "
                      f"{res['faces_per_s']:7.1f} faces/s p50 {res['latency_s']['p50']:.3f} "
                      f"p99 {res['latency_s']['p99']:.3f} s errors {res['errors']} "
                      f"faces/pass {res['server_batching']['mean_faces_per_pass']}", file=sys.stderr)
        # top up to --rss-requests requests since the first RSS reading (portrait, 16 clients)
        top_up = max(0, args.rss_requests - (total_requests - counted_from))
        soak = asyncio.run(run_level(host, port, inputs["portrait"][0], 16, top_up, 600, 1)) if top_up else None
        if soak:
            total_requests += soak["requests"]
        rss_after = resident_memory_bytes(proc.pid)
    finally:
        code = stop_server(proc)
    rss_requests = total_requests - counted_from
    errors = sum(v["errors"] for v in levels.values()) + (soak["errors"] if soak else 0)
    one, sixteen = levels.get("portrait_c1"), levels.get("portrait_c16")
    scaling = round(sixteen["requests_per_s"] / one["requests_per_s"], 2) if one and sixteen else None
    p99_16 = sixteen["latency_s"]["p99"] if sixteen else None
    growth = round((rss_after - rss_before) / 2**20, 1) if rss_before and rss_after else None
    met = {"scaling_16_vs_1": scaling is not None and scaling >= TARGETS["scaling_16_vs_1"],
           "p99_s_16": p99_16 is not None and p99_16 <= TARGETS["p99_s_16"],
           "errors": errors == TARGETS["errors"],
           "rss_growth_mb": growth is not None and growth <= TARGETS["rss_growth_mb"]}
    report = {
        "scaling_16_vs_1": scaling,
        "p99_s_16": p99_16,
        "errors": errors,
        "rss_growth_mb": growth,
        "targets": TARGETS,
        "targets_met": met,
        "benchmark": "poster-fer serve under load: concurrent keep-alive clients on loopback posting JPEGs to "
                     "/v1/predict (detect + align + micro-batched classify)",
        **run_provenance(args.weights, server_args, load_before),
        "inputs": {"portrait": {"source": str(image_path), "shape": list(portrait_rgb.shape),
                                "jpeg_bytes": len(inputs["portrait"][0]), "faces": 1},
                   "group16": {"source": "bench_photo_pipeline.group_image(portrait)", "shape": [1024, 1024, 3],
                               "jpeg_bytes": len(inputs["group16"][0]), "faces": 16}},
        "levels": levels,
        "rss": {"before_mb": round(rss_before / 2**20, 1) if rss_before else None,
                "after_mb": round(rss_after / 2**20, 1) if rss_after else None,
                "requests_between": rss_requests, "growth_mb": growth},
        "soak": soak,
        "server_exit_status": code,
        "wall_time_s": round(time.time() - t_start, 1),
        "notes": "The load generator runs on the same machine as the server and shares its cores. Latency is "
                 "measured by the client from sending the request to the last byte of the answer. "
                 "server_batching comes from the server's /metrics counters over each level.",
        "note": args.note,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: report[k] for k in ("scaling_16_vs_1", "p99_s_16", "errors", "rss_growth_mb",
                                             "targets_met")}), file=sys.stderr)
    print(f"wrote {args.out}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
