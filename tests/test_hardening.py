"""Issue 24: hostile and malformed input gives one clear error naming the file and the field, never a traceback,
never a silent wrong answer; numeric options are checked where they enter; decoded images stay within a byte
budget and their conversion within a band's memory."""

from __future__ import annotations

import io
import json
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from poster_fer import create_model, load_model, save_model
from poster_fer.faces import ImageLoadError, get_geometry, load_image
from poster_fer.faces.io import _composite, _scale_u16, decoded_bytes
from poster_fer.inference import InferenceError, Recognizer
from poster_fer.inference.backends import OnnxBackend
from poster_fer.options import check_count, check_detect_size, check_limit, check_probability
from poster_fer.weights import CheckpointError, read_metadata
from poster_fer.weights.checks import check_metadata
from poster_fer_apps.cli import main
from poster_fer_apps.serve.errors import ApiError
from poster_fer_apps.serve.uploads import decode_image

SIZE = 56
CLASSES = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("poster_v1_tiny", num_classes=7, input_size=SIZE, backbone_size=SIZE, classes=CLASSES)
    prep = {"input_size": SIZE, "crop_geometry": get_geometry("rafdb").to_dict()}
    return save_model(model, tmp_path_factory.mktemp("good") / "tiny", preprocessing=prep)


def _variant(good, tmp_path, edit=None, text=None):
    d = tmp_path / "bad"
    shutil.copytree(good, d)
    if text is None:
        meta = json.loads((d / "meta.json").read_text())
        edit(meta)
        text = json.dumps(meta)
    (d / "meta.json").write_text(text)
    return d


def _set(path, value):
    def edit(meta):
        cur = meta
        for key in path[:-1]:
            cur = cur[key]
        cur[path[-1]] = value
    return edit


GEOMETRY_6000 = {"name": "huge", "size": [6000, 6000],
                 "template": [[2000, 2500], [4000, 2500], [3000, 3500], [2200, 4500], [3800, 4500]]}

# (what was edited, the edit, words the error must contain) -- issue 24's rows D1-D7 and D14
BAD_META = [
    ("D1 not JSON", dict(text="{not json"), ["meta.json", "not valid JSON"]),
    ("D2 a list", dict(text="[1, 2]"), ["meta.json", "JSON list"]),
    ("D4 huge width", dict(edit=_set(["config", "dims"], [12000, 6000, 3000])), ["config", "dims"]),
    ("D4 huge depth", dict(edit=_set(["config", "depth"], 10**6)), ["config", "depth"]),
    ("D5 input size", dict(edit=_set(["preprocessing", "input_size"], 6000)), ["preprocessing.input_size", "6000"]),
    ("D6 crop 6000", dict(edit=_set(["preprocessing", "crop_geometry"], GEOMETRY_6000)), ["preprocessing", "1024"]),
    ("D7 temperature 0", dict(edit=_set(["temperature"], 0)), ["temperature"]),
    ("D7 temperature NaN", dict(edit=_set(["temperature"], float("nan"))), ["temperature"]),
    ("D7 2-value bias", dict(edit=_set(["logit_bias"], [0.1, 0.2])), ["logit_bias", "2 values"]),
    ("D7 channel XYZ", dict(edit=_set(["preprocessing", "channel_order"], "XYZ")), ["preprocessing", "XYZ"]),
    ("D14 3 names", dict(edit=_set(["classes"], ["a", "b", "c"])), ["classes", "3 names"]),
    ("D14 head size", dict(edit=_set(["config", "num_classes"], 5)), ["classes", "num_classes is 5"]),
    ("D14 other depth", dict(edit=_set(["config", "depth"], 3)), ["do not fit", "missing"]),
    ("D14 other width", dict(edit=_set(["config", "dims"], [128, 64, 32])), ["do not fit", "shape"]),
    ("no model name", dict(edit=_set(["model"], None)), ["'model'"]),
    ("config a string", dict(edit=_set(["config"], "big")), ["'config'"]),
    ("repeated classes", dict(edit=_set(["classes"], ["a"] * 7)), ["classes", "repeat"]),
]


@pytest.mark.parametrize("case", BAD_META, ids=[c[0] for c in BAD_META])
def test_bad_metadata_is_one_error_naming_file_and_field(good, tmp_path, case):
    _, how, words = case
    bad = _variant(good, tmp_path, **how)
    with pytest.raises(CheckpointError) as info:
        load_model(bad)
    message = str(info.value)
    assert str(bad) in message
    for word in words:
        assert word in message, (word, message)


def test_good_checkpoint_still_loads_and_every_shipped_record_passes(good):
    model = load_model(good)
    assert model.classes == CLASSES
    from poster_fer.weights.records import load_records, pretrained_root

    for name, record in load_records().items():
        if record.shipped:  # every file we ship passes the same checks as a user's
            check_metadata(read_metadata(pretrained_root() / record.file), name, "poster-fer/1")


@pytest.mark.parametrize("command", ["info", "eval", "export", "explain"])
def test_commands_report_bad_metadata_in_one_line(good, tmp_path, capsys, command):
    bad = _variant(good, tmp_path, edit=_set(["logit_bias"], [0.1, 0.2]))
    argv = {"info": ["info", str(bad)],
            "eval": ["eval", "--weights", str(bad), "--data", str(tmp_path), "--out", str(tmp_path / "o")],
            "export": ["export", "--weights", str(bad), "--out", str(tmp_path / "m.onnx")],
            "explain": ["explain", "--weights", str(bad), str(tmp_path / "x.png"), "--out", str(tmp_path / "e")]}
    assert main(argv[command]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "logit_bias" in err and str(bad) in err


@pytest.mark.parametrize("suffix,words", [(".onnx", "ONNX export"), (".pth", "PyTorch checkpoint"),
                                          (".safetensors", "not a safetensors file")])
def test_foreign_files_are_named_for_what_they_are(tmp_path, capsys, suffix, words):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"\x08\x01\x12\x04junk" * 8)
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert words in err and str(path) in err and "header too large" not in err


def test_unreadable_onnx_is_an_inference_error(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_text("garbage")
    with pytest.raises(InferenceError, match="bad.onnx"):
        OnnxBackend(path)


# -- numeric options: one check at the API and the command line (D10-D13) ----------------------------------


@pytest.mark.parametrize("kwargs,words", [
    ({"max_faces": -1}, "max_faces"), ({"max_faces": 0}, "max_faces"), ({"detect_size": -5}, "detect_size"),
    ({"detect_size": 8}, "detect_size"), ({"score_threshold": 2}, "score_threshold"),
    ({"score_threshold": float("nan")}, "score_threshold"), ({"score_threshold": -1}, "score_threshold"),
    ({"max_pixels": -1}, "max_pixels"), ({"batch_size": 0}, "batch_size"), ({"max_faces": 2.5}, "whole number"),
])
def test_recognizer_refuses_out_of_range_options_before_loading(kwargs, words):
    # the backend argument points nowhere: the options must be refused before anything is loaded
    with pytest.raises(ValueError, match=words):
        Recognizer("/nonexistent/model", **kwargs)


@pytest.mark.parametrize("flag,value", [("--max-faces", "-1"), ("--max-faces", "-10"), ("--detect-size", "-5"),
                                        ("--threshold", "2"), ("--threshold", "-1"), ("--threshold", "nan"),
                                        ("--max-pixels", "-1"), ("--max-frames", "0"), ("--every", "0"),
                                        ("--batch-size", "0"), ("--ema", "0")])
def test_predict_flags_out_of_range_are_usage_errors(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as info:
        main(["predict", str(tmp_path / "x.jpg"), flag, value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}:" in err and "Traceback" not in err and "cv::" not in err


@pytest.mark.parametrize("flag,value", [("--workers", "0"), ("--threshold", "2"), ("--detect-size", "-5"),
                                        ("--max-faces", "0"), ("--port", "-1")])
def test_serve_flags_out_of_range_are_usage_errors(capsys, flag, value):
    with pytest.raises(SystemExit) as info:
        main(["serve", flag, value])
    assert info.value.code == 2 and f"argument {flag}:" in capsys.readouterr().err


def test_option_checks_keep_good_values():
    assert check_count("n", "3") == 3 and check_count("n", None, optional=True) is None
    assert check_detect_size(0) is None and check_detect_size("640") == 640
    assert check_limit("m", 0) is None and check_limit("m", "10") == 10
    assert check_probability("t", "0.6") == 0.6 and check_probability("e", 1, high_open=False) == 1.0


def test_output_paths_that_cannot_be_written_are_one_line(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    img = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(img)
    assert main(["predict", str(img), "--output", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["predict", str(img), "--out", str(blocker / "sub")]) == 2
    assert "cannot create this folder" in capsys.readouterr().err


# -- the decoded-size budget (D15) ------------------------------------------------------------------------


def test_byte_budget_is_checked_from_the_header(tmp_path):
    path = tmp_path / "rgba.png"
    Image.new("RGBA", (400, 300), (10, 20, 30, 128)).save(path)
    assert decoded_bytes("RGBA", 400, 300) == 480_000 and decoded_bytes("I;16", 4, 4) == 32
    with pytest.raises(ImageLoadError, match="rgba.png.*MiB decoded"):
        load_image(path, max_bytes=400_000)
    assert load_image(path, max_bytes=480_000).shape == (300, 400, 3)
    data = path.read_bytes()
    with pytest.raises(ApiError) as info:
        decode_image(data, max_pixels=10**9, max_bytes=400_000)
    assert info.value.status == 413 and info.value.kind == "too_many_bytes"


def test_video_frames_share_the_budget(tmp_path):
    import cv2

    from poster_fer.inference.sources import VideoError, VideoReader

    path = tmp_path / "v.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 48))
    for _ in range(3):
        writer.write(np.zeros((48, 64, 3), np.uint8))
    writer.release()
    with pytest.raises(VideoError, match="MiB decoded"):
        VideoReader(path, max_bytes=64 * 48 * 2)
    assert len(list(VideoReader(path))) == 3


def test_banded_conversions_equal_whole_image_arithmetic():
    a = np.arange(65536, dtype=np.uint16)
    assert np.array_equal(_scale_u16(a), np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8))
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (2100, 700, 3), dtype=np.uint8)  # several bands of rows
    alpha = rng.integers(0, 256, (2100, 700), dtype=np.uint8)
    x = alpha.astype(np.float32)[..., None] / 255.0
    ref = np.clip(np.rint(rgb.astype(np.float32) * x + np.float32(255) * (1 - x)), 0, 255).astype(np.uint8)
    assert np.array_equal(_composite(rgb, alpha, (255, 255, 255)), ref)


def test_banded_loading_equals_pillow_conversion(tmp_path):
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, (1500, 900, 4), dtype=np.uint8)  # 1.35 MP: more than one band
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    Image.fromarray(rgba[..., :3], "RGB").save(tmp_path / "b.png")
    got = load_image(tmp_path / "a.png")
    a = rgba[..., 3:].astype(np.float32) / 255.0
    ref = np.clip(np.rint(rgba[..., :3].astype(np.float32) * a + 255 * (1 - a)), 0, 255).astype(np.uint8)
    assert np.array_equal(got, ref)
    assert np.array_equal(load_image(tmp_path / "b.png"), rgba[..., :3])


def _onnx_with_description(tmp_path, change):
    """The shipped model's ONNX file with its embedded description changed by ``change(meta)``."""
    import json as _json

    import onnx

    from poster_fer.export import META_KEY
    from poster_fer.hub import pretrained_path

    proto = onnx.load(str(pretrained_path() / "model.onnx"))
    entry = next(e for e in proto.metadata_props if e.key == META_KEY)
    meta = _json.loads(entry.value)
    change(meta)
    entry.value = _json.dumps(meta)
    out = tmp_path / "lying.onnx"
    onnx.save(proto, str(out))
    return out


@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(classes=m["classes"][:3], logit_bias=m["logit_bias"][:3], operating_points={},
                        config=None),
     "returns shape (1, 8) for one face, but its description names 3 classes"),
    (lambda m: (m["preprocessing"].update(input_size=64), m.update(config=None)), "does not take the 64x64 input"),
])
def test_onnx_weights_that_lie_about_themselves_are_refused_at_open(tmp_path, change, message):
    """Issue 39 item 11: a graph that does not match its description is one clear refusal, not a crash later
    (a description with a model config is compared by check_metadata; without one, the graph itself is run)."""
    from poster_fer.inference import InferenceError, load_backend

    path = _onnx_with_description(tmp_path, change)
    with pytest.raises(InferenceError, match=re.escape(message)):
        load_backend(path)


def test_a_model_that_outputs_nan_gives_an_error_record_never_a_label(tmp_path):
    """Issue 39 item 11: NaN probabilities become an error for that input (exit status 1), and every record is
    strict JSON."""
    import json as _json

    from poster_fer.inference import Recognizer, RecordWriter
    from poster_fer.inference.job import JobOptions, JobStats, run_job
    from poster_fer.inference.sources import collect_sources
    from poster_fer.samples import sample_path

    rec = Recognizer(backend=None)
    real = rec.backend
    rec.backend = type("NaNBackend", (), {"meta": real.meta, "device": "cpu",
                                          "__call__": lambda self, x: np.full((len(x), 8), np.nan, np.float32)})()
    sources, _ = collect_sources([sample_path()])
    buf = io.StringIO()
    stats = run_job(rec, sources, RecordWriter(buf, "jsonl", rec.classes), JobOptions(progress=False), JobStats())
    (record,) = [_json.loads(line) for line in buf.getvalue().splitlines()]
    assert record["status"] == "error" and "not a number" in record["error"] and record["label"] is None
    assert stats.failures and stats.faces == 0
    with pytest.raises(ValueError):
        RecordWriter(io.StringIO(), "jsonl", ["a"]).write({"confidence": float("nan")})
