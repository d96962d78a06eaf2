"""``poster-fer predict``: records and their schema, bad inputs, directories, videos, exit codes."""

from __future__ import annotations

import csv
import io
import json

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from poster_fer import create_model, save_model
from poster_fer.faces import get_geometry, load_image
from poster_fer.faces.download import bundled_yunet_path
from poster_fer.inference import RECORD_KEYS, box_iou, csv_columns
from poster_fer.samples import sample_path
from poster_fer_apps.cli import main

#: class names for the tiny models these tests build (save_model refuses a model without any)
_CLASS_NAMES = {n: [f"c{i}" for i in range(n)] for n in range(1, 11)}
_CLASS_NAMES[7] = ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"]
_CLASS_NAMES[8] = ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt"]

SIZE = 56
FPS = 10.0


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny models, one thread


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("poster_v1_tiny", num_classes=7, input_size=SIZE, backbone_size=SIZE, classes=_CLASS_NAMES[7])
    with torch.no_grad():  # sharpen the random head so probabilities visibly change from frame to frame
        model.head.linear.weight.mul_(30.0)
    prep = {"input_size": SIZE, "crop_geometry": get_geometry("rafdb").to_dict(), "grayscale": False}
    return str(save_model(model, tmp_path_factory.mktemp("ckpt") / "tiny", preprocessing=prep))


@pytest.fixture(scope="module")
def yunet():
    return str(bundled_yunet_path())  # byte-identical to the development copy


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory):
    """A one-face 512 x 512 portrait: the top of the shipped sample (face at x 183-353, y 120-333), so a
    newcomer's suite, which has no development assets, runs these tests too."""
    path = tmp_path_factory.mktemp("portrait") / "portrait.png"
    cv2.imwrite(str(path), cv2.imread(str(sample_path()))[:512, :512])
    return path


@pytest.fixture
def predict(ckpt, yunet, capsys):
    """Run the command in-process; returns (exit code, records, stderr)."""

    def go(*args: str, fmt: str = "jsonl"):
        code = main(["predict", *map(str, args), "--weights", ckpt, "--detector-model", yunet, "--no-progress",
                     "--format", fmt])
        out, err = capsys.readouterr()
        if fmt == "csv":
            return code, list(csv.DictReader(io.StringIO(out))), err, out
        return code, [json.loads(line) for line in out.splitlines()], err

    return go


def _write_video(path, rgb, frames=10, step=3, fourcc="MJPG"):
    """The astronaut's face drifting right ``step`` px per frame, in 320x320 frames."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), FPS, (320, 320))
    assert writer.isOpened()
    for i in range(frames):
        frame = rgb[0:320, 150 - step * i:470 - step * i]
        writer.write(cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


# ---------------------------------------------------------------------------------------------------------
# images


def test_astronaut_one_face_with_crop_and_annotation(predict, astronaut, tmp_path):
    out = tmp_path / "out"
    code, records, err = predict(astronaut, "--out", out, "--save-crops")
    assert code == 0
    (r,) = records
    assert tuple(r) == RECORD_KEYS
    assert (r["source"], r["frame"], r["face"], r["track"], r["status"], r["error"]) == \
        (str(astronaut), None, 0, None, "ok", None)
    assert len(r["box"]) == 4 and len(r["landmarks"]) == 5 and all(len(p) == 2 for p in r["landmarks"])
    assert r["label"] == max(r["scores"], key=r["scores"].get) and len(r["scores"]) == 7
    assert sum(r["scores"].values()) == pytest.approx(1.0, abs=1e-3)
    crop = cv2.imread(r["crop"])
    assert crop is not None and crop.shape == (100, 100, 3)  # the RAF-DB geometry's crop size
    annotated = cv2.imread(str(out / "portrait.png"))
    assert annotated.shape == (512, 512, 3)
    assert not np.array_equal(annotated[..., ::-1], load_image(astronaut))  # something was drawn
    assert "processed 1 image; 1 face; 0 failed" in err


def test_directory_with_bad_files(predict, astronaut, tmp_path):
    rgb = load_image(astronaut)
    d = tmp_path / "photos"
    (d / "sub").mkdir(parents=True)
    Image.fromarray(rgb).save(d / "good.jpg", quality=92)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated; "rotate 90 degrees clockwise to display"
    Image.fromarray(rgb).rotate(90, expand=True).save(d / "sub" / "rotated.jpg", exif=exif, quality=92)
    grey16 = (np.asarray(Image.fromarray(rgb).convert("L")).astype(np.uint16) * 257)
    Image.fromarray(grey16).save(d / "grey16.png")
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])).save(d / "rgba.png")
    data = (d / "good.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (d / "text.png").write_text("this is not a PNG")
    Image.fromarray(np.full((200, 300, 3), 90, np.uint8)).save(d / "wall.png")
    (d / "notes.txt").write_text("skip me")
    log = tmp_path / "records.jsonl"

    code, records, err = predict(d, "--output", log)
    assert code == 1 and records == []  # records went to the file
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert all(tuple(r) == RECORD_KEYS for r in records)
    by_name = {r["source"].split("/")[-1]: r for r in records}
    assert sorted(by_name) == ["good.jpg", "grey16.png", "rgba.png", "rotated.jpg", "text.png", "truncated.jpg",
                               "wall.png"]
    for name in ("good.jpg", "grey16.png", "rgba.png", "rotated.jpg"):
        assert by_name[name]["status"] == "ok" and by_name[name]["face"] == 0, name
    # the EXIF rotation was applied: the face is where it is in the upright image
    assert box_iou(by_name["rotated.jpg"]["box"], by_name["good.jpg"]["box"]) > 0.7
    assert by_name["wall.png"]["status"] == "no_face" and by_name["wall.png"]["face"] is None
    assert by_name["truncated.jpg"]["status"] == "error" and "truncat" in by_name["truncated.jpg"]["error"]
    assert by_name["text.png"]["status"] == "error" and "text.png" in by_name["text.png"]["error"]
    assert "processed 7 images; 4 faces; 1 input without a face; 2 failed" in err
    assert "truncated.jpg" in err and "text.png" in err and "skipped 1 file" in err and "notes.txt" in err


def test_no_face_alone_is_not_a_failure_unless_required(predict, tmp_path):
    wall = tmp_path / "wall.png"
    Image.fromarray(np.full((200, 300, 3), 90, np.uint8)).save(wall)
    code, records, _ = predict(wall)
    assert code == 0 and records[0]["status"] == "no_face" and records[0]["error"] == "no face found"
    code, _, err = predict(wall, "--require-face")
    assert code == 1 and "no face: " in err


def test_out_dir_never_overwrites_the_input(predict, tmp_path):
    wall = tmp_path / "wall.png"
    Image.fromarray(np.full((200, 300, 3), 90, np.uint8)).save(wall)
    before = wall.read_bytes()
    code, _, _ = predict(wall, "--out", tmp_path)
    assert code == 0 and wall.read_bytes() == before
    assert (tmp_path / "wall_annotated.png").is_file()


def test_too_large_image_names_the_limit(predict, astronaut):
    code, (r,), err = predict(astronaut, "--max-pixels", "100000")
    assert code == 1 and r["status"] == "error"
    assert "100000" in r["error"] and "portrait.png" in r["error"] and "1 failed" in err


def test_missing_and_unsupported_files_are_reported(predict, astronaut, tmp_path):
    fake_video = tmp_path / "clip.mp4"
    fake_video.write_text("not a video")
    code, records, err = predict(tmp_path / "nope.jpg", fake_video, astronaut)
    assert code == 1
    assert [r["status"] for r in records] == ["error", "error", "ok"]  # command-line order is kept
    assert "no such file" in records[0]["error"] and "clip.mp4" in records[1]["error"]
    assert "2 failed" in err


def test_no_detect_takes_inputs_as_crops(predict, astronaut, tmp_path):
    crop = load_image(astronaut)[120:333, 183:353]
    Image.fromarray(crop).save(tmp_path / "crop.png")
    code, (r,), _ = predict(tmp_path / "crop.png", "--no-detect")
    assert code == 0 and r["box"] == [0.0, 0.0, 170.0, 213.0] and r["landmarks"] is None and r["score"] is None


def test_csv_schema(predict, astronaut, tmp_path):
    wall = tmp_path / "wall.png"
    Image.fromarray(np.full((100, 100, 3), 90, np.uint8)).save(wall)
    code, rows, _, text = predict(astronaut, wall, fmt="csv")
    assert code == 0
    header = text.splitlines()[0].split(",")
    classes = [c[2:] for c in header if c.startswith("p_")]
    assert header == csv_columns(classes) and len(classes) == 7
    for col in ("source", "frame", "face", "track", "x", "y", "w", "h", "right_eye_x", "left_mouth_corner_y",
                "label", "score", "status", "error"):
        assert col in header
    ok, empty = rows
    assert ok["status"] == "ok" and sum(float(ok[f"p_{c}"]) for c in classes) == pytest.approx(1, abs=1e-3)
    assert ok["label"] in classes and float(ok["w"]) > 0 and ok["frame"] == ""
    assert empty["status"] == "no_face" and empty["face"] == "" and empty["x"] == ""


def test_usage_errors_exit_2(ckpt, yunet, astronaut, tmp_path, capsys):
    assert main(["predict", "--weights", ckpt]) == 2
    assert "PATH, --from-list FILE or --webcam" in capsys.readouterr().err
    assert main(["predict", str(astronaut), "--weights", ckpt, "--save-crops"]) == 2
    assert main(["predict", str(astronaut), "--weights", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    assert main(["predict", str(astronaut), "--weights", ckpt, "--detector-model", str(tmp_path / "no.onnx")]) == 2
    assert "no.onnx" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", str(empty), "--weights", ckpt, "--detector-model", yunet]) == 2


# ---------------------------------------------------------------------------------------------------------
# videos


@pytest.fixture(scope="module")
def video(tmp_path_factory, astronaut):
    return _write_video(tmp_path_factory.mktemp("video") / "clip.avi", load_image(astronaut))


def test_video_frames_tracks_and_smoothing(predict, video, tmp_path):
    out = tmp_path / "out"
    code, records, err = predict(video, "--out", out, "--ema", "0.5")
    assert code == 0
    assert [r["frame"] for r in records] == list(range(10))
    assert all(r["track"] == 0 and r["face"] == 0 and r["status"] == "ok" for r in records)
    assert [r["time"] for r in records] == pytest.approx([i / FPS for i in range(10)])
    xs = [r["box"][0] for r in records]
    assert xs[-1] > xs[0] + 15  # the face did move (3 px per frame) and was followed
    # scores are the per-track exponential moving average of the frames' own probabilities
    raw = np.array([list(r["raw_scores"].values()) for r in records])
    assert np.abs(np.diff(raw, axis=0)).max() > 0.02  # so the check below can tell smoothed from raw
    smooth = raw[0]
    for r in records:
        assert list(r["scores"]) == list(r["raw_scores"])
        if r["frame"]:
            smooth = 0.5 * np.array(list(r["raw_scores"].values())) + 0.5 * smooth
        np.testing.assert_allclose(list(r["scores"].values()), smooth, atol=2e-3)
        assert r["label"] == max(r["scores"], key=r["scores"].get)
    assert "1 video (10 frames)" in err
    cap = cv2.VideoCapture(str(out / "clip.mp4"))
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 10
    cap.release()


def test_video_every_second_frame(predict, video):
    code, records, _ = predict(video, "--every", "2")
    assert code == 0
    assert [r["frame"] for r in records] == [0, 2, 4, 6, 8] and {r["track"] for r in records} == {0}
    code, records, _ = predict(video, "--every", "3", "--max-frames", "2")
    assert [r["frame"] for r in records] == [0, 3]


def test_truncated_video_is_reported_after_its_frames(predict, video, astronaut, tmp_path):
    cut = tmp_path / "cut.avi"
    data = video.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.6)])
    code, records, err = predict(cut, astronaut)
    assert code == 1
    frames = [r for r in records if r["source"] == str(cut) and r["status"] == "ok"]
    assert 2 <= len(frames) < 10 and [r["frame"] for r in frames] == list(range(len(frames)))
    (bad,) = [r for r in records if r["status"] == "error"]
    assert "ended early" in bad["error"] and "cut.avi" in bad["error"]
    assert records[-1]["source"] == str(astronaut) and records[-1]["status"] == "ok"  # the run went on
    assert "1 failed" in err


def test_a_face_sized_crop_without_a_detection_is_labelled_whole_unless_told_not_to(tmp_path):
    """Issue 37: pre-cropped faces (FER datasets' 48 px images) give one record with detection=whole_image."""
    import json as _json
    import subprocess
    import sys

    crop = tmp_path / "crop.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (48, 48), dtype=np.uint8)).save(crop)
    base = [sys.executable, "-m", "poster_fer_apps.cli", "predict", str(crop), "--backend", "onnxruntime",
            "--no-progress"]
    out = subprocess.run(base, capture_output=True, text=True, check=True).stdout
    (rec,) = [_json.loads(x) for x in out.splitlines() if x]
    assert rec["status"] == "ok" and rec["detection"] == "whole_image" and rec["box"] == [0, 0, 48, 48]
    off = subprocess.run([*base, "--no-whole-image"], capture_output=True, text=True, check=True).stdout
    assert _json.loads(off)["status"] == "no_face"


def test_an_unknown_operating_point_is_refused_before_the_model_loads(monkeypatch, capsys):
    """Issue 39 item 9: the check reads the weights' meta.json; nothing heavy is opened first."""
    import poster_fer.inference.recognizer as recognizer

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the option was checked")

    monkeypatch.setattr(recognizer.Recognizer, "from_checkpoint", classmethod(no_loading))
    assert main(["predict", __file__, "--operating-point", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no operating point 'nope'" in err and "balanced" in err
