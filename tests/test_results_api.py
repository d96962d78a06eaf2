"""Python results that read well: short reprs, fer-style conveniences, to_dict names, to_frame, channels="bgr",
and ``--webcam`` without a camera (exit 2 with a hint, no OpenCV warnings, not counted as a video)."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import poster_fer
from poster_fer.faces import load_image, to_rgb_array
from poster_fer.inference import FaceResult, ImagePrediction, RecordWriter, Source, sources
from poster_fer.inference.job import JobOptions, JobStats, run_job
from poster_fer.samples import sample_path
from poster_fer_apps.cli import main

CLASSES = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"]


def _face(label: str = "happiness", box=(12.345678901234567, 45.67890123456789, 100.0, 120.06), score=0.9876543):
    p = np.random.default_rng(len(label)).dirichlet(np.ones(len(CLASSES)))
    p[CLASSES.index(label)] = p.max() + 0.5  # this label wins
    p = p / p.sum()
    return FaceResult(box=box, landmarks=np.arange(10, dtype=np.float64).reshape(5, 2) / 3, score=score, label=label,
                      probabilities={c: float(v) for c, v in zip(CLASSES, p, strict=True)},
                      crop=np.zeros((100, 100, 3), np.uint8))


# ---------------------------------------------------------------------------------------------------------
# reprs and conveniences


def test_face_repr_is_one_short_rounded_line():
    f = _face()
    text = repr(f)
    assert "\n" not in text and len(text) < 160, text
    assert text.startswith("FaceResult(label='happiness', confidence=")
    assert f"confidence={f.confidence:.3f}," in text
    assert "box=(12.3, 45.7, 100.0, 120.1)" in text
    assert "array" not in text and "landmarks" not in text and "crop" not in text
    (c1, p1), (c2, p2), (c3, p3) = f.top(3)
    assert f"top={{'{c1}': {p1:.3f}, '{c2}': {p2:.3f}, '{c3}': {p3:.3f}, ...}}" in text
    assert str(f.probabilities[c1]) not in text  # no 17-digit floats
    assert repr([f, f]).count("FaceResult(") == 2  # a list prints as readably


def test_image_prediction_repr_names_faces_not_pixels():
    faces = [_face("happiness"), _face("sadness"), _face("neutral"), _face("anger")]
    pred = ImagePrediction("photos/group.jpg", faces, image=np.zeros((480, 640, 3), np.uint8), dropped=1)
    text = repr(pred)
    assert "\n" not in text and len(text) < 200, text
    assert text.startswith("ImagePrediction(key='photos/group.jpg', image=640x480, faces=4 [happiness 0.")
    assert ", ... 1 more], dropped=1)" in text and "array" not in text
    err = ImagePrediction(Source("image", "x.jpg"), [], error=ValueError("x.jpg: no such file"))
    assert repr(err) == "ImagePrediction(key='x.jpg', error=ValueError('x.jpg: no such file'))"


def test_top_emotion_emotions_and_top():
    f = _face("surprise")
    assert f.top_emotion == ("surprise", f.probabilities["surprise"])
    assert isinstance(f.top_emotion[1], float)
    assert f.emotions is f.probabilities
    ranked = f.top(8)
    assert [c for c, _ in ranked][0] == "surprise" and len(ranked) == 8
    assert [p for _, p in ranked] == sorted(f.probabilities.values(), reverse=True)
    assert f.top(0) == []


def test_to_dict_uses_the_attribute_names_and_to_record_the_wire_names():
    f = _face()
    d = f.to_dict()
    assert list(d) == ["box", "landmarks", "landmarks_estimated", "score", "label", "confidence", "probabilities",
                       "detection"]
    assert d["probabilities"] == {c: round(p, 4) for c, p in f.probabilities.items()}
    assert d["confidence"] == round(f.confidence, 4) and d["box"] == [12.35, 45.68, 100.0, 120.06]
    json.dumps(d)
    r = f.to_record()  # what the JSON-lines/CSV records and the HTTP API document: "scores"
    assert list(r) == ["box", "landmarks", "landmarks_estimated", "score", "label", "confidence", "scores",
                       "detection"]
    assert r["scores"] == d["probabilities"]
    assert {k: v for k, v in r.items() if k != "scores"} == {k: v for k, v in d.items() if k != "probabilities"}


# ---------------------------------------------------------------------------------------------------------
# to_frame


def test_to_frame_flat_list_one_row_per_face():
    pytest.importorskip("pandas", reason="pandas is optional; install it to test to_frame")
    faces = [_face("happiness"), _face("sadness")]
    df = poster_fer.to_frame(faces)
    assert list(df.columns) == ["face", "x", "y", "w", "h", "score", "label", "confidence", *CLASSES]
    assert len(df) == 2 and list(df["face"]) == [0, 1] and list(df["label"]) == ["happiness", "sadness"]
    assert df.loc[1, "sadness"] == pytest.approx(faces[1].probabilities["sadness"])
    assert df.loc[0, "x"] == pytest.approx(faces[0].box[0]) and df.loc[0, "score"] == pytest.approx(0.9876543)
    assert (df[CLASSES].idxmax(axis=1) == df["label"]).all()


def test_to_frame_nested_lists_and_image_predictions():
    pytest.importorskip("pandas", reason="pandas is optional; install it to test to_frame")
    a, b, c = _face("happiness"), _face("sadness"), _face("anger")
    df = poster_fer.to_frame([[a, b], [], [c]])  # what rec.predict([...]) returns
    assert list(df.columns[:2]) == ["image", "face"] and len(df) == 3
    assert list(df["image"]) == [0, 0, 2] and list(df["face"]) == [0, 1, 0]
    preds = [ImagePrediction(Path("a.jpg"), [a]), ImagePrediction("b.jpg", [], error=OSError("bad")),
             ImagePrediction(Source("image", "c.jpg"), [b, c])]
    df = poster_fer.to_frame(iter(preds))  # what rec.iter_predict(...) yields
    assert list(df.columns[:3]) == ["image", "source", "face"]
    assert list(df["source"]) == ["a.jpg", "c.jpg", "c.jpg"] and list(df["image"]) == [0, 2, 2]
    assert len(poster_fer.to_frame(a)) == 1 and len(poster_fer.to_frame(preds[2])) == 2


def test_to_frame_empty_fixed_classes_prefix_and_bad_input():
    pytest.importorskip("pandas", reason="pandas is optional; install it to test to_frame")
    empty = poster_fer.to_frame([], classes=CLASSES)
    assert len(empty) == 0 and list(empty.columns)[-len(CLASSES):] == CLASSES
    assert str(empty["confidence"].dtype) == "float64"
    assert list(poster_fer.to_frame([_face()], prefix="p_").columns)[-2:] == ["p_fear", "p_contempt"]
    odd = FaceResult(box=(0, 0, 1, 1), landmarks=None, score=None, label="label", probabilities={"label": 1.0})
    with pytest.raises(ValueError, match="prefix='p_'"):
        poster_fer.to_frame([odd])
    assert np.isnan(poster_fer.to_frame([odd], prefix="p_").loc[0, "score"])
    with pytest.raises(TypeError, match="not a mix"):
        poster_fer.to_frame([_face(), [_face()]])
    with pytest.raises(TypeError, match="str"):
        poster_fer.to_frame("photo.jpg")


def test_to_frame_without_pandas_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now raises ImportError
    with pytest.raises(ImportError, match="pip install pandas"):
        poster_fer.to_frame([_face()])


# ---------------------------------------------------------------------------------------------------------
# channels


def test_to_rgb_array_channels():
    rgb = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    assert np.array_equal(to_rgb_array(bgr, channels="bgr"), rgb)
    assert np.array_equal(to_rgb_array(bgr, channels="BGR"), rgb)
    assert not np.array_equal(to_rgb_array(bgr), rgb)  # the default is RGB: nothing guessed
    alpha = np.full((6, 5, 1), 255, np.uint8)
    assert np.array_equal(to_rgb_array(np.dstack([bgr, alpha]), channels="bgr"), rgb)  # BGRA -> RGBA
    grey = rgb[..., 0]
    assert np.array_equal(to_rgb_array(grey, channels="bgr"), to_rgb_array(grey))
    pil = Image.fromarray(rgb)
    assert np.array_equal(to_rgb_array(pil, channels="bgr"), rgb)  # a PIL image knows its mode
    with pytest.raises(ValueError, match="channels must be 'rgb' or 'bgr'.*'brg'"):
        to_rgb_array(rgb, channels="brg")


@pytest.fixture(scope="module")
def rec():
    return poster_fer.Recognizer()  # the default model and the bundled YuNet (shipped in the package)


def test_bgr_arrays_give_the_rgb_result(rec):
    path = sample_path()
    rgb = load_image(path)
    bgr = np.ascontiguousarray(rgb[..., ::-1])  # what cv2.imread returns
    ref = rec.predict(rgb)
    assert len(ref) == 1

    def same(faces):
        assert [f.label for f in faces] == [f.label for f in ref]
        np.testing.assert_allclose(list(faces[0].probabilities.values()), list(ref[0].probabilities.values()),
                                   atol=1e-6)
        np.testing.assert_allclose(faces[0].box, ref[0].box, atol=1e-6)

    same(rec.predict(bgr, channels="bgr"))
    same(rec.predict([bgr], channels="bgr")[0])
    same(rec.predict(bgr[None], channels="bgr")[0])  # a 4-D batch
    same(next(iter(rec.iter_predict([(0, bgr)], channels="bgr"))).faces)
    same(rec.predict(str(path), channels="bgr"))  # a path ignores the option
    same(poster_fer.predict(bgr, channels="bgr"))
    swapped = rec.predict(bgr)  # the mistake the option exists for: red and blue exchanged
    assert not swapped or not np.allclose(list(swapped[0].probabilities.values()),
                                          list(ref[0].probabilities.values()), atol=1e-6)


def test_bad_channels_value_raises_naming_the_option(rec):
    rgb = np.zeros((32, 32, 3), np.uint8)
    for call in (lambda: rec.predict(rgb, channels="rbg"), lambda: rec.predict(str(sample_path()), channels=3),
                 lambda: list(rec.iter_predict([(0, rgb)], channels="hsv")),
                 lambda: poster_fer.predict(rgb, channels="yuv")):
        with pytest.raises(ValueError, match="channels must be 'rgb' or 'bgr'"):
            call()


# ---------------------------------------------------------------------------------------------------------
# --webcam without a camera


def _no_device_7():
    if not sys.platform.startswith("linux") or Path("/dev/video7").exists():
        pytest.skip("needs a Linux machine without /dev/video7")


def test_webcam_without_camera_exits_2_with_a_hint(capfd):
    _no_device_7()
    code = main(["predict", "--webcam", "7", "--no-progress"])
    out, err = capfd.readouterr()
    assert code == 2 and out == ""
    assert err.startswith("poster-fer predict: error: webcam:7: ")
    assert ("no video devices" in err) or ("no camera 7" in err and "try --webcam" in err)
    assert "WARN" not in err and "VIDEOIO" not in err and "processed" not in err


@pytest.mark.parametrize("nodes, index, expected", [
    ([], 0, "no video devices"),
    (["video0", "video2", "video10"], 7, "no camera 7: .*video7 does not exist; video devices here: 0, 2, 10 "
                                         r"\(try --webcam 0\)"),
])
def test_camera_problem_tells_the_causes_apart(tmp_path, nodes, index, expected):
    for n in nodes + ["vcs0", "videoX"]:
        (tmp_path / n).touch()
    assert re.search(expected, sources.camera_problem(index, tmp_path))
    if nodes:
        assert sources.camera_problem(2, tmp_path) is None


def test_camera_problem_permissions(tmp_path, monkeypatch):
    (tmp_path / "video0").touch()
    monkeypatch.setattr(sources.os, "access", lambda path, mode: False)
    assert "permission denied on" in sources.camera_problem(0, tmp_path) and "'video'" in \
        sources.camera_problem(0, tmp_path)


def test_camera_that_does_not_open_is_quiet_and_not_counted(capfd, monkeypatch):
    """A device node that looks fine but does not open (busy, metadata-only): OpenCV's own warnings are silenced,
    run_job raises CameraError, and the summary counts no video."""
    _no_device_7()
    monkeypatch.setattr(sources, "camera_problem", lambda index, root=None: None)  # pretend /dev/video7 is there
    stats = JobStats()
    writer = RecordWriter(io.StringIO(), "jsonl", CLASSES)
    with pytest.raises(sources.CameraError, match="webcam:7: cannot open the camera"):
        run_job(SimpleNamespace(max_pixels=None), [Source("webcam", "webcam:7", index=7)], writer,
                JobOptions(progress=False), stats)
    assert (stats.videos, stats.cameras, stats.failures, writer.count) == (0, 0, [], 0)
    _, err = capfd.readouterr()
    assert "WARN" not in err and "VIDEOIO" not in err, err


def test_cameras_are_reported_as_cameras():
    assert JobStats(cameras=1, frames=5).report()[0] == "processed 1 camera (5 frames); 0 faces; 0 failed"
    assert JobStats(images=1, videos=2, cameras=1, frames=9).report()[0] == \
        "processed 1 image, 2 videos, 1 camera (9 frames); 0 faces; 0 failed"
