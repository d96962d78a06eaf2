"""The page at ``/`` in a real browser: headless Chromium (Debian's ``chromium`` + ``chromium-driver``) driven by
Selenium against the real ``poster-fer serve``. One test uploads the sample portrait; the other starts the webcam
with Chromium's fake camera playing the portrait and waits for live labels.

Without a browser these tests skip, except where ``POSTER_FER_REQUIRE_SHARED=1`` (CI, whose .ci/run installs
Chromium): there a missing browser fails."""

from __future__ import annotations

import re
import shutil
import signal

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import _require
from poster_fer import create_model, save_model
from poster_fer.faces import get_geometry
from poster_fer.samples import sample_path
from test_serve import CLASSES, SIZE, start_server, stop_server

#: class names for the tiny models these tests build (save_model refuses a model without any)
_CLASS_NAMES = {n: [f"c{i}" for i in range(n)] for n in range(1, 11)}
_CLASS_NAMES[7] = ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"]
_CLASS_NAMES[8] = ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt"]

pytestmark = pytest.mark.slow


def _browser() -> tuple[str, str]:
    """Paths of Chromium and its WebDriver, or skip (fail in CI)."""
    chromium = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing = "the selenium package (pip install -e '.[dev]')"
    else:
        missing = None if chromium and driver else "chromium and chromium-driver (apt-get install chromium " \
            "chromium-driver)"
    if missing:
        if _require():
            pytest.fail(f"browser tests need {missing}")
        pytest.skip(f"browser tests need {missing}")
    return chromium, driver


def write_y4m(path, rgb: np.ndarray, frames: int = 5, fps: int = 10) -> None:
    """A raw YUV 4:2:0 video of a still image: the format Chromium's fake camera plays (looped)."""
    h, w = (rgb.shape[0] // 2) * 2, (rgb.shape[1] // 2) * 2
    ycc = Image.fromarray(np.ascontiguousarray(rgb[:h, :w])).convert("YCbCr")
    y, cb, cr = ycc.split()
    planes = y.tobytes() + cb.resize((w // 2, h // 2), Image.Resampling.BOX).tobytes() + \
        cr.resize((w // 2, h // 2), Image.Resampling.BOX).tobytes()
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            f.write(b"FRAME\n" + planes)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("poster_v1_tiny", num_classes=7, input_size=SIZE, backbone_size=SIZE, classes=_CLASS_NAMES[7])
    with torch.no_grad():
        model.head.linear.weight.mul_(30.0)
    prep = {"input_size": SIZE, "crop_geometry": get_geometry("rafdb").to_dict(), "grayscale": False}
    ckpt = save_model(model, tmp_path_factory.mktemp("ckpt") / "tiny", preprocessing=prep, classes=CLASSES)
    proc, url = start_server("--weights", str(ckpt))
    yield url
    code, err = stop_server(proc, signal.SIGTERM)
    assert code == 0, err


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium, chromedriver = _browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    tmp = tmp_path_factory.mktemp("chromium")
    camera = tmp / "portrait.y4m"
    write_y4m(camera, np.asarray(Image.open(sample_path()).convert("RGB")))
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,900", f"--user-data-dir={tmp / 'profile'}",
                "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-video-capture={camera}"):
        opts.add_argument(arg)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SE_OFFLINE", "true")  # Selenium Manager must not look for browsers or drivers online
        driver = webdriver.Chrome(options=opts, service=Service(executable_path=chromedriver))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _wait(driver, predicate, timeout: float = 30.0):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # The live page redraws its elements every frame: an element found a moment ago may be gone by the next read.
    return WebDriverWait(driver, timeout, poll_frequency=0.1,
                         ignored_exceptions=(StaleElementReferenceException,)).until(lambda d: predicate(d))


def _expected_label(url: str) -> str:
    r = httpx.post(f"{url}/v1/predict", content=sample_path().read_bytes(), timeout=30)
    (face,) = r.json()["faces"]
    return face["label"]


def _boxes(driver) -> list[dict]:
    """Each drawn box: its label text and its rectangle relative to the photo or video, in CSS pixels."""
    return driver.execute_script("""
        const media = [document.getElementById('photo'), document.getElementById('video')]
            .find((e) => e.style.display !== 'none');
        const m = media.getBoundingClientRect();
        return [...document.querySelectorAll('#overlay .box')].map((b) => {
            const r = b.getBoundingClientRect();
            return {label: b.querySelector('.box-label').textContent, x: r.left - m.left, y: r.top - m.top,
                    w: r.width, h: r.height, mw: m.width, mh: m.height};
        });""")


def test_upload_the_portrait_and_see_its_label_drawn_and_listed(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    expected = _expected_label(server)
    browser.get(server + "/")
    _wait(browser, lambda d: "poster_v1_tiny" in d.find_element(By.ID, "model").text)
    browser.find_element(By.ID, "file").send_keys(str(sample_path()))
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#faces .face .label"))

    listed = browser.find_elements(By.CSS_SELECTOR, "#faces .face")
    assert len(listed) == 1
    assert listed[0].find_element(By.CSS_SELECTOR, ".label").text == expected
    bars = listed[0].find_elements(By.CSS_SELECTOR, ".bar")
    assert [b.find_element(By.CSS_SELECTOR, ".name").text for b in bars] == CLASSES
    widths = [float(b.find_element(By.CSS_SELECTOR, ".fill").get_attribute("style").split("width:")[1].split("%")[0])
              for b in bars]
    assert sum(widths) == pytest.approx(100, abs=1) and CLASSES[int(np.argmax(widths))] == expected

    (box,) = _boxes(browser)
    assert box["label"].startswith(expected + " ") and box["label"].endswith("%")
    # the box sits on the face: the portrait's face is about x 183-353, y 120-333 of 512x600
    sx, sy = box["mw"] / 512, box["mh"] / 600
    assert box["x"] / sx == pytest.approx(183, abs=15) and box["y"] / sy == pytest.approx(120, abs=15)
    assert box["w"] / sx == pytest.approx(170, abs=20) and box["h"] / sy == pytest.approx(212, abs=20)
    assert "1 face" in browser.find_element(By.ID, "status").text
    assert browser.find_element(By.ID, "meter").text.startswith("detect")

    # a file that is no image: the server's message is shown, nothing is drawn
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo")
    browser.find_element(By.ID, "file").send_keys(str(text))
    _wait(browser, lambda d: "error" in d.find_element(By.ID, "status").get_attribute("class"))
    assert "notes.jpg: the upload is not an image" in browser.find_element(By.ID, "status").text
    assert _boxes_count(browser) == 0 and browser.find_element(By.CSS_SELECTOR, "#faces .empty")


def test_webcam_shows_live_labels(server, browser):
    from selenium.webdriver.common.by import By

    browser.get(server + "/")
    _wait(browser, lambda d: "poster_v1_tiny" in d.find_element(By.ID, "model").text)
    before = _images_answered(server)
    browser.find_element(By.ID, "cam").click()
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#overlay .box") and d.find_elements(By.ID, "fps"))
    _wait(browser, lambda d: _images_answered(server) - before >= 5)  # frames keep coming
    assert browser.find_element(By.ID, "cam").text == "Stop webcam"
    fps = float(re.search(r"([\d.]+) fps", browser.execute_script(
        "return document.getElementById('fps').textContent")).group(1))
    assert fps > 0
    (box,) = _boxes(browser)
    assert box["label"].split()[0] in CLASSES
    assert 0.2 < (box["x"] + box["w"] / 2) / box["mw"] < 0.8 and 0.2 < (box["y"] + box["h"] / 2) / box["mh"] < 0.8
    # One snapshot of the list (read in the page, so a redraw between two reads cannot make it stale).
    labels = browser.execute_script(
        "return Array.from(document.querySelectorAll('#faces .face .label')).map(e => e.textContent.trim())")
    assert len(labels) == 1 and labels[0] in CLASSES
    browser.find_element(By.ID, "cam").click()
    _wait(browser, lambda d: d.find_element(By.ID, "cam").text == "Start webcam")
    assert "error" not in browser.find_element(By.ID, "status").get_attribute("class")


def _boxes_count(driver) -> int:
    return int(driver.execute_script("return document.querySelectorAll('#overlay .box').length"))


def _images_answered(url: str) -> int:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return int(re.search(r"^poster_fer_images_total (\d+)$", text, re.M).group(1))
