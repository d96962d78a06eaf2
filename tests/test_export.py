"""ONNX export: verified at export time, dynamic batch axis, metadata carried in the file, CLI."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from poster_fer import create_model, save_model  # noqa: E402
from poster_fer.export import ExportError, OnnxRuntimeModel, export_onnx  # noqa: E402
from poster_fer.faces import get_geometry
from poster_fer_apps.cli import main  # noqa: E402

#: class names for the tiny models these tests build (save_model refuses a model without any)
_CLASS_NAMES = {n: [f"c{i}" for i in range(n)] for n in range(1, 11)}
_CLASS_NAMES[7] = ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"]
_CLASS_NAMES[8] = ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt"]

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny models, one thread


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


PREPROCESSING = {"input_size": 224, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "channel_order": "BGR",
                 "grayscale": True, "resize_interpolation": "bilinear",
                 "crop_geometry": get_geometry("fer2013").to_dict()}


@pytest.mark.parametrize("name", ["poster_v1_tiny", "poster_v2_tiny"])
def test_round_trip_dynamic_batch_and_metadata(name, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, num_classes=4, classes=_CLASS_NAMES[4]).eval()
    classes = ["calm", "glad", "cross", "shocked"]
    model.card = dataclasses.replace(model.card, classes=tuple(classes), preprocessing=PREPROCESSING,
                                     provenance={"note": "test"})
    path = tmp_path / "model.onnx"
    report = export_onnx(model, path, batch_size=2, check_batch_sizes=(3,))
    assert path.is_file() and report["bytes"] == path.stat().st_size
    assert [c["batch"] for c in report["checks"]] == [2, 3]  # traced at 2, verified at 3 too
    assert report["max_rel_error"] <= 1e-4

    runtime = OnnxRuntimeModel(path)
    assert runtime.meta["classes"] == classes and runtime.classes == classes
    assert runtime.meta["preprocessing"] == PREPROCESSING
    assert runtime.meta["provenance"] == {"note": "test"}
    assert runtime.meta["model"] == name and runtime.meta["config"]["num_classes"] == 4
    assert runtime.input_shape[0] == "batch"

    x = torch.randn(5, 3, 224, 224, generator=torch.Generator().manual_seed(4))  # a batch size never traced
    out = runtime(x.numpy())
    with torch.no_grad():
        ref = model(x).numpy()
    assert out.shape == (5, 4) and out.dtype == np.float32
    assert rel_err(out, ref) <= 1e-4


def test_export_fails_loudly_and_leaves_nothing(tmp_path):
    model = create_model("poster_v1_tiny", classes=_CLASS_NAMES[7]).eval()
    path = tmp_path / "bad.onnx"
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_onnx(model, path, check_batch_sizes=(), tolerance=0.0)  # float rounding alone exceeds 0
    assert not path.exists()
    assert not list(tmp_path.iterdir())  # no temporary file left either


def test_runtime_rejects_bad_input(tmp_path):
    path = tmp_path / "m.onnx"
    export_onnx(create_model("poster_v1_tiny", classes=_CLASS_NAMES[7]).eval(), path, check_batch_sizes=())
    runtime = OnnxRuntimeModel(path)
    with pytest.raises(ValueError, match="224x224"):
        runtime(np.zeros((1, 3, 112, 112), np.float32))
    with pytest.raises(ValueError, match=r"\(B, 3, S, S\)"):
        runtime(np.zeros((3, 224, 224), np.float32))
    with pytest.raises(FileNotFoundError):
        OnnxRuntimeModel(tmp_path / "missing.onnx")


def test_export_command(tmp_path, capsys):
    torch.manual_seed(0)
    saved = save_model(create_model("poster_v1_tiny"), tmp_path / "ckpt", classes=list("abcdefg"))
    out = tmp_path / "exported" / "m.onnx"
    assert main(["export", "--weights", str(saved), "--format", "onnx", "--out", str(out), "--opset", "17",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["max_rel_error"] <= 1e-4 and report["opset"] == 17
    assert OnnxRuntimeModel(out).classes == list("abcdefg")

    assert main(["export", "--weights", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "nope" in capsys.readouterr().err


def test_cpu_sized_models_export_with_pooled_tokens(tmp_path):
    """48 px image stream and 80 px landmarks pool 6x6 / 5x5 maps up to 7x7 tokens: that must export and agree
    (the shipped two-stream and from-scratch models have this shape)."""
    torch.manual_seed(0)
    model = create_model("poster_v1_tiny", num_classes=8, input_size=48, backbone_size=48, landmark_size=80,
                         image_tokens="pool", classes=_CLASS_NAMES[8]).eval()
    report = export_onnx(model, tmp_path / "small.onnx", batch_size=2, check_batch_sizes=(1, 5))
    assert report["max_rel_error"] <= 1e-4


def test_exportable_adaptive_pool_matches_torch():
    from poster_fer.models.layers import adaptive_avg_pool

    for h, w in [(5, 5), (6, 6), (6, 9), (14, 14), (3, 7), (13, 4)]:
        x = torch.randn(2, 3, h, w)
        torch.testing.assert_close(adaptive_avg_pool(x, 7), torch.nn.functional.adaptive_avg_pool2d(x, 7))


@pytest.mark.parametrize("name", ["poster_v1_tiny_mfn", "poster_v1_tiny_dlib"])
def test_face_backbone_streams_export_after_their_resize(name, tmp_path):
    """The face-backbone image streams resize 48 px crops up to the backbone's size before pooling a map that
    divides evenly into 7x7 tokens; the exported graph then has a symbolic map size, which the exporter could
    not pool (the shipped poster_v1_ferplus_mfn_image failed `poster-fer export` that way)."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=8, streams="image", fusion="self", pyramid=False,
                         backbone_size=112, resize_mode="bilinear", classes=_CLASS_NAMES[8]).eval()
    report = export_onnx(model, tmp_path / "face.onnx", batch_size=2, check_batch_sizes=(3,))
    assert report["max_rel_error"] <= 1e-4
