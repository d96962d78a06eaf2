"""The default model in the box: shipped files are the pinned ones, its metadata travels through every path,
and it labels a real face through every public entry point."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

import poster_fer
from poster_fer.cli import main
from poster_fer.hub import DEFAULT_MODEL, pretrained_path, pretrained_root
from poster_fer.samples import sample_path

pytestmark = pytest.mark.usefixtures("one_thread")

#: sha256 of every file the package ships as data. A change here is a new release of the model (update the
#: model card and benchmarks/results/default_model.json with it).
PINNED = {
    "pretrained/face_detection_yunet.onnx": "ebafce4e3c118d6554634be5c27ab333b4c047a9a8c3faf1d7cf93101c22f0f0",
    "pretrained/poster_v1_ferplus_mfn64_image/model.safetensors":
        "a9b724a1fddea75573dd1e4f994530b34c7f2381213eb56fa9fd7266928e9a4e",
    "pretrained/poster_v1_ferplus_mfn64_image/meta.json":
        "fc0bb1aa4959cc4734015afd08edde1d4485e8131d9bc232fef00d845d1f371e",
    "pretrained/poster_v1_ferplus_mfn_image/model.safetensors":
        "9b9a1812c2feb6201b4e0202245a1d790f9c818292a824e212726c9f0afaf40b",
    "pretrained/poster_v1_ferplus_mfn_image/meta.json":
        "38b83f738614ccdfae664253666110dd2f270814241d8c4f07b99adbfcbae871",
    "pretrained/poster_v1_ferplus_s_image/model.safetensors":
        "d44095110cfec3b49859d8a2d21e67f29c8befe771b38251d99880bfa844ac07",
    "pretrained/poster_v1_ferplus_s_image/meta.json":
        "800bd171e5bf21361d633e97c4a37f2d6d0dc29a65b2fe8fd81497ab3db5f7a4",
    "pretrained/poster_v1_ferplus_s/model.safetensors":
        "a904b66f6e258d69b4771f2fa22ab11be5501017b9bd654989d392b47c03fb23",
    "pretrained/poster_v1_ferplus_s/meta.json": "a95d9dfd6fdd5e33b982f1c65fd00a915d403e258949f24e5d8dfed9192aa1b2",
    "samples/grace_hopper.jpg": "a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130",
}
FERPLUS = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"]


def test_shipped_files_are_the_pinned_ones():
    root = pretrained_root().parent
    for rel, digest in PINNED.items():
        assert hashlib.sha256((root / rel).read_bytes()).hexdigest() == digest, rel
    size = (pretrained_path() / "model.safetensors").stat().st_size
    assert size <= 25e6, f"default model weights are {size / 1e6:.1f} MB (limit 25 MB)"


def test_every_shipped_model_loads_and_the_default_is_the_face_pretrained_64px_one():
    """The default (image-only over the face-recognition MobileFaceNet at 64 px: the best on FER+ val and fast
    enough), the previous default (image-only from scratch, 48 px), the same face network at 112 px (superseded)
    and the two-stream model (the paper's streams, the first default)."""
    assert DEFAULT_MODEL == "poster_v1_ferplus_mfn64_image"
    assert poster_fer.list_pretrained() == ["poster_v1_ferplus_mfn64_image", "poster_v1_ferplus_mfn_image",
                                            "poster_v1_ferplus_s", "poster_v1_ferplus_s_image"]
    two = poster_fer.create_model("poster_v1_ferplus_s", pretrained=True)
    assert two.cfg.streams == "both" and two.meta["classes"] == FERPLUS
    scratch = poster_fer.create_model("poster_v1_ferplus_s_image", pretrained=True)
    assert scratch.cfg.streams == "image" and scratch.cfg.image_backbone == "ir"
    assert scratch.meta["metrics"]["test"]["accuracy"] > 0.85
    mfn = poster_fer.create_model("poster_v1_ferplus_mfn_image", pretrained=True)
    assert mfn.cfg.image_backbone == "arcface_mobilefacenet" and mfn.cfg.backbone_size == 112
    assert mfn.meta["classes"] == FERPLUS and mfn.meta["preprocessing"]["input_size"] == 48
    default = poster_fer.create_model(DEFAULT_MODEL, pretrained=True)
    assert default.cfg.streams == "image" and default.cfg.image_backbone == "arcface_mobilefacenet"
    assert default.cfg.backbone_size == 64 and default.meta["preprocessing"]["input_size"] == 48
    assert default.meta["metrics"]["test"]["accuracy"] >= 0.88
    assert not hasattr(default, "face_landback")


def test_default_model_metadata():
    meta = poster_fer.read_metadata(pretrained_path())
    assert meta["model"] == DEFAULT_MODEL and meta["classes"] == FERPLUS
    prep = meta["preprocessing"]
    assert prep["crop_geometry"]["name"] == "fer2013" and prep["grayscale"] is True and prep["input_size"] == 48
    assert 0.2 < meta["temperature"] < 5.0 and meta["temperature"] != 1.0
    assert len(meta["logit_bias"]) == 8 and abs(sum(meta["logit_bias"])) < 1e-4
    assert meta["metrics"]["test"]["accuracy"] > 0.8


def test_create_model_pretrained_and_round_trips(tmp_path):
    model = poster_fer.create_model(DEFAULT_MODEL, pretrained=True)
    assert not model.training and all(p.dtype == torch.float32 for p in model.parameters())
    assert model.model_name == DEFAULT_MODEL
    fresh = poster_fer.create_model(DEFAULT_MODEL)
    trained, init = model.state_dict(), fresh.state_dict()
    assert any(not torch.equal(trained[k], init[k]) for k in init)
    with pytest.raises(ValueError, match="cannot override"):
        poster_fer.create_model(DEFAULT_MODEL, pretrained=True, num_classes=7)
    with pytest.raises(KeyError, match="no pretrained weights"):
        poster_fer.create_model("poster_v1_tiny", pretrained=True)

    poster_fer.save_model(model, tmp_path / "copy")
    again = poster_fer.load_model(tmp_path / "copy")
    for key in ("classes", "preprocessing", "temperature", "model"):
        assert again.meta[key] == model.meta[key], key
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))


def test_onnx_export_carries_metadata_and_agrees(tmp_path):
    pytest.importorskip("onnxruntime")
    from poster_fer.export import OnnxRuntimeModel, export_onnx
    from poster_fer.inference import Recognizer

    model = poster_fer.create_model(DEFAULT_MODEL, pretrained=True)
    export_onnx(model, tmp_path / "default.onnx", check_batch_sizes=(1, 3))
    runtime = OnnxRuntimeModel(tmp_path / "default.onnx")
    for key in ("classes", "preprocessing", "temperature"):
        assert runtime.meta[key] == model.meta[key], key
    torch_rec = Recognizer()
    onnx_rec = Recognizer.from_checkpoint(tmp_path / "default.onnx", backend="onnxruntime")
    a = torch_rec.predict(sample_path())[0].probabilities
    b = onnx_rec.predict(sample_path())[0].probabilities
    assert max(abs(a[c] - b[c]) for c in a) < 1e-4


def test_default_model_labels_the_sample_portrait():
    faces = poster_fer.predict(sample_path())
    assert len(faces) == 1
    face = faces[0]
    assert face.label == "neutral"
    probs = np.array(list(face.probabilities.values()))
    assert abs(probs.sum() - 1.0) < 1e-5 and probs.min() >= 0
    # Deployed: the probabilities are softmax((logits + logit_bias) / T) with the stored values, not softmax(logits).
    rec = poster_fer.Recognizer()
    crop = rec.predict(sample_path(), return_crops=True)[0].crop
    with torch.no_grad():
        logits = rec.backend.model(torch.from_numpy(rec.preprocessing.batch([crop])))[0]
    t, bias = rec.meta["temperature"], torch.tensor(rec.meta["logit_bias"])
    calibrated = ((logits + bias) / t).softmax(-1).numpy()
    np.testing.assert_allclose(probs, calibrated, atol=1e-4)
    assert np.abs(logits.softmax(-1).numpy() - calibrated).max() > 1e-3


def test_predict_cli_without_weights_uses_the_default_model(capsys):
    assert main(["predict", str(sample_path()), "--no-progress"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    faces = [r for r in records if r["status"] == "ok"]
    assert len(records) == len(faces) == 1 and faces[0]["label"] in FERPLUS


def test_eval_and_export_default_to_the_shipped_model(tmp_path):
    """Like predict, ``eval`` and ``export`` use the shipped model when given no --weights."""
    from conftest import need_shared

    data = need_shared("data", "fer2013")
    assert main(["eval", "--data", str(data), "--dataset", "ferplus", "--split", "test", "--max-samples", "48",
                 "--batch-size", "16", "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["num_samples"] == 48 and metrics["temperature"] == pytest.approx(
        poster_fer.read_metadata(pretrained_path())["temperature"])
    assert str(pretrained_path()) in json.dumps(metrics["provenance"])
    pytest.importorskip("onnx")
    assert main(["export", "--out", str(tmp_path / "default.onnx")]) == 0
    assert (tmp_path / "default.onnx").stat().st_size > 1e6


def test_weights_take_a_shipped_models_name(tmp_path, capsys):
    """``--weights poster_v1_ferplus_mfn_image`` picks the shipped model of that name (no path needed)."""
    from poster_fer.hub import resolve_weights

    assert resolve_weights(None) == pretrained_path()
    assert resolve_weights("poster_v1_ferplus_mfn_image") == pretrained_path("poster_v1_ferplus_mfn_image")
    assert resolve_weights(str(tmp_path)) == tmp_path
    rec = poster_fer.Recognizer.from_checkpoint("poster_v1_ferplus_mfn_image")
    assert rec.meta["model"] == "poster_v1_ferplus_mfn_image"
    assert main(["predict", str(sample_path()), "--no-progress", "--weights", "poster_v1_ferplus_mfn_image"]) == 0
    faces = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(faces) == 1 and faces[0]["status"] == "ok" and faces[0]["label"] in FERPLUS
