"""Screenshot of the page of ``poster-fer serve`` labelling the sample portrait (docs/serve-screenshot.png).

Starts the real server (the default model, or ``--weights``), opens ``/`` in headless Chromium (Debian's
``chromium`` + ``chromium-driver``), uploads the portrait the package ships and saves the window once the
label is listed. Regenerate it whenever the page or the default model changes:

    python benchmarks/serve_screenshot.py [--weights CKPT] [--out docs/serve-screenshot.png]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import tempfile
import time
import urllib.request
from pathlib import Path

from bench_serve import start_server  # the same launcher as the load test (scripts in one folder)

from poster_fer.samples import sample_path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=None, help="checkpoint to serve (default: the shipped default model)")
    p.add_argument("--image", default=str(sample_path()), help="photo to upload (default: the sample portrait)")
    p.add_argument("--out", default=str(REPO / "docs" / "serve-screenshot.png"))
    p.add_argument("--size", default="1180,760", help="window width,height in CSS pixels")
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
    try:
        # one request first, so the timings the page shows are a warm server's, not the first call's
        warm = urllib.request.Request(url + "/v1/predict", data=Path(args.image).read_bytes(), method="POST",
                                      headers={"Content-Type": "application/octet-stream"})
        urllib.request.urlopen(warm, timeout=60).read()
        with tempfile.TemporaryDirectory() as profile:
            opts = webdriver.ChromeOptions()
            opts.binary_location = chromium
            for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        "--hide-scrollbars", f"--window-size={args.size}", f"--user-data-dir={profile}"):
                opts.add_argument(arg)
            driver = webdriver.Chrome(options=opts, service=Service(executable_path=driver_path))
            try:
                driver.get(url + "/")
                WebDriverWait(driver, 30).until(lambda d: "classes" in d.find_element(By.ID, "model").text)
                driver.find_element(By.ID, "file").send_keys(str(Path(args.image).resolve()))
                WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#faces .face .label"))
                time.sleep(0.3)  # let the photo finish painting
                out = Path(args.out)
                out.parent.mkdir(parents=True, exist_ok=True)
                driver.save_screenshot(str(out))
                label = driver.find_element(By.CSS_SELECTOR, "#faces .face .label").text
            finally:
                driver.quit()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    print(f"{out}: {label}")
    return out


if __name__ == "__main__":
    main()
