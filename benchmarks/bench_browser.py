"""The in-browser pipeline's speed in headless Chromium: faces/s, time to first result, bytes on first load.

The exported folder (poster_fer.web.export_web) is served on 127.0.0.1 twice: by ``python -m http.server``
(no cross-origin isolation, so onnxruntime-web runs one thread, as on most static hosts) and by a small server
that sends COOP/COEP headers (cross-origin isolated: SharedArrayBuffer, so WASM threads). Each mode gets a fresh
browser profile: the cold load is navigation start -> the portrait's result, with every byte fetched; then the
warm pipeline (decode + detect + align + classify) is timed on the portrait and a 16-face photo. The Python
pipeline (ONNX Runtime, one thread and all threads) is timed on the same images for comparison.

    python benchmarks/bench_browser.py [--repeats 10] [--out PATH]

``--served`` measures ``poster-fer serve``'s page instead (the default model on ONNX Runtime, on 127.0.0.1): its
in-browser mode with one thread (``?threads=1``) and two (``?threads=2``; the server sends COOP/COEP), against its
server mode (the same page posting to /v1/predict; the server runs on this machine too). Each mode gets a fresh browser
profile and an empty HTTP cache: the cold load is navigation start -> the portrait's first result through the
page's own ``predict``, then the warm ``predict`` is timed on the portrait and the 16-face photo, then the page is
loaded again (a second visit: the files are revalidated, not fetched again). Written to ``speed/browser/served/``.

    python benchmarks/bench_browser.py --served [--repeats 10] [--out PATH]
"""

from __future__ import annotations

import argparse
import gzip
import http.server
import io
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "speed" / "browser" / "cpu-poster_v1_mfn64_image.ferplus.json"
SERVED_OUT = OUT.parent / "served" / OUT.name
IMAGES = ("portrait.jpg", "group16.png")


def group_photo(rgb: np.ndarray, n: int = 4) -> np.ndarray:
    """4 x 4 tiles of the portrait's face, alternately mirrored (the 16-face photo of tests/test_web.py)."""
    tile = rgb[98:354, 140:396]
    rows = [np.hstack([tile if (r + c) % 2 == 0 else tile[:, ::-1] for c in range(n)]) for r in range(n)]
    return np.ascontiguousarray(np.vstack(rows))


class IsolatedHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with the headers that make a page cross-origin isolated (WASM threads need it)."""

    def end_headers(self) -> None:
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def start_servers(folder: Path) -> tuple[dict[str, str], list[Any]]:
    plain = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory",
                              str(folder)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    port = int(plain.stdout.readline().split(" port ")[1].split(" ")[0])
    isolated = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(IsolatedHandler, directory=str(folder)))
    threading.Thread(target=isolated.serve_forever, daemon=True).start()
    urls = {"single_thread": f"http://127.0.0.1:{port}", "threads": f"http://127.0.0.1:{isolated.server_port}"}
    return urls, [plain, isolated]


def new_browser(profile: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", f"--user-data-dir={profile}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=Service(executable_path="/usr/bin/chromedriver"))
    driver.set_script_timeout(600)
    return driver


COLD = """const done = arguments[arguments.length - 1];
(async () => { const { loadSeconds } = await window.posterFer.ready;
  const r = await window.posterFer.predictUrl('cases/portrait.jpg');
  const first = performance.now() / 1000;
  const entries = [...performance.getEntriesByType('navigation'), ...performance.getEntriesByType('resource')];
  return { first_result_seconds: first, model_load_seconds: loadSeconds, faces: r.faces.length,
           threads: window.posterFer.ort.env.wasm.numThreads, isolated: self.crossOriginIsolated,
           bytes_transferred: entries.reduce((s, e) => s + e.transferSize, 0),
           files: entries.map((e) => e.name.split('/').pop()) };
})().then(done, (e) => done({ error: String(e) }));"""

WARM = """const [names, repeats, done] = arguments;
(async () => { const out = {};
  for (const name of names) {
    const blob = await (await fetch('cases/' + name)).blob();
    const runs = [];
    for (let i = 0; i < repeats + 2; i++) {
      const t0 = performance.now();
      const r = await window.posterFer.predictBlob(blob, name);
      runs.push({ total: (performance.now() - t0) / 1000, faces: r.faces.length, ...r.seconds });
    }
    out[name] = runs.slice(2);
  }
  return out;
})().then(done, (e) => done({ error: String(e) }));"""


def summarise(runs: list[dict[str, float]]) -> dict[str, Any]:
    total = statistics.median(r["total"] for r in runs)
    faces = runs[0]["faces"]
    return {"faces": faces, "median_seconds": round(total, 4), "faces_per_second": round(faces / total, 2),
            "median_detect_align_seconds": round(statistics.median(r["detect_align"] for r in runs), 4),
            "median_classify_seconds": round(statistics.median(r["classify"] for r in runs), 4), "runs": len(runs)}


def measure_browser(url: str, profile: Path, repeats: int) -> dict[str, Any]:
    driver = new_browser(profile)
    try:
        driver.get(url + "/")
        cold = driver.execute_async_script(COLD)
        if "error" in cold:
            raise RuntimeError(cold["error"])
        warm = driver.execute_async_script(WARM, list(IMAGES), repeats)
        if "error" in warm:
            raise RuntimeError(warm["error"])
        version = driver.capabilities.get("browserVersion")
    finally:
        driver.quit()
    cold["first_result_seconds"] = round(cold["first_result_seconds"], 3)
    cold["model_load_seconds"] = round(cold["model_load_seconds"], 3)
    return {"chromium": version, "cold_load": cold, "warm": {k: summarise(v) for k, v in warm.items()}}


def measure_python(folder: Path, repeats: int) -> dict[str, Any]:
    from poster_fer import Recognizer

    out: dict[str, Any] = {}
    for label, threads in (("one_thread", 1), ("all_threads", None)):
        rec = Recognizer.from_checkpoint(backend="onnxruntime", threads=threads)
        out[label] = {}
        for name in IMAGES:
            path = folder / "cases" / name
            times = []
            for i in range(repeats + 2):
                t0 = time.perf_counter()
                faces = rec.predict(path)
                if i >= 2:
                    times.append(time.perf_counter() - t0)
            med = statistics.median(times)
            out[label][name] = {"faces": len(faces), "median_seconds": round(med, 4),
                                "faces_per_second": round(len(faces) / med, 2)}
    return out


def folder_bytes(folder: Path) -> dict[str, Any]:
    """What the page loads, as stored and as a gzip-compressing host would send it."""
    files = [p for p in folder.rglob("*") if p.is_file() and "cases" not in p.parts and p.suffix != ".txt"]
    raw = sum(p.stat().st_size for p in files)
    gz = sum(len(gzip.compress(p.read_bytes(), 6)) for p in files)
    return {"files": len(files), "bytes": raw, "gzip_bytes": gz}


SERVED_COLD = """const [b64, done] = arguments;
(async () => { const blob = new Blob([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))], { type: 'image/jpeg' });
  const r = await predict(blob);
  const first = performance.now() / 1000;
  const entries = [...performance.getEntriesByType('navigation'), ...performance.getEntriesByType('resource')];
  return { first_result_seconds: first, where: r.where, faces: r.faces.length,
           model_load_seconds: here.loadMs == null ? null : here.loadMs / 1000,
           threads: here.ready ? here.ready.threads : null, isolated: self.crossOriginIsolated,
           bytes_transferred: entries.reduce((s, e) => s + e.transferSize, 0), upload_bytes: r.where === 'server'
             ? blob.size : 0, files: entries.map((e) => e.name.split('/').pop()) };
})().then(done, (e) => done({ error: String(e) }));"""

SERVED_WARM = """const [images, repeats, done] = arguments;
(async () => { const out = {};
  for (const [name, b64] of Object.entries(images)) {
    const blob = new Blob([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))]);
    const runs = [];
    for (let i = 0; i < repeats + 2; i++) {
      const t0 = performance.now();
      const r = await predict(blob);
      runs.push({ total: (performance.now() - t0) / 1000, faces: r.faces.length, where: r.where,
                  detect_align: r.timings_ms.detect / 1000, classify: r.timings_ms.forward / 1000 });
    }
    out[name] = runs.slice(2);
  }
  return out;
})().then(done, (e) => done({ error: String(e) }));"""


def start_serve() -> tuple[subprocess.Popen, str]:
    """``poster-fer serve`` with the default model on ONNX Runtime, on a free loopback port."""
    import re

    proc = subprocess.Popen([sys.executable, "-m", "poster_fer_apps.cli", "serve", "--port", "0", "--backend",
                             "onnxruntime"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        found = re.search(r"http://[\d.:]+", line)
        if found:
            return proc, found.group(0)
    raise RuntimeError("poster-fer serve did not start")


def measure_served_mode(url: str, where: str, query: str, images: dict[str, str], profile: Path,
                        repeats: int) -> dict[str, Any]:
    """One mode of the served page: cold load with an empty cache, then the warm pipeline."""
    driver = new_browser(profile)
    try:
        driver.get(url + "/")
        driver.execute_script("localStorage.setItem('poster-fer-where', arguments[0])", where)
        driver.execute_cdp_cmd("Network.clearBrowserCache", {})
        driver.get(url + "/" + query)
        cold = driver.execute_async_script(SERVED_COLD, images["portrait.jpg"])
        if "error" in cold:
            raise RuntimeError(cold["error"])
        warm = driver.execute_async_script(SERVED_WARM, images, repeats)
        if "error" in warm:
            raise RuntimeError(warm["error"])
        driver.get(url + "/" + query)  # a second visit: the files are revalidated (304), not downloaded again
        again = driver.execute_async_script(SERVED_COLD, images["portrait.jpg"])
    finally:
        driver.quit()
    assert cold["where"] == where and all(r["where"] == where for runs in warm.values() for r in runs), (cold, where)
    for key in ("first_result_seconds", "model_load_seconds"):
        cold[key] = cold[key] if cold[key] is None else round(cold[key], 3)
    second = {"first_result_seconds": round(again["first_result_seconds"], 3),
              "bytes_transferred": again["bytes_transferred"]}
    return {"cold_load": cold, "warm": {k: summarise(v) for k, v in warm.items()}, "second_visit": second}


def run_served(args: argparse.Namespace, record: dict[str, Any]) -> dict[str, Any]:
    """The served page in its three modes (see the module's docstring)."""
    import base64

    from _harness import log

    from poster_fer.faces import load_image
    from poster_fer.samples import sample_path

    buf = io.BytesIO()
    Image.fromarray(group_photo(load_image(sample_path()))).save(buf, format="PNG")
    images = {"portrait.jpg": base64.b64encode(sample_path().read_bytes()).decode(),
              "group16.png": base64.b64encode(buf.getvalue()).decode()}
    record["benchmark"] = "poster-fer serve's page: in-browser mode (onnxruntime-web WASM) vs server mode"
    proc, url = start_serve()
    try:
        with tempfile.TemporaryDirectory(prefix="poster-fer-served-") as tmp:
            for mode, where, query in (("browser_single_thread", "browser", "?threads=1"),
                                       ("browser_threads", "browser", "?threads=2"), ("server", "server", "")):
                log(f"served page, {mode}")
                record[mode] = measure_served_mode(url, where, query, images, Path(tmp) / mode, args.repeats)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    record["server_process"] = "poster-fer serve --backend onnxruntime (ONNX Runtime's default threads), same machine"
    return record


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from _harness import command_line, log, machine_info, now

    from poster_fer.faces import load_image
    from poster_fer.provenance import git_state, load_average
    from poster_fer.samples import sample_path
    from poster_fer.web import export_web, runtime_record

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--served", action="store_true", help="measure poster-fer serve's page (both modes)")
    args = p.parse_args(argv)
    args.out = args.out or (SERVED_OUT if args.served else OUT)
    record: dict[str, Any] = {"benchmark": "in-browser pipeline (onnxruntime-web WASM, headless Chromium)",
                              "command": command_line(__file__, sys.argv[1:] if argv is None else argv),
                              "date": now(), "git": git_state(), "machine": machine_info("cpu"),
                              "load_average_before": load_average(), "runtime": runtime_record()["version"]}
    if args.served:
        return write(run_served(args, record), args.out)
    with tempfile.TemporaryDirectory(prefix="poster-fer-web-") as tmp:
        folder = export_web(Path(tmp) / "site")
        (folder / "cases").mkdir()
        (folder / "cases" / "portrait.jpg").write_bytes(sample_path().read_bytes())
        Image.fromarray(group_photo(load_image(sample_path()))).save(folder / "cases" / "group16.png")
        record["page_bytes"] = folder_bytes(folder)
        urls, servers = start_servers(folder)
        try:
            for mode, url in urls.items():
                log(f"browser, {mode}")
                record[f"browser_{mode}"] = measure_browser(url, Path(tmp) / f"profile-{mode}", args.repeats)
        finally:
            servers[0].terminate()
            servers[1].shutdown()
        log("python reference")
        record["python_onnxruntime"] = measure_python(folder, args.repeats)
    return write(record, args.out)


def write(record: dict[str, Any], path: Path) -> int:
    """The record as JSON, with the results envelope when it goes under benchmarks/results."""
    from _harness import log
    from results_index import envelope

    path.parent.mkdir(parents=True, exist_ok=True)
    out = path.resolve()
    if out.is_relative_to((REPO / "benchmarks" / "results").resolve()):
        record = {"envelope": envelope(out, record), **record}
    out.write_text(json.dumps(record, indent=2, default=str) + "\n")
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
