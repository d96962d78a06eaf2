"""The page at ``/`` in a real browser: headless Chromium (Debian's ``chromium`` + ``chromium-driver``) driven by
Selenium against the real ``poster-fer serve``. One test uploads the sample portrait; one starts the webcam
with Chromium's fake camera playing the portrait and waits for live labels; the others upload several files at once
(a grid of cards, a person-worded error, the CSV/JSON downloads), drop files through a busy server (503 then a
retry), and analyse a short H.264 video (boxes over the player, the timeline chart, per-frame downloads).

Without a browser these tests skip, except where ``POSTER_FER_REQUIRE_SHARED=1`` (CI, whose .ci/run installs
Chromium): there a missing browser fails."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import signal

import cv2
import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import _require, headless_chromium
from poster_fer import create_model, save_model
from poster_fer.faces import get_geometry
from poster_fer.inference.records import RECORD_KEYS, csv_columns
from poster_fer.samples import sample_path
from test_serve import CLASSES, SIZE, start_server, stop_server

#: class names for the tiny models these tests build (save_model refuses a model without any)
_CLASS_NAMES = {n: [f"c{i}" for i in range(n)] for n in range(1, 11)}
_CLASS_NAMES[7] = ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"]
_CLASS_NAMES[8] = ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt"]

pytestmark = pytest.mark.slow




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
    tmp = tmp_path_factory.mktemp("chromium")
    camera = tmp / "portrait.y4m"
    write_y4m(camera, np.asarray(Image.open(sample_path()).convert("RGB")))
    driver = headless_chromium(tmp / "profile", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                               f"--use-file-for-fake-video-capture={camera}", page_load_timeout=30)
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
    status = browser.find_element(By.ID, "status")
    # worded for a person; the server's own message stays in the tooltip
    assert status.text.startswith("notes.jpg: This file is not a picture we can read.")
    assert "the upload is not an image" in status.get_attribute("title")
    assert _boxes_count(browser) == 0
    assert browser.find_element(By.ID, "faces").text == ""  # no "No face found.": no image was read (issue 39)
    assert browser.find_element(By.ID, "dl-csv").get_attribute("disabled")  # an error alone is nothing to download
    assert browser.find_element(By.ID, "dl-json").get_attribute("disabled")


def test_tags_on_a_dense_group_photo_cover_no_face_and_no_other_tag(server, browser, tmp_path):
    """Issue 39 item 7: a 5 x 2 tiling of the portrait, faces 115 px wide 130 px apart, shown at full size: the
    tags ("3: disgust 97.5%") are wider than the spacing; every tag stays clear of the other faces and tags."""
    from selenium.webdriver.common.by import By

    tile = cv2.resize(cv2.imread(str(sample_path()))[90:370, 175:365], (130, 190), interpolation=cv2.INTER_AREA)
    grid = tmp_path / "grid.jpg"
    cv2.imwrite(str(grid), np.tile(tile, (2, 5, 1)))
    browser.get(server + "/")
    _wait(browser, lambda d: "poster_v1_tiny" in d.find_element(By.ID, "model").text)
    browser.find_element(By.ID, "file").send_keys(str(grid))
    _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#faces .face")) == 10)
    rects = browser.execute_script("""
        const r = (e) => { const b = e.getBoundingClientRect(); return [b.left, b.top, b.width, b.height]; };
        return [...document.querySelectorAll('#overlay .box')].map((b) => [r(b), r(b.querySelector('.box-label'))]);""")
    assert len(rects) == 10
    browser.save_screenshot(str(tmp_path / "dense.png"))  # what a person sees, kept with the test run

    def hit(a, b):  # a shared edge (sub-pixel rounding) is no overlap
        return a[0] < b[0] + b[2] - 0.5 and b[0] < a[0] + a[2] - 0.5 and a[1] < b[1] + b[3] - 0.5 and \
            b[1] < a[1] + a[3] - 0.5

    for i, (_, tag) in enumerate(rects):
        for j, (box, other) in enumerate(rects):
            if i != j:
                assert not hit(tag, box) and not hit(tag, other), (i, j)


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


def _cards(driver) -> list[dict]:
    """Each result card as the page shows it, read in one go."""
    return driver.execute_script("""
        return [...document.querySelectorAll('#cards .card')].map((c) => ({
            name: c.querySelector('.fname').textContent, state: c.dataset.state,
            status: c.querySelector('.cstatus').textContent,
            labels: [...c.querySelectorAll('.cfaces .label')].map((e) => e.textContent),
            error: (c.querySelector('.cerror') || {}).textContent || null,
            canvas: !!c.querySelector('canvas')}));""")


def _catch_downloads(driver) -> None:
    """Keep every Blob the page turns into an object URL and every download link it clicks, instead of saving."""
    driver.execute_script("""
        window.__blobs = []; window.__downloads = [];
        const make = URL.createObjectURL.bind(URL);
        URL.createObjectURL = (b) => {
            const u = make(b); if (b instanceof Blob) window.__blobs.push([u, b]); return u;
        };
        HTMLAnchorElement.prototype.click = function () { window.__downloads.push([this.download, this.href]); };""")


def _download(driver, button: str) -> tuple[str, str]:
    """Click a download button; the file name it offers and the text of the Blob behind it."""
    from selenium.webdriver.common.by import By

    before = driver.execute_script("return window.__downloads.length")
    driver.find_element(By.ID, button).click()
    name, text = driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const [name, href] = window.__downloads[arguments[0]];
        const blob = window.__blobs.find(([u]) => u === href)[1];
        blob.text().then((t) => done([name, t]));""", before)
    return name, text


def _done(driver, n: int) -> bool:
    cards = _cards(driver)
    return len(cards) == n and all(c["state"] in ("done", "error") for c in cards)


def test_several_photos_give_a_grid_a_person_worded_error_and_downloads(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    expected = _expected_label(server)
    browser.get(server + "/")
    _wait(browser, lambda d: "poster_v1_tiny" in d.find_element(By.ID, "model").text)
    text = tmp_path / "notes.txt"
    text.write_text("not a photo")
    assert browser.find_element(By.ID, "dl-csv").get_attribute("disabled")  # nothing to download yet
    browser.find_element(By.ID, "file").send_keys(f"{sample_path()}\n{text}")
    _wait(browser, lambda d: _done(d, 2))

    photo, note = _cards(browser)
    assert (photo["name"], photo["state"], photo["labels"], photo["error"]) == \
        ("grace_hopper.jpg", "done", [expected], None)
    assert photo["canvas"] and photo["status"].startswith("1 face")
    assert (note["name"], note["state"], note["labels"], note["canvas"]) == ("notes.txt", "error", [], False)
    assert note["error"].startswith("This file is not a picture we can read.")
    assert "{" not in note["error"] and "not_an_image" not in note["error"]
    assert browser.find_element(By.ID, "gstatus").text.startswith("2 of 2")
    assert "1 of 2 photos labelled" in browser.find_element(By.ID, "status").text
    # the card's canvas has the photo and the box drawn in the label's colour
    drawn = browser.execute_script("""
        const c = document.querySelector('#cards canvas'), d = c.getContext('2d').getImageData(0, 0, c.width,
            c.height).data;
        let bright = 0; for (let i = 0; i < d.length; i += 4) bright += d[i] + d[i + 1] + d[i + 2] > 60;
        return [c.width, c.height, bright];""")
    assert drawn[:2] == [410, 480] and drawn[2] > 0.5 * 410 * 480  # at most 480 px kept per card

    _catch_downloads(browser)
    name, body = _download(browser, "dl-csv")
    assert name == "photos.poster-fer.csv"
    rows = list(csv.DictReader(io.StringIO(body)))
    assert list(rows[0]) == csv_columns(CLASSES)  # the columns `poster-fer predict --output x.csv` writes
    assert [(r["source"], r["status"], r["face"], r["label"]) for r in rows] == \
        [("grace_hopper.jpg", "ok", "0", expected), ("notes.txt", "error", "", "")]
    ok = rows[0]
    assert sum(float(ok[f"p_{c}"]) for c in CLASSES) == pytest.approx(1, abs=0.01)
    assert float(ok["confidence"]) == pytest.approx(max(float(ok[f"p_{c}"]) for c in CLASSES), abs=1e-3)
    assert float(ok["x"]) == pytest.approx(183, abs=15) and float(ok["w"]) == pytest.approx(170, abs=20)
    assert ok["right_eye_x"] and ok["time"] == "" and rows[1]["error"] == note["error"]

    name, body = _download(browser, "dl-json")
    assert name == "photos.poster-fer.json"
    records = json.loads(body)
    assert [list(r) for r in records] == [list(RECORD_KEYS)] * 2
    assert records[0]["label"] == expected and set(records[0]["scores"]) == set(CLASSES)
    assert len(records[0]["box"]) == 4 and records[1]["status"] == "error"


def test_dropped_files_wait_out_a_busy_server(server, browser):
    from selenium.webdriver.common.by import By

    expected = _expected_label(server)
    browser.get(server + "/")
    _wait(browser, lambda d: "poster_v1_tiny" in d.find_element(By.ID, "model").text)
    # The first upload is answered 503 queue_full with Retry-After: 1 (as a busy server answers); the page must
    # wait and send it again. Then the files arrive the way a drag from the desktop brings them: a drop event.
    browser.execute_script("""
        window.__predicts = 0; window.__busySeen = false;
        const real = window.fetch.bind(window);
        window.fetch = (url, opts) => {
            if (String(url).endsWith('/v1/predict') && window.__predicts++ === 0)
                return Promise.resolve(new Response(JSON.stringify({error: {kind: 'queue_full', message: 'busy'}}),
                    {status: 503, headers: {'Retry-After': '1', 'Content-Type': 'application/json'}}));
            return real(url, opts);
        };
        new MutationObserver(() => { if (/server is busy/.test(document.body.textContent)) window.__busySeen = true; })
            .observe(document.body, {subtree: true, childList: true, characterData: true});
        const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], 'portrait.jpg', {type: 'image/jpeg'}));
        dt.items.add(new File(['GIF89a not really'], 'anim.gif', {type: 'image/gif'}));
        document.body.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));""",
                           base64.b64encode(sample_path().read_bytes()).decode())
    _wait(browser, lambda d: _done(d, 2))
    photo, gif = _cards(browser)
    assert (photo["name"], photo["labels"]) == ("portrait.jpg", [expected])
    assert browser.execute_script("return [window.__predicts, window.__busySeen]") == [3, True]
    assert gif["state"] == "error" and gif["error"].startswith("GIF pictures are not supported here: save it as JPEG")


def _write_mp4(path, seconds: float = 3.0, fps: int = 10) -> None:
    """A short H.264 video of the sample portrait (what phones and browsers record), made with PyAV."""
    try:
        import av
    except ImportError:
        if _require():
            pytest.fail("PyAV is not installed (pip install av)")
        pytest.skip("needs PyAV (pip install av)")
    rgb = np.asarray(Image.open(sample_path()).convert("RGB"))
    with av.open(str(path), "w") as c:
        stream = c.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = rgb.shape[1], rgb.shape[0], "yuv420p"
        for i in range(int(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            c.mux(stream.encode(frame))
        c.mux(stream.encode(None))


def test_a_video_is_sampled_labelled_and_drawn_on_a_timeline(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    expected = _expected_label(server)
    clip = tmp_path / "clip.mp4"
    _write_mp4(clip)
    browser.get(server + "/")
    _wait(browser, lambda d: "poster_v1_tiny" in d.find_element(By.ID, "model").text)
    before = _images_answered(server)
    browser.find_element(By.ID, "videofile").send_keys(str(clip))
    timeline = browser.find_element(By.ID, "timeline")
    # 3 s at the default 2 frames a second: 6 frames, at 0, 0.5, ... 2.5 s
    _wait(browser, lambda d: "6 of 6 frames analysed" in d.find_element(By.ID, "status").text, timeout=60)
    assert (timeline.get_attribute("data-frames"), timeline.get_attribute("data-failed")) == ("6", "0")
    assert _images_answered(server) - before == 6
    assert "at most 300" in browser.find_element(By.ID, "vnote").text
    assert browser.find_element(By.ID, "vcancel").text == "Analyse again"
    # the chart: lines in the classes' colours (saturated pixels; the grid and axes are grey)
    coloured = browser.execute_script("""
        const c = document.getElementById('timeline'), d = c.getContext('2d').getImageData(0, 0, c.width,
            c.height).data;
        let n = 0; for (let i = 0; i < d.length; i += 4)
            n += d[i + 3] > 200 && Math.max(d[i], d[i + 1], d[i + 2]) - Math.min(d[i], d[i + 1], d[i + 2]) > 80;
        return n;""")
    assert coloured > 300
    # the player stands at 0 s: the first frame's box is drawn over it, and its face listed
    (box,) = _boxes(browser)
    assert box["label"].split()[0] == expected  # "label 93.1%", or the label alone on a small player
    assert box["x"] / (box["mw"] / 512) == pytest.approx(183, abs=15)
    assert browser.find_element(By.ID, "facestitle").text == "Faces at 0 s"
    # clicking the chart moves the player, and the boxes follow the nearest analysed frame
    browser.execute_script("""
        const c = document.getElementById('timeline'), r = c.getBoundingClientRect();
        c.dispatchEvent(new MouseEvent('click', {clientX: r.left + 40 + (r.width - 50) * 0.5, clientY: r.top + 50,
                                                 bubbles: true}));""")
    _wait(browser, lambda d: d.find_element(By.ID, "facestitle").text == "Faces at 1.5 s")

    _catch_downloads(browser)
    name, body = _download(browser, "dl-csv")
    assert name == "clip.poster-fer.csv"
    rows = list(csv.DictReader(io.StringIO(body)))
    assert [(r["source"], r["time"], r["status"], r["label"]) for r in rows] == \
        [("clip.mp4", t, "ok", expected) for t in ("0", "0.5", "1", "1.5", "2", "2.5")]
    # boxes in the video's own pixels (512 x 600), whatever size the frames were sent at
    assert all(float(r["x"]) == pytest.approx(183, abs=15) for r in rows)
