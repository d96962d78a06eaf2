"""Annotated videos that play (H.264 + the source's audio), per-video summaries and timelines, and the record format
taken from ``--output``'s extension.

Sources are tiny videos made here with PyAV (32 frames of 96x80 at 16 fps, a 440 Hz sine as sound). Without PyAV
the tests that need it skip, except in CI (``POSTER_FER_REQUIRE_SHARED=1``), where they fail: PyAV comes with the
project's test install there. The browser test plays the output in headless Chromium like
tests/test_serve_browser.py (skips without a browser, fails in CI).
"""

from __future__ import annotations

import csv
import io
import json
import struct
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import _require, browser_paths, headless_chromium
from poster_fer import create_model, save_model
from poster_fer.faces import get_geometry
from poster_fer.inference import video_out
from poster_fer.inference.recognizer import FaceResult
from poster_fer.inference.records import (
    RecordWriter,
    VideoPosition,
    error_record,
    face_record,
    format_for_path,
    no_face_record,
)
from poster_fer.inference.summary import VideoTimeline, plot_timeline, summarize_records, summary_line
from poster_fer.inference.video_out import AnnotatedVideo, pad_to_even
from poster_fer_apps.cli import main

FPS, W, H, N = 16, 96, 80, 32
CLASSES = ["neutral", "happy", "sad"]


def _av():
    """The av module, or skip (fail in CI)."""
    try:
        import av
    except ImportError:
        if _require():
            pytest.fail("PyAV is not installed (pip install av)")
        pytest.skip("needs PyAV (pip install av)")
    return av


def make_video(path, frames=N, w=W, h=H, fps=FPS, audio="aac", vcodec="mpeg4"):
    """A test video: a grey level ramp (frame i has level 8*i) with a square moving across, and ``audio``
    (an audio codec name, or None) carrying a sine as long as the video."""
    av = _av()
    with av.open(str(path), "w") as c:
        vs = c.add_stream(vcodec, rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        a = c.add_stream(audio, rate=44_100, layout="mono") if audio else None
        for i in range(frames):
            img = np.full((h, w, 3), (8 * i) % 256, np.uint8)
            img[10:30, 2 * i % (w - 20):2 * i % (w - 20) + 20] = (250, 40, 40)
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = i
            c.mux(vs.encode(f))
        c.mux(vs.encode(None))
        if a is not None:
            total = int(44_100 * frames / fps)
            wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(total) / 44_100)).astype(np.float32)
            for s in range(0, total, 1024):
                fr = av.AudioFrame.from_ndarray(wave[None, s:s + 1024], format="flt", layout="mono")
                fr.sample_rate, fr.pts = 44_100, s
                c.mux(a.encode(fr))
            c.mux(a.encode(None))
    return path


def probe(path):
    """What a player sees: per stream its codec, pixel format, size, frames decoded and duration in seconds."""
    av = _av()
    info = {}
    with av.open(str(path)) as c:
        for s in c.streams:
            entry = {"codec": s.codec_context.name, "duration": float(s.duration * s.time_base)}
            if s.type == "video":
                frames = list(c.decode(s))
                entry.update(pix_fmt=s.codec_context.pix_fmt, size=(s.codec_context.width, s.codec_context.height),
                             frames=len(frames), first=frames[0].to_ndarray(format="rgb24"))
                c.seek(0)
            info[s.type] = entry
    return info


def top_level_atoms(path):
    data, atoms, i = path.read_bytes(), [], 0
    while i + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[i:i + 8])
        atoms.append(kind.decode("latin-1"))
        i += size if size else len(data)
    return atoms


def write_frames(out, src, frames=N, size=(W, H), **kw):
    video = AnnotatedVideo(out, FPS, audio_from=src, **kw)
    for i in range(frames):
        video.write(np.full((size[1], size[0], 3), (7 * i) % 256, np.uint8))
    video.close()
    return video


# ---------------------------------------------------------------------------------------------------------
# the video writer


def test_h264_yuv420p_faststart_with_the_audio_copied(tmp_path):
    src = make_video(tmp_path / "src.mp4")
    video = write_frames(tmp_path / "out.mp4", src)
    assert (video.error, video.encoder, video.audio, video.frames) == (None, "libx264", "copied aac", N)
    info = probe(tmp_path / "out.mp4")
    assert info["video"]["codec"] == "h264" and info["video"]["pix_fmt"] == "yuv420p"
    assert info["video"]["frames"] == N and info["video"]["size"] == (W, H)
    assert info["video"]["duration"] == pytest.approx(N / FPS, abs=1e-3)
    assert info["audio"]["codec"] == "aac"
    assert info["audio"]["duration"] == pytest.approx(N / FPS, abs=0.03)  # cut at the video's end (AAC frames)
    atoms = top_level_atoms(tmp_path / "out.mp4")
    assert atoms.index("moov") < atoms.index("mdat")  # faststart: the index first


def test_audio_other_than_aac_is_reencoded_and_no_audio_stays_none(tmp_path):
    pcm = make_video(tmp_path / "src.mov", audio="pcm_s16le")
    video = write_frames(tmp_path / "pcm.mp4", pcm)
    assert video.audio == "aac from pcm_s16le"
    info = probe(tmp_path / "pcm.mp4")
    assert info["audio"]["codec"] == "aac" and info["audio"]["duration"] == pytest.approx(N / FPS, abs=0.05)

    silent = make_video(tmp_path / "silent.mp4", audio=None)
    video = write_frames(tmp_path / "silent_out.mp4", silent)
    assert video.audio is None and video.error is None
    assert set(probe(tmp_path / "silent_out.mp4")) == {"video"}


def test_audio_is_cut_to_the_frames_written_and_every_keeps_the_duration(tmp_path):
    src = make_video(tmp_path / "src.mp4")
    write_frames(tmp_path / "half.mp4", src, frames=N // 2)  # --max-frames: half the video
    info = probe(tmp_path / "half.mp4")
    assert info["video"]["frames"] == N // 2
    assert info["audio"]["duration"] == pytest.approx(N / FPS / 2, abs=0.03)
    write_frames(tmp_path / "every2.mp4", src, frames=N // 2, every=2)  # every 2nd frame at half the rate
    info = probe(tmp_path / "every2.mp4")
    assert info["video"]["duration"] == pytest.approx(N / FPS, abs=1e-3)
    assert info["audio"]["duration"] == pytest.approx(N / FPS, abs=0.03)


def test_odd_sizes_are_padded_with_their_edge(tmp_path):
    rgb = np.zeros((79, 95, 3), np.uint8)
    rgb[:, -1] = (200, 10, 10)
    rgb[-1, :] = (10, 200, 10)
    padded = pad_to_even(rgb)
    assert padded.shape == (80, 96, 3)
    assert (padded[:79, 95] == padded[:79, 94]).all() and (padded[79] == padded[78]).all()
    assert pad_to_even(padded) is padded
    _av()
    video = AnnotatedVideo(tmp_path / "odd.mp4", 10.0)
    for _ in range(5):
        video.write(np.ascontiguousarray(rgb))
    video.close()
    info = probe(tmp_path / "odd.mp4")
    assert video.error is None and info["video"]["size"] == (96, 80) and info["video"]["frames"] == 5
    first = info["video"]["first"].astype(int)
    assert abs(first[40, 95] - (200, 10, 10)).max() < 40  # the padded column repeats the red edge
    assert abs(first[79, 40] - (10, 200, 10)).max() < 40


def test_without_pyav_the_opencv_writer_is_used_with_one_warning(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(video_out, "have_pyav", lambda: False)
    monkeypatch.setattr(video_out, "_warned", set())
    first = write_frames(tmp_path / "a.mp4", None, frames=4)
    second = write_frames(tmp_path / "b.mp4", None, frames=4)
    assert first.encoder in ("mp4v", "MJPG") and first.error is None and first.path.exists()
    assert second.path.exists() and first.audio is None
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "browsers" in err and "pip install av" in err


def test_an_unwritable_path_is_one_error(tmp_path):
    _av()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    video = AnnotatedVideo(blocker / "out.mp4", 10.0)
    video.write(np.zeros((8, 8, 3), np.uint8))
    video.close()
    assert video.error and "out.mp4" in video.error and "\n" not in video.error


# ---------------------------------------------------------------------------------------------------------
# summaries


def _probs(label: str, p: float = 0.7) -> dict[str, float]:
    rest = (1 - p) / (len(CLASSES) - 1)
    return {c: (p if c == label else rest) for c in CLASSES}


def _face(label: str, p: float = 0.7, box=(10.0, 10.0, 40.0, 40.0)) -> FaceResult:
    return FaceResult(box=box, landmarks=None, score=0.9, label=label, probabilities=_probs(label, p))


def script_records(every: int = 1, fps: float = 10.0):
    """A video whose expression changes at known frames (hand count in the test below):
    track 1 frames 0-19: happy for 0-11 (raw p 0.7), sad for 12-19 (raw p 0.6); track 2 frames 5-9 neutral
    (raw p 0.8); frames 20-24 no face; frame 25 fails. Smoothed scores differ from the raw ones on purpose:
    the label follows the smoothed scores, the means the raw ones."""
    recs = []
    for f in range(0, 26 * every, every):
        i, t = f // every, f / fps
        if i == 25:
            recs.append(error_record("clip.mp4", "clip.mp4: bad frame", frame=f, time=t))
            continue
        if i >= 20:
            recs.append(no_face_record("clip.mp4", frame=f, time=t))
            continue
        label, raw_p = ("happy", 0.7) if i < 12 else ("sad", 0.6)
        recs.append(face_record("clip.mp4", 0, _face(label, raw_p), VideoPosition(f, t, 1), scores=_probs(label, 0.5)))
        if 5 <= i <= 9:
            recs.append(face_record("clip.mp4", 1, _face("neutral", 0.8, box=(60, 10, 30, 30)), VideoPosition(f, t, 2),
                                    scores=_probs("neutral", 0.9)))
    return recs


def test_summary_against_a_hand_count():
    s = summarize_records(script_records(), CLASSES, fps=10.0, every=1)
    assert (s["frames"], s["seconds"], s["frames_with_face"], s["frames_failed"], s["face_frames"]) == \
        (25, 2.5, 20, 1, 25)
    assert s["shares"] == {"neutral": 0.2, "happy": 0.48, "sad": 0.32} and s["dominant"] == "happy"
    # mean of the raw (calibrated, unsmoothed) probabilities: 12 frames happy 0.7, 8 sad 0.6, 5 neutral 0.8
    happy = (12 * 0.7 + 8 * 0.2 + 5 * 0.1) / 25
    assert s["mean_probabilities"]["happy"] == pytest.approx(happy, abs=1e-4)
    t1, t2 = s["tracks"]
    assert (t1["track"], t1["frames"], t1["seconds"], t1["start"], t1["end"]) == (1, 20, 2.0, 0.0, 2.0)
    assert t1["shares"] == {"neutral": 0.0, "happy": 0.6, "sad": 0.4} and t1["dominant"] == "happy"
    assert t1["mean_probabilities"]["sad"] == pytest.approx((12 * 0.15 + 8 * 0.6) / 20, abs=1e-4)
    assert (t2["track"], t2["frames"], t2["seconds"], t2["first_frame"], t2["last_frame"]) == (2, 5, 0.5, 5, 9)
    assert (t2["start"], t2["end"], t2["dominant"], t2["shares"]["neutral"]) == (0.5, 1.0, "neutral", 1.0)


def test_face_record_still_takes_frame_time_and_track_with_a_warning():
    face = _face("happy")
    new = face_record("clip.mp4", 0, face, VideoPosition(frame=12, time=1.2345, track=3), scores=_probs("sad"))
    assert (new["frame"], new["time"], new["track"], new["label"]) == (12, 1.234, 3, "sad")
    with pytest.warns(DeprecationWarning, match="VideoPosition"):
        old = face_record("clip.mp4", 0, face, frame=12, time=1.2345, track=3, scores=_probs("sad"))
    assert old == new
    image = face_record("photo.jpg", 1, face)
    assert (image["frame"], image["time"], image["track"], image["face"]) == (None, None, None, 1)
    with pytest.raises(TypeError, match="either"):
        face_record("clip.mp4", 0, face, VideoPosition(frame=1), frame=1)
    with pytest.raises(TypeError, match="tracks"):
        face_record("clip.mp4", 0, face, tracks=1)


def test_summary_reads_fps_and_every_off_the_records():
    s = summarize_records(script_records(every=3, fps=30.0), CLASSES)
    assert (s["every"], s["fps"], s["frame_interval"]) == (3, 30.0, 0.1)
    assert (s["frames"], s["seconds"], s["tracks"][0]["seconds"], s["tracks"][1]["end"]) == (25, 2.5, 2.0, 1.0)
    assert s["source"] == "clip.mp4"


def test_summary_line_and_a_video_without_faces():
    line = summary_line(summarize_records(script_records(), CLASSES, fps=10.0))
    assert line == "clip.mp4: happy 48%, sad 32%, neutral 20% (dominant happy; 2.5 s, 2 tracks)"
    empty = summarize_records([no_face_record("x.mp4", frame=i, time=i / 5) for i in range(10)], CLASSES)
    assert (empty["dominant"], empty["face_frames"], empty["tracks"]) == (None, 0, [])
    assert summary_line(empty) == "x.mp4: no face found (2.0 s)"


def _colour_pixels(png, rgb, tol=12):
    img = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return int((np.abs(img - np.asarray(rgb)).max(axis=2) <= tol).sum())


def test_timeline_png_shows_the_bands(tmp_path):
    pytest.importorskip("matplotlib")
    from poster_fer.inference.annotate import class_colour

    timeline = VideoTimeline("clip.mp4", CLASSES, fps=10.0, every=1, table=tmp_path / "clip.frames.csv")
    for r in script_records():
        timeline.add(r)
    timeline.close()
    written = timeline.save(tmp_path / "clip.mp4")
    assert [p.name for p in written] == ["clip.summary.json", "clip.timeline.png"]
    with Image.open(written[1]) as img:
        img.verify()
    with Image.open(written[1]) as img:
        assert img.format == "PNG" and img.size[0] >= 600 and img.size[1] >= 200
    assert json.loads(written[0].read_text())["shares"]["happy"] == 0.48
    happy, sad, neutral = (_colour_pixels(written[1], class_colour(CLASSES.index(c))) for c in ("happy", "sad",
                                                                                                 "neutral"))
    assert happy > sad > 0 and neutral > 0  # smoothed happy 0.5 over 12 frames > sad 0.5 over 8
    rows = list(csv.DictReader(io.StringIO((tmp_path / "clip.frames.csv").read_text())))
    assert len(rows) == 31 and rows[0]["time"] == "0.0" and rows[0]["p_happy"] == "0.5"


def test_timeline_without_matplotlib_is_one_line(tmp_path, monkeypatch, capsys):
    from poster_fer.inference import summary

    monkeypatch.setattr(summary, "_warned", set())
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg", "matplotlib.patches"):
        monkeypatch.setitem(sys.modules, name, None)
    timeline = VideoTimeline("clip.mp4", CLASSES, fps=10.0)
    for r in script_records():
        timeline.add(r)
    assert not plot_timeline(timeline, tmp_path / "t.png")
    assert [p.name for p in timeline.save(tmp_path / "clip.mp4")] == ["clip.summary.json"]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "matplotlib is not installed" in err


# ---------------------------------------------------------------------------------------------------------
# record formats


def test_json_writer_is_one_array_even_when_empty():
    buf = io.StringIO()
    with RecordWriter(buf, "json", CLASSES) as w:
        for r in script_records()[:3]:
            w.write(r)
    records = json.loads(buf.getvalue())
    assert len(records) == 3 and records[0]["track"] == 1
    buf = io.StringIO()
    RecordWriter(buf, "json", CLASSES).close()
    assert json.loads(buf.getvalue()) == []
    assert [format_for_path(p) for p in ("a.JSONL", "a.json", "b.csv", "c.txt", "d")] == \
        ["jsonl", "json", "csv", None, None]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("poster_v1_tiny", num_classes=3, input_size=56, backbone_size=56, classes=CLASSES)
    with torch.no_grad():
        model.head.linear.weight.mul_(30.0)
    prep = {"input_size": 56, "crop_geometry": get_geometry("rafdb").to_dict(), "grayscale": False}
    return str(save_model(model, tmp_path_factory.mktemp("ckpt") / "tiny", preprocessing=prep))


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "face.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 60, 3), dtype=np.uint8)).save(path)
    return path


def _predict(ckpt, *args):
    return main(["predict", *map(str, args), "--weights", ckpt, "--no-detect", "--no-progress"])


@pytest.mark.usefixtures("one_thread")
def test_output_format_follows_the_extension(ckpt, photo, tmp_path, capsys):
    for name, parse in (("r.json", json.loads), ("r.csv", lambda t: list(csv.DictReader(io.StringIO(t)))),
                        ("r.jsonl", lambda t: [json.loads(line) for line in t.splitlines()])):
        assert _predict(ckpt, photo, "--output", tmp_path / name) == 0
        (record,) = parse((tmp_path / name).read_text())
        assert record["source"] == str(photo)
    assert _predict(ckpt, photo, "--output", tmp_path / "r.txt", "--format", "csv") == 0  # --format names it
    assert (tmp_path / "r.txt").read_text().startswith("source,frame,time")
    assert _predict(ckpt, photo, "--output", tmp_path / "R.CSV", "--format", "csv") == 0  # agreeing is fine
    capsys.readouterr()


def test_unknown_or_contradicting_extensions_are_refused(photo, tmp_path, capsys):
    # refused before any model is loaded (no --weights needed to see it)
    assert main(["predict", str(photo), "--output", str(tmp_path / "results.txt")]) == 2
    err = capsys.readouterr().err
    assert "results.txt" in err and ".jsonl, .json, .csv" in err and "--format" in err and "Traceback" not in err
    assert main(["predict", str(photo), "--output", str(tmp_path / "results.csv"), "--format", "jsonl"]) == 2
    err = capsys.readouterr().err
    assert "results.csv" in err and "--format is jsonl" in err
    assert main(["predict", str(photo), "--output", str(tmp_path / "noext")]) == 2
    assert "no extension" in capsys.readouterr().err
    assert not (tmp_path / "results.txt").exists() and not (tmp_path / "results.csv").exists()


# ---------------------------------------------------------------------------------------------------------
# the command end to end


@pytest.mark.usefixtures("one_thread")
def test_predict_video_writes_h264_summary_timeline_and_table(ckpt, tmp_path, capsys):
    src = make_video(tmp_path / "clip.mp4")
    out = tmp_path / "out"
    assert _predict(ckpt, src, "--out", out, "--output", tmp_path / "records.jsonl", "--ema", "1") == 0
    err = capsys.readouterr().err
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert len(records) == N and all(r["track"] == records[0]["track"] for r in records)

    info = probe(out / "clip.mp4")
    assert (info["video"]["codec"], info["video"]["frames"], info["audio"]["codec"]) == ("h264", N, "aac")
    assert info["video"]["duration"] == pytest.approx(N / FPS, abs=1e-3)

    summary = json.loads((out / "clip.summary.json").read_text())
    counts = {c: sum(r["label"] == c for r in records) for c in CLASSES}
    assert summary["shares"] == {c: round(n / N, 4) for c, n in counts.items()}
    assert summary["dominant"] == max(CLASSES, key=lambda c: (counts[c], summary["mean_probabilities"][c]))
    assert (summary["frames"], summary["seconds"], summary["fps"]) == (N, N / FPS, FPS)
    for c in CLASSES:
        assert summary["mean_probabilities"][c] == pytest.approx(np.mean([r["raw_scores"][c] for r in records]),
                                                                 abs=1e-3)
    rows = list(csv.DictReader(io.StringIO((out / "clip.frames.csv").read_text())))
    assert [float(r["time"]) for r in rows] == pytest.approx([i / FPS for i in range(N)], abs=1e-3)
    if _has_matplotlib():
        assert (out / "clip.timeline.png").stat().st_size > 1000
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"  {src}: ") and f"(dominant {summary['dominant']}; 2.0 s, 1 track)" in last


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------------------------------------------
# playback in a browser




@pytest.mark.slow
def test_chromium_plays_the_annotated_video_with_sound(tmp_path):
    browser_paths()  # skip (or fail on CI) before encoding a video when there is no browser

    src = make_video(tmp_path / "src.mp4")
    video = write_frames(tmp_path / "annotated.mp4", src)
    assert video.encoder == "libx264"
    page = tmp_path / "page.html"
    page.write_text(f'<video id="v" muted preload="auto" src="{(tmp_path / "annotated.mp4").as_uri()}"></video>')
    driver = headless_chromium(tmp_path / "profile", "--autoplay-policy=no-user-gesture-required")
    try:
        driver.get(page.as_uri())
        state = _until(driver, "const v = document.getElementById('v'); return [v.readyState, v.duration, "
                       "v.videoWidth, v.error && v.error.code];", lambda r: r[0] >= 2 or r[3])
        ready, duration, width, error = state
        assert error is None and ready >= 2  # HAVE_CURRENT_DATA: a frame is decoded (MPEG-4 Part 2: error 4)
        assert duration == pytest.approx(N / FPS, abs=0.05) and width == W  # the picture, not only the sound
        played = driver.execute_async_script(
            "const done = arguments[arguments.length - 1]; const v = document.getElementById('v');"
            "v.play().then(() => setTimeout(() => done([v.currentTime, v.webkitAudioDecodedByteCount, "
            "v.webkitVideoDecodedByteCount]), 600), e => done(String(e)));")
        assert isinstance(played, list), played
        current, audio_bytes, video_bytes = played
        assert current > 0.2 and audio_bytes > 0 and video_bytes > 0
    finally:
        driver.quit()


def _until(driver, script, ok, timeout=20.0):
    deadline = time.monotonic() + timeout
    while True:
        result = driver.execute_script(script)
        if ok(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.1)
