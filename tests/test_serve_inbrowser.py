"""The served page's in-browser mode (issue 38): ``poster-fer serve``'s page labels photos inside the browser with
poster_fer.js on ONNX Runtime Web, from the server's own model and detector files under ``/web/``, and never calls
``POST /v1/predict`` while doing so; without WebAssembly it says so and labels on the server.

The server runs the default model on ONNX Runtime (the same ONNX file the browser runs), on loopback only; the
browser is headless Chromium via Selenium (as tests/test_serve_browser.py). Without a browser the browser tests skip,
except where ``POSTER_FER_REQUIRE_SHARED=1`` (CI), where they fail. The route tests need no browser.
"""

from __future__ import annotations

import csv
import io
import re
import signal
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import headless_chromium
from poster_fer import Recognizer
from poster_fer.faces import load_image
from poster_fer.samples import sample_path
from poster_fer_apps.serve import ServeSettings, create_app
from test_serve import FakeBackend, serve, start_server, stop_server
from test_serve_browser import _write_mp4, write_y4m
from test_web import group_photo

# The portrait's probabilities move by at most 3.1e-4 when its landmarks move by the +-6e-5 px that separate the
# browser's YuNet from OpenCV's (benchmarks/results/robustness/landmark_noise-*.json), so the end-to-end 1e-3
# holds for this photo on any CPU; other faces can move more (tests/test_web.py, END_TO_END_TOL).
PROB_TOL = 1e-3
BOX_TOL = 1.0  # pixels
WAIT_S = 90.0  # the longest any one step may take (a cold load compiles 15 MB of WebAssembly)


# -- the routes, in process (no browser) ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def onnx_rec():
    return Recognizer.from_checkpoint(backend="onnxruntime")


def test_model_files_follow_the_api_key_and_the_runtime_is_public(onnx_rec):
    app = create_app(onnx_rec, ServeSettings(api_key="s3cret"))

    async def go(c):
        out = {}
        for path in ("/web/poster_fer.js", "/web/ort/ort.wasm.min.mjs", "/web/detector.onnx", "/web/model.onnx",
                     "/web/model.json", "/web/ort/..%2Fexport.py", "/web/ort/runtime.json"):
            out[path] = (await c.get(path)).status_code
        keyed = await c.get("/web/model.json", headers={"X-API-Key": "s3cret"})
        model = await c.get("/web/model.onnx", headers={"Authorization": "Bearer s3cret"})
        wasm = await c.get("/web/ort/ort-wasm-simd-threaded.wasm")
        again = await c.get("/web/ort/ort-wasm-simd-threaded.wasm", headers={"If-None-Match": wasm.headers["etag"]})
        return out, keyed, model, (wasm, again)

    codes, keyed, model, (wasm, again) = serve(app, go)
    # a second visit revalidates the 15 MB runtime instead of downloading it again
    assert wasm.status_code == 200 and len(wasm.content) > 10_000_000 and wasm.headers["cache-control"] == "no-cache"
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == wasm.headers["etag"]
    assert codes == {"/web/poster_fer.js": 200, "/web/ort/ort.wasm.min.mjs": 200, "/web/detector.onnx": 200,
                     "/web/model.onnx": 401, "/web/model.json": 401, "/web/ort/..%2Fexport.py": 404,
                     "/web/ort/runtime.json": 404}  # only the pinned runtime files are served from that folder
    card = keyed.json()
    assert keyed.status_code == 200 and card["classes"] == onnx_rec.classes
    assert card["operating_point"] == "default" and card["files"]["model"] == "/web/model.onnx"
    assert card["detector"]["detect_size"] == onnx_rec.detect_size and card["detector"]["max_faces"] > 0
    assert model.status_code == 200 and model.content == onnx_rec.backend.path.read_bytes()
    assert model.headers["content-type"] == "application/octet-stream"


def test_the_browser_detects_with_the_servers_threshold():
    """``serve --threshold 0.8``: the page's detector in browser mode uses 0.8 too (YuNetDetector states it)."""
    rec = Recognizer.from_checkpoint(backend="onnxruntime", score_threshold=0.8, operating_point="balanced")

    card = serve(create_app(rec), lambda c: c.get("/web/model.json")).json()
    assert card["detector"]["score_threshold"] == pytest.approx(0.8)
    assert card["operating_point"] == "balanced"


def test_browser_mode_is_unavailable_without_an_onnx_file_and_says_why():
    app = create_app(Recognizer(FakeBackend()))  # a model with no ONNX file (as a PyTorch checkpoint of your own)

    async def go(c):
        return await c.get("/web/model.json"), await c.get("/web/model.onnx"), await c.get("/web/poster_fer.js")

    card, model, script = serve(app, go)
    assert card.status_code == 404 and card.json()["error"]["kind"] == "browser_unavailable"
    assert "has no ONNX file" in card.json()["error"]["message"]
    assert model.status_code == 404 and script.status_code == 200


# -- in the browser -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server():
    # a 3-megapixel limit, so the "too big" case needs no 50-megapixel file (the photos here are at most 1 MP)
    proc, url = start_server("--backend", "onnxruntime", "--max-pixels", "3000000")
    yield url
    code, err = stop_server(proc, signal.SIGTERM)
    assert code == 0, err


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chromium")
    camera = tmp / "portrait.y4m"
    write_y4m(camera, load_image(sample_path()))
    driver = headless_chromium(tmp / "profile", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                               f"--use-file-for-fake-video-capture={camera}", script_timeout=60)
    yield driver
    driver.quit()


def _wait(driver, predicate, timeout: float = WAIT_S):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1,
                         ignored_exceptions=(StaleElementReferenceException,)).until(lambda d: predicate(d))


def _predicts(url: str) -> int:
    """POST /v1/predict requests the server has answered (any status), from its /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(int(n) for n in re.findall(r'^poster_fer_http_requests_total\{route="/v1/predict",[^}]*\} (\d+)$',
                                          text, re.M))


def _predicts_settle(url: str, expected: int, timeout: float = 10.0) -> int:
    """The /v1/predict count once it reaches ``expected`` (or the timeout): the server counts a request when its
    response has been sent, which can be a moment after the page already shows the answer."""
    deadline = time.monotonic() + timeout
    while (count := _predicts(url)) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return count


def _note(driver) -> str:
    return driver.execute_script("return document.getElementById('wherenote').textContent")


def _open(driver, url: str, where: str) -> None:
    """The page with ``where`` chosen (remembered in localStorage, as the select does), ready to label."""
    driver.get(url + "/")
    driver.execute_script("localStorage.setItem('poster-fer-where', arguments[0])", where)
    driver.get(url + "/")
    _wait(driver, lambda d: "poster_v1_mfn64" in d.find_element("id", "model").text)
    assert driver.find_element("id", "where").get_attribute("value") == where
    if where == "browser":
        _wait(driver, lambda d: "Labelling in this browser" in _note(d) or "not available" in _note(d))


def _faces(driver, index: int = 0) -> list[dict]:
    return driver.execute_script("return state.results.items[arguments[0]].faces", index)


def _label_one(driver, path) -> list[dict]:
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "file").send_keys(str(path))
    _wait(driver, lambda d: d.execute_script("const r = state.results; return !!(r && r.items[0].done)"))
    return _faces(driver)


@pytest.mark.slow
def test_browser_mode_labels_the_portrait_as_the_server_does_without_calling_it(server, browser):
    _open(browser, server, "server")
    (on_server,) = _label_one(browser, sample_path())
    assert browser.find_element("id", "status").text.endswith("labelled on the server.")
    assert "server total" in browser.find_element("id", "meter").text

    _open(browser, server, "browser")
    assert "Labelling in this browser" in _note(browser)
    before = _predicts(server)
    (here,) = _label_one(browser, sample_path())
    status = browser.find_element("id", "status").text
    assert status == "grace_hopper.jpg: 1 face (512\u00d7600), labelled in this browser.", status
    assert browser.find_element("id", "meter").text.startswith("detect")
    assert "total in this browser" in browser.find_element("id", "meter").text
    assert _predicts(server) == before  # nothing was sent to /v1/predict
    assert here["label"] == on_server["label"] and here["detection"] == on_server["detection"] == "detector"
    assert list(here["scores"]) == list(on_server["scores"])  # the model's class order, as the server answers
    assert max(abs(here["scores"][c] - p) for c, p in on_server["scores"].items()) <= PROB_TOL
    assert np.abs(np.subtract(here["box"], on_server["box"])).max() <= BOX_TOL
    assert np.abs(np.subtract(here["landmarks"], on_server["landmarks"])).max() <= BOX_TOL
    assert here["score"] == pytest.approx(on_server["score"], abs=1e-3)
    labels = browser.execute_script(
        "return [...document.querySelectorAll('#faces .face .label')].map((e) => e.textContent)")
    assert labels == [on_server["label"]] and len(browser.find_elements("css selector", "#overlay .box")) == 1


@pytest.mark.slow
def test_several_photos_in_browser_mode_fill_the_cards_and_the_downloads(server, browser, tmp_path):
    group = tmp_path / "group16.png"
    Image.fromarray(group_photo(load_image(sample_path()))).save(group)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    _open(browser, server, "browser")
    before = _predicts(server)
    browser.find_element("id", "file").send_keys(f"{sample_path()}\n{group}\n{notes}")
    _wait(browser, lambda d: d.execute_script(
        "const r = state.results; return !!(r && r.items.length === 3 && r.items.every((it) => it.done))"))
    cards = browser.execute_script("""
        return [...document.querySelectorAll('#cards .card')].map((c) => ({
            state: c.dataset.state, where: c.dataset.where || null, status: c.querySelector('.cstatus').textContent,
            labels: [...c.querySelectorAll('.cfaces .label')].map((e) => e.textContent),
            error: (c.querySelector('.cerror') || {}).textContent || null}));""")
    assert [c["state"] for c in cards] == ["done", "done", "error"]
    assert [c["where"] for c in cards[:2]] == ["browser", "browser"]
    assert cards[0]["status"] == "1 face \u00b7 512\u00d7600 \u00b7 in this browser" and len(cards[0]["labels"]) == 1
    assert cards[1]["status"].startswith("16 faces") and len(cards[1]["labels"]) == 16
    assert cards[2]["error"].startswith("This file is not a picture we can read.")
    assert "2 of 3 photos labelled in this browser" in browser.find_element("id", "status").text
    assert _predicts(server) == before
    rows = list(csv.DictReader(io.StringIO(browser.execute_script("return toCsv(records())"))))
    assert [(r["source"], r["status"]) for r in rows] == \
        [("grace_hopper.jpg", "ok")] + [("group16.png", "ok")] * 16 + [("notes.txt", "error")]
    assert all(r["label"] and float(r["confidence"]) > 0 for r in rows[:17])
    assert not browser.find_element("id", "dl-csv").get_attribute("disabled")


@pytest.mark.slow
def test_video_and_webcam_in_browser_mode_send_nothing_to_the_server(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    clip = tmp_path / "clip.mp4"
    _write_mp4(clip)
    _open(browser, server, "browser")
    before = _predicts(server)
    browser.find_element(By.ID, "videofile").send_keys(str(clip))
    _wait(browser, lambda d: "6 of 6 frames analysed" in d.find_element(By.ID, "status").text)
    timeline = browser.find_element(By.ID, "timeline")
    assert (timeline.get_attribute("data-frames"), timeline.get_attribute("data-failed")) == ("6", "0")
    assert "labelled in this browser" in browser.find_element(By.ID, "vnote").text
    frames = browser.execute_script("return state.results.items.map((s) => [s.where, s.faces.length])")
    assert frames == [["browser", 1]] * 6
    assert len(browser.find_elements(By.CSS_SELECTOR, "#overlay .box")) == 1

    browser.find_element(By.ID, "cam").click()
    _wait(browser, lambda d: d.find_elements(By.ID, "fps") and d.find_elements(By.CSS_SELECTOR, "#overlay .box"))
    _wait(browser, lambda d: "total in this browser" in d.find_element(By.ID, "meter").text)
    browser.find_element(By.ID, "cam").click()
    _wait(browser, lambda d: d.find_element(By.ID, "cam").text == "Start webcam")
    assert "error" not in browser.find_element(By.ID, "status").get_attribute("class")
    assert _predicts(server) == before


@pytest.mark.slow
def test_bad_input_in_browser_mode_gives_the_servers_message(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    _open(browser, server, "browser")
    before = _predicts(server)
    notes = tmp_path / "notes.jpg"
    notes.write_text("these are notes, not a photo")
    browser.find_element(By.ID, "file").send_keys(str(notes))
    _wait(browser, lambda d: "error" in d.find_element(By.ID, "status").get_attribute("class"))
    status = browser.find_element(By.ID, "status")
    assert status.text.startswith("notes.jpg: This file is not a picture we can read."), status.text
    assert "the file is not an image" in status.get_attribute("title")
    assert browser.execute_script("return document.querySelectorAll('#overlay .box').length") == 0
    gif = tmp_path / "anim.gif"
    Image.new("RGB", (40, 40), (200, 10, 10)).save(gif)
    browser.find_element(By.ID, "file").send_keys(str(gif))
    _wait(browser, lambda d: d.find_element(By.ID, "status").text.startswith("anim.gif:"))
    assert browser.find_element(By.ID, "status").text.startswith("anim.gif: GIF pictures are not supported here")
    assert _predicts(server) == before


def _refusal_in_both_modes(driver, url: str, input_id: str, path, uploads_in_server_mode: int) -> dict[str, str]:
    """The error line the page shows for ``path`` (given to the file input ``input_id``) in server and in
    browser mode, after checking it is shown as an error and how many /v1/predict requests each mode made (none
    in browser mode). The two lines are the same sentence."""
    from selenium.webdriver.common.by import By

    shown = {}
    for where, uploads in (("server", uploads_in_server_mode), ("browser", 0)):
        _open(driver, url, where)
        before = _predicts(url)
        driver.find_element(By.ID, input_id).send_keys(str(path))
        _wait(driver, lambda d: d.find_element(By.ID, "status").text.startswith(f"{path.name}:"))
        shown[where] = driver.find_element(By.ID, "status").text
        assert "error" in driver.find_element(By.ID, "status").get_attribute("class"), shown
        assert _predicts_settle(url, before + uploads) == before + uploads
    assert shown["browser"] == shown["server"], shown
    return shown


@pytest.mark.slow
def test_a_photo_over_the_pixel_limit_reads_the_same_in_both_modes(server, browser, tmp_path):
    """Browser mode refuses what the server would (its limits from /v1/model), with the server's sentence."""
    huge = tmp_path / "huge.png"
    Image.new("RGB", (2500, 1500), (90, 120, 150)).save(huge)  # 3.75 MP, a few kB
    shown = _refusal_in_both_modes(browser, server, "file", huge, uploads_in_server_mode=1)
    assert shown["browser"].startswith("huge.png: This picture is too big for the server (at most 3 megapixels)")


@pytest.mark.slow
def test_a_video_the_browser_cannot_decode_reads_the_same_in_both_modes(server, browser, tmp_path):
    """Video is decoded by the browser in both modes: a broken file gets one sentence, nothing is sent."""
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)  # an MP4 header, then noise
    shown = _refusal_in_both_modes(browser, server, "videofile", broken, uploads_in_server_mode=0)
    assert "This browser cannot play this video" in shown["browser"]


@pytest.mark.slow
def test_without_webassembly_the_page_says_so_and_labels_on_the_server(server, browser):
    expected = httpx.post(f"{server}/v1/predict", content=sample_path().read_bytes(), timeout=30).json()
    script = browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument",
                                     {"source": "delete window.WebAssembly;"})
    try:
        _open(browser, server, "browser")
        assert browser.execute_script("return typeof WebAssembly") == "undefined"
        note = browser.find_element("id", "wherenote")
        assert note.is_displayed() and "warn" in note.get_attribute("class")
        assert note.text == ("In-browser mode is not available: this browser has no WebAssembly (it may be turned "
                             "off). Photos are labelled on the server instead.")
        before = _predicts(server)
        (face,) = _label_one(browser, sample_path())
        assert browser.find_element("id", "status").text.endswith("labelled on the server.")
        assert _predicts_settle(server, before + 1) == before + 1
        assert face["label"] == expected["faces"][0]["label"] and face["scores"] == expected["faces"][0]["scores"]
    finally:
        browser.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", {"identifier": script["identifier"]})


@pytest.mark.slow
def test_page_and_assets_are_cross_origin_isolated(server, browser):
    paths = ("/", "/web/poster_fer.js", "/web/ort/ort.wasm.min.mjs", "/web/ort/ort-wasm-simd-threaded.mjs",
             "/web/ort/ort-wasm-simd-threaded.wasm", "/web/model.json", "/web/model.onnx", "/web/detector.onnx")
    with httpx.Client(base_url=server, timeout=30) as c:
        for path in paths:
            r = c.get(path)
            assert r.status_code == 200, path
            assert r.headers["cross-origin-opener-policy"] == "same-origin", path
            assert r.headers["cross-origin-embedder-policy"] == "require-corp", path
            if path != "/":  # the pipeline's files and its workers: this origin's code and data only
                assert r.headers["content-security-policy"].startswith("default-src 'none'; script-src 'self'"), path
        csp = c.get("/").headers["content-security-policy"]
        assert c.get("/web/ort/ort-wasm-simd-threaded.wasm").headers["content-type"] == "application/wasm"
    assert "'wasm-unsafe-eval'" in csp and "worker-src 'self' blob:" in csp
    assert not re.search(r"https?://", csp)  # still nothing from another origin
    _open(browser, server, "browser")
    isolated, threads = browser.execute_script("return [self.crossOriginIsolated, here.ready && here.ready.threads]")
    assert isolated is True and threads >= 1
    assert "thread" in _note(browser)
