"""``poster-fer serve`` under attack: well-behaved clients with stalled uploads and idle connections beside them.

One server (the shipped default model unless ``--weights``) on a free loopback port. Levels, in one run:

1. ``c1`` and ``c16``: 1 and 16 well-behaved keep-alive clients posting the one-face portrait (no attack);
2. ``c16_attack``: the same 16 clients while an attacker holds 32 stalled uploads (request head sent with
   ``Content-Length: 5000``, body never finished) and 200 idle connections (connect, send nothing), and
   reopens each one the moment the server closes or answers it. The attacker connects from 127.0.0.2 and
   127.0.0.3 (the whole 127/8 block is loopback on Linux) so the per-client upload cap applies to it alone;
3. memory: the server's resident memory (VmRSS) before, its peak (VmHWM) and its RSS after 2,000 requests that
   include a 49-megapixel 16-bit RGBA PNG (7000x7000, a few hundred KiB on the wire).

Targets (issue 24): under attack the good clients keep >= 80% of their requests/s, p99 <= 1.5 s and 0 errors;
peak server RSS <= 1.5 GB, and RSS back within 100 MB of the baseline after; 16 clients vs 1 >= 2.0x.

    python benchmarks/bench_serve_attack.py
        [--out benchmarks/results/speed/serve_attack/cpu-poster_v1_mfn64_image.ferplus.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_serve import jpeg, run_level, run_provenance, start_server, stop_server  # noqa: E402

from poster_fer.assets import shared_path  # noqa: E402
from poster_fer.faces import load_image  # noqa: E402
from poster_fer.provenance import load_average  # noqa: E402
from poster_fer.samples import sample_path  # noqa: E402

TARGETS = {"attack_throughput_ratio": 0.8, "attack_p99_s": 1.5, "attack_errors": 0, "peak_rss_mb": 1536.0,
           "rss_back_within_mb": 100.0, "scaling_16_vs_1": 2.0}


def proc_status(pid: int, field: str) -> float | None:
    """A /proc/PID/status memory field in MiB (VmRSS, VmHWM)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


class Attacker:
    """Holds ``stalled`` half-sent uploads and ``idle`` silent connections, reopening each as soon as it ends."""

    def __init__(self, host: str, port: int, stalled: int, idle: int) -> None:
        self.host, self.port = host, port
        self.stalled, self.idle = stalled, idle
        self.opened = {"stalled": 0, "idle": 0}
        self.answers: dict[str, int] = {}
        self._stop = asyncio.Event()
        self._held: dict[str, int] = {"stalled": 0, "idle": 0}

    async def _one(self, kind: str, source: str) -> None:
        head = (f"POST /v1/predict HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: image/png\r\n"
                f"Content-Length: 5000\r\n\r\n").encode() + b"\x89PNG\r\n\x1a\n" + bytes(100)
        while not self._stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port, local_addr=(source, 0))
            except OSError:
                await asyncio.sleep(0.05)
                continue
            self.opened[kind] += 1
            self._held[kind] += 1
            try:
                if kind == "stalled":
                    writer.write(head)
                    await writer.drain()
                stop = asyncio.ensure_future(self._stop.wait())
                read = asyncio.ensure_future(reader.read(200))
                done, _ = await asyncio.wait({stop, read}, return_when=asyncio.FIRST_COMPLETED)
                if read in done and not read.cancelled():
                    line = read.result().split(b"\r\n", 1)[0].decode("latin-1")
                    key = line.split(" ")[1] if line.count(" ") >= 1 else "closed"
                    self.answers[key] = self.answers.get(key, 0) + 1
                for t in (stop, read):
                    t.cancel()
            except OSError:
                pass
            finally:
                self._held[kind] -= 1
                writer.close()

    async def __aenter__(self) -> Attacker:
        self._tasks = [asyncio.ensure_future(self._one("stalled", "127.0.0.2")) for _ in range(self.stalled)]
        self._tasks += [asyncio.ensure_future(self._one("idle", "127.0.0.3")) for _ in range(self.idle)]
        end = time.monotonic() + 20
        while (self._held["stalled"] < self.stalled or self._held["idle"] < self.idle) and time.monotonic() < end:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # let the server see every head
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def summary(self) -> dict[str, Any]:
        return {"stalled_uploads_held": self.stalled, "idle_connections_held": self.idle,
                "connections_opened": dict(self.opened), "server_answers_to_attacker": dict(self.answers)}


async def attacked_level(host: str, port: int, image: bytes, clients: int, requests: int, seconds: float,
                         stalled: int, idle: int) -> dict[str, Any]:
    async with Attacker(host, port, stalled, idle) as attacker:
        res = await run_level(host, port, image, clients, requests, seconds, 1)
    res["attack"] = attacker.summary()
    return res


def big_png() -> bytes:
    """7000x7000 16-bit RGBA, mostly flat (compresses to a few hundred KiB): 49 MP, 392 MB as 16-bit."""
    import cv2

    a = np.zeros((7000, 7000, 4), np.uint16)
    a[..., 3] = 65535
    a[::7, ::5, :3] = 40000
    ok, buf = cv2.imencode(".png", a, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    assert ok
    return buf.tobytes()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=None)
    p.add_argument("--requests", type=int, default=300, help="requests per level")
    p.add_argument("--level-seconds", type=float, default=40.0)
    p.add_argument("--stalled", type=int, default=32)
    p.add_argument("--idle", type=int, default=200)
    p.add_argument("--rss-requests", type=int, default=2000)
    p.add_argument("--server-arg", action="append", default=[])
    p.add_argument("--out", type=Path, default=(REPO / "benchmarks/results/speed/serve_attack"
                                                   / "cpu-poster_v1_mfn64_image.ferplus.json"))
    args = p.parse_args(argv)

    image_path = shared_path("samples", "astronaut.png")
    if not image_path.is_file():
        image_path = sample_path()
    portrait = jpeg(load_image(image_path))
    server_args = (["--weights", args.weights] if args.weights else []) + args.server_arg
    t_start, load_before = time.time(), load_average()
    proc, host, port = start_server(server_args)
    levels: dict[str, Any] = {}
    try:
        warm = asyncio.run(run_level(host, port, portrait, 4, 32, 60, 1))
        if warm["errors"]:
            raise SystemExit(f"warm-up failed: {warm['error_examples']}")
        rss_base = proc_status(proc.pid, "VmRSS")
        hwm_base = proc_status(proc.pid, "VmHWM")
        for name, clients in (("c1", 1), ("c16", 16)):
            levels[name] = asyncio.run(run_level(host, port, portrait, clients, args.requests, args.level_seconds, 1))
        levels["c16_attack"] = asyncio.run(attacked_level(host, port, portrait, 16, args.requests,
                                                          args.level_seconds, args.stalled, args.idle))
        for name, res in levels.items():
            print(f"{name:11s}: {res['requests_per_s']:6.2f} req/s p50 {res['latency_s']['p50']:.3f} "
                  f"p99 {res['latency_s']['p99']:.3f} errors {res['errors']}", file=sys.stderr)
        # memory: the big PNG, then portraits up to --rss-requests in all
        big = big_png()

        async def post_big() -> tuple[int, bytes]:
            from bench_serve import Connection

            conn = Connection(host, port)
            try:
                return await conn.request("POST", "/v1/predict", big, "image/png")
            finally:
                await conn.close()

        t = time.perf_counter()
        status, body = asyncio.run(post_big())
        big_result = {"status": status, "seconds": round(time.perf_counter() - t, 2), "bytes": len(big),
                      "answer": json.loads(body).get("error") or {"faces": len(json.loads(body)["faces"])},
                      "server_hwm_mb_after": proc_status(proc.pid, "VmHWM")}
        done = sum(v["requests"] for v in levels.values()) + warm["requests"] + 1
        soak = asyncio.run(run_level(host, port, portrait, 16, max(0, args.rss_requests - done), 600, 1))
        time.sleep(1.0)
        rss_after = proc_status(proc.pid, "VmRSS")
        hwm = proc_status(proc.pid, "VmHWM")
    finally:
        code = stop_server(proc)
    calm, attacked, one = levels["c16"], levels["c16_attack"], levels["c1"]
    ratio = round(attacked["requests_per_s"] / calm["requests_per_s"], 3)
    scaling = round(calm["requests_per_s"] / one["requests_per_s"], 2)
    summary = {"attack_throughput_ratio": ratio, "attack_p99_s": attacked["latency_s"]["p99"],
               "attack_errors": attacked["errors"], "peak_rss_mb": hwm,
               "rss_back_within_mb": round(rss_after - rss_base, 1) if rss_after and rss_base else None,
               "scaling_16_vs_1": scaling}
    met = {"attack_throughput_ratio": ratio >= TARGETS["attack_throughput_ratio"],
           "attack_p99_s": summary["attack_p99_s"] <= TARGETS["attack_p99_s"],
           "attack_errors": summary["attack_errors"] == 0,
           "peak_rss_mb": hwm is not None and hwm <= TARGETS["peak_rss_mb"],
           "rss_back_within_mb": summary["rss_back_within_mb"] is not None
           and summary["rss_back_within_mb"] <= TARGETS["rss_back_within_mb"],
           "scaling_16_vs_1": scaling >= TARGETS["scaling_16_vs_1"]}
    report = {
        **summary, "targets": TARGETS, "targets_met": met,
        "benchmark": "poster-fer serve with 16 well-behaved clients, with and without 32 stalled uploads and 200 "
                     "idle connections held beside them; server memory over 2,000 requests incl. a 49 MP 16-bit PNG",
        **run_provenance(args.weights, server_args, load_before),
        "levels": levels, "big_png": big_result, "soak": {k: soak[k] for k in ("requests", "errors", "requests_per_s")},
        "rss_mb": {"baseline": rss_base, "hwm_at_baseline": hwm_base, "peak": hwm, "after": rss_after},
        "server_exit_status": code, "wall_time_s": round(time.time() - t_start, 1),
        "notes": "Clients, attacker and server share the machine's cores. The attacker reopens each stalled upload "
                 "when the server answers it (429 past the per-client cap, 408 at the body deadline) and each idle "
                 "connection when the server closes it (header deadline).",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({**summary, "targets_met": met}), file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
