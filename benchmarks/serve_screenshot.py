"""Screenshots of the page of ``poster-fer serve`` for docs/serving.md.

Starts the real server (the default model, or ``--weights``), opens ``/`` in headless Chromium (Debian's
``chromium`` + ``chromium-driver``) and saves three windows:

* ``docs/serve-screenshot.png``: the sample portrait the package ships, labelled (the single-photo view);
* ``docs/images/serve-grid.png``: several photos at once (the portrait, the astronaut, a 16-face photo, a small
  and a mirrored grey copy, and a GIF, which gets the page's message for an unsupported format);
* ``docs/images/serve-video.png``: a composed 7 s H.264 video (the portrait cross-fades into the astronaut, warped
  onto the portrait's landmarks, and back) analysed at 4 frames a second, with its timeline, the player at 4 s.

The astronaut is ``$POSTER_FER_SHARED/samples/astronaut.png``; without it the portrait, mirrored, stands in.
Screenshots over 250 KB are saved with a reduced palette. Regenerate them whenever the page or the default
model changes:

    python benchmarks/serve_screenshot.py [--weights CKPT] [--out docs/serve-screenshot.png]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import tempfile
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
from _photo import group_image  # the 16-face photo of the load test (scripts in one folder)
from bench_serve import start_server  # the same launcher as the load test
from PIL import Image

from poster_fer.assets import shared_path
from poster_fer.samples import sample_path

REPO = Path(__file__).resolve().parents[1]
LIMIT_BYTES = 250_000
VIDEO_FPS, VIDEO_SECONDS, VIDEO_SIZE = 10, 7.0, (640, 480)


def _predict(url: str, data: bytes) -> dict:
    req = urllib.request.Request(url + "/v1/predict", data=data, method="POST",
                                 headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def _jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _landmarks(url: str, rgb: np.ndarray) -> np.ndarray:
    """The first face's 5 landmarks, from the server itself (so this script loads no model of its own)."""
    faces = _predict(url, _jpeg(rgb))["faces"]
    if not faces or not faces[0]["landmarks"]:
        raise SystemExit("no face with landmarks found in a sample image")
    return np.asarray(faces[0]["landmarks"], np.float32)


def _images() -> tuple[np.ndarray, np.ndarray]:
    portrait = np.asarray(Image.open(sample_path()).convert("RGB"))
    astronaut_file = shared_path("samples", "astronaut.png")
    other = (np.asarray(Image.open(astronaut_file).convert("RGB")) if astronaut_file.exists()
             else np.ascontiguousarray(portrait[:, ::-1]))
    return portrait, other


def write_photos(folder: Path) -> list[Path]:
    """The photos of the grid screenshot, one of them a GIF (refused, with the page's message)."""
    portrait, other = _images()
    small = Image.fromarray(portrait).resize((160, 188), Image.Resampling.LANCZOS)
    grey = Image.fromarray(np.ascontiguousarray(portrait[:, ::-1])).convert("L").convert("RGB")
    group = Image.fromarray(group_image(other))
    items = [("grace_hopper.jpg", Image.fromarray(portrait)), ("team_16_faces.jpg", group),
             ("party.gif", Image.fromarray(other).convert("P")), ("astronaut.jpg", Image.fromarray(other)),
             ("thumbnail_160px.jpg", small), ("mirrored_grey.jpg", grey)]
    paths = []
    for name, img in items:
        path = folder / name
        img.save(path, quality=90) if name.endswith(".jpg") else img.save(path)
        paths.append(path)
    return paths


def write_video(path: Path, url: str) -> None:
    """7 s at 10 fps, H.264: the portrait, cross-fading (2-3 s) into the astronaut and back (5-6 s)."""
    import av

    portrait, other = _images()
    p_pts, o_pts = _landmarks(url, portrait), _landmarks(url, other)
    m, _ = cv2.estimateAffinePartial2D(o_pts, p_pts)  # the other face onto the portrait's: one face, one place
    warped = cv2.warpAffine(other, m, portrait.shape[1::-1], flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)
    w, h = VIDEO_SIZE
    eye = float(np.linalg.norm(p_pts[1] - p_pts[0]))
    zoom = 0.2 * w / max(eye, 1.0)
    centre = p_pts[:2].mean(axis=0)
    view = np.array([[zoom, 0, w / 2 - zoom * centre[0]], [0, zoom, 0.42 * h - zoom * centre[1]]], np.float32)
    a, b = (cv2.warpAffine(x, view, (w, h), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)
            for x in (portrait, warped))
    with av.open(str(path), "w") as c:
        stream = c.add_stream("libx264", rate=VIDEO_FPS)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(int(VIDEO_SECONDS * VIDEO_FPS)):
            t = i / VIDEO_FPS
            mix = float(np.clip(t - 2.0, 0, 1)) if t < 4.5 else float(np.clip(6.0 - t, 0, 1))
            frame = av.VideoFrame.from_ndarray(cv2.addWeighted(a, 1 - mix, b, mix, 0), format="rgb24")
            frame.pts = i
            c.mux(stream.encode(frame))
        c.mux(stream.encode(None))


def save_small(png: bytes, out: Path) -> int:
    """Save a screenshot; over LIMIT_BYTES it gets a palette (256 colours, then fewer) until it fits."""
    out.parent.mkdir(parents=True, exist_ok=True)
    img = Image.open(io.BytesIO(png)).convert("RGB")
    img.save(out, optimize=True)
    for colours in (256, 192, 128, 96, 64):
        if out.stat().st_size <= LIMIT_BYTES:
            break
        img.quantize(colours, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    return out.stat().st_size


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=None, help="checkpoint to serve (default: the shipped default model)")
    p.add_argument("--image", default=str(sample_path()), help="photo of the single view (default: the portrait)")
    p.add_argument("--out", default=str(REPO / "docs" / "serve-screenshot.png"))
    p.add_argument("--grid-out", default=str(REPO / "docs" / "images" / "serve-grid.png"))
    p.add_argument("--video-out", default=str(REPO / "docs" / "images" / "serve-video.png"))
    p.add_argument("--size", default="1180,760", help="window width,height in CSS pixels (single view)")
    args = p.parse_args(argv)

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    os.environ.setdefault("SE_OFFLINE", "true")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        raise SystemExit("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    proc, host, port = start_server(["--weights", args.weights] if args.weights else [])
    url = f"http://{host}:{port}"
    width, height = (int(v) for v in args.size.split(","))
    try:
        # one request first, so the timings the page shows are a warm server's, not the first call's
        _predict(url, Path(args.image).read_bytes())
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            photos = write_photos(work)
            clip = work / "interview.mp4"
            write_video(clip, url)
            opts = webdriver.ChromeOptions()
            opts.binary_location = chromium
            for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        "--hide-scrollbars", f"--window-size={width},{height}", f"--user-data-dir={work / 'p'}"):
                opts.add_argument(arg)
            driver = webdriver.Chrome(options=opts, service=Service(executable_path=driver_path))
            wait = WebDriverWait(driver, 120)

            def page() -> None:
                driver.get(url + "/")
                wait.until(lambda d: "classes" in d.find_element(By.ID, "model").text)

            try:
                page()  # the single view, as it has always been shown
                driver.find_element(By.ID, "file").send_keys(str(Path(args.image).resolve()))
                wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#faces .face .label"))
                time.sleep(0.3)  # let the photo finish painting
                label = driver.find_element(By.CSS_SELECTOR, "#faces .face .label").text
                sizes = [("single", args.out, save_small(driver.get_screenshot_as_png(), Path(args.out)))]

                driver.set_window_size(width, 1150)
                page()
                driver.find_element(By.ID, "file").send_keys("\n".join(str(p) for p in photos))
                wait.until(lambda d: "photos labelled" in d.find_element(By.ID, "status").text)
                time.sleep(0.3)
                sizes.append(("grid", args.grid_out, save_small(driver.get_screenshot_as_png(), Path(args.grid_out))))

                driver.set_window_size(width, 1150)
                page()
                driver.execute_script("document.getElementById('vrate').value = '4'")
                driver.find_element(By.ID, "videofile").send_keys(str(clip))
                wait.until(lambda d: "frames analysed" in d.find_element(By.ID, "status").text)
                driver.execute_script("document.getElementById('video').currentTime = 4.0")
                wait.until(lambda d: d.find_element(By.ID, "facestitle").text == "Faces at 4 s")
                time.sleep(0.5)
                sizes.append(("video", args.video_out,
                              save_small(driver.get_screenshot_as_png(), Path(args.video_out))))
            finally:
                driver.quit()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    for what, out, size in sizes:
        print(f"{what}: {out} ({size / 1024:.0f} KB)")
    print(f"the portrait: {label}")
    return Path(args.out)


if __name__ == "__main__":
    main()
