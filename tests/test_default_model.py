"""The default model in the box: shipped files are the pinned ones, its metadata travels through every path,
and it labels a real face through every public entry point."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import poster_fer
from poster_fer.hub import DEFAULT_MODEL, pretrained_path, pretrained_root
from poster_fer.samples import sample_path
from poster_fer_apps.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

#: sha256 of the package data that has no weights record (the weights' digests live in their records,
#: poster_fer/pretrained/records.json, checked below). A change here is a new release of that file.
PINNED = {
    "pretrained/face_detection_yunet.onnx": "ebafce4e3c118d6554634be5c27ab333b4c047a9a8c3faf1d7cf93101c22f0f0",
    "samples/grace_hopper.jpg": "a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130",
}
FERPLUS = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"]
SHIPPED = ["poster_v1_mfn64_image.ferplus", "poster_v1_mfn_image.ferplus", "poster_v1_s.ferplus",
           "poster_v1_s_image.ferplus"]
_ABSOLUTE = re.compile(r"(?<![\w.~-])/(?:home|root|work|tmp|usr|opt|mnt|Users|var)/")


def test_shipped_files_are_the_pinned_ones():
    root = pretrained_root().parent
    for rel, digest in PINNED.items():
        assert hashlib.sha256((root / rel).read_bytes()).hexdigest() == digest, rel
    size = (pretrained_path() / "model.safetensors").stat().st_size
    assert size <= 25e6, f"default model weights are {size / 1e6:.1f} MB (limit 25 MB)"


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_record_matches_its_file_and_model(name):
    """sha256, classes, preprocessing, calibration, parameter count and GFLOPs (within 1%) of the record are
    those of the file and the model it builds; nothing that ships names a developer's path."""
    from poster_fer.models.stats import model_stats

    record = poster_fer.get_weights(name)
    folder = record.path()
    assert hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest() == record.sha256
    model = poster_fer.create_model(name, pretrained=True)
    assert model.pretrained_cfg is record and model.model_name == record.architecture
    meta = model.meta
    assert meta["weights"] == name and list(record.classes) == meta["classes"] == model.classes
    assert json.dumps(record.to_dict()["preprocessing"], sort_keys=True) == json.dumps(meta["preprocessing"],
                                                                                       sort_keys=True)
    assert record.calibration["temperature"] == meta["temperature"]
    assert list(record.calibration["logit_bias"]) == meta["logit_bias"]
    stored = record.to_dict()["calibration"].get("operating_points")
    assert json.loads(json.dumps(stored)) == meta.get("operating_points")
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "numpy") as f:  # the header's copy is the meta.json
        assert json.loads(f.metadata()["poster_fer_meta"]) == json.loads((folder / "meta.json").read_text())
    stats = model_stats(model)
    assert stats["params_total"] == record.num_params and stats["num_classes"] == record.num_classes
    assert abs(stats["gflops"] - record.gflops) <= 0.01 * record.gflops
    assert record.metrics["test"]["accuracy"] == meta["metrics"]["test"]["accuracy"] and record.metrics["test"]["split"]
    assert record.licence.startswith("research and non-commercial") and record.recipe and record.command
    header = poster_fer.read_metadata(folder / "model.safetensors")  # the record embedded in the weights file
    for text in ((folder / "meta.json").read_text(), json.dumps(header), json.dumps(record.to_dict())):
        assert not _ABSOLUTE.search(text), _ABSOLUTE.search(text).group(0)


def test_records_file_names_no_absolute_path_and_every_record_builds():
    text = (pretrained_root() / "records.json").read_text()
    assert not _ABSOLUTE.search(text)
    for name in poster_fer.list_models(pretrained=True):
        record = poster_fer.get_weights(name)
        arch = poster_fer.create_model(record.architecture, num_classes=record.num_classes)
        assert arch.model_name == record.architecture and arch.pretrained_cfg is None
    assert poster_fer.list_pretrained() == SHIPPED
    assert set(poster_fer.list_models("*official", pretrained=True)) == {
        "poster_v1.rafdb_official", "poster_v1_affectnet.affectnet7_official",
        "poster_v1_affectnet.affectnet8_official", "poster_v2.rafdb_official", "poster_v2.affectnet7_official",
        "poster_v2.affectnet8_official"}


def test_every_shipped_model_loads_and_the_default_is_the_face_pretrained_64px_one():
    """The default (image-only over the face-recognition MobileFaceNet at 64 px: the best on FER+ val and fast
    enough), the previous default (image-only from scratch, 48 px), the same face network at 112 px (superseded)
    and the two-stream model (the paper's streams, the first default)."""
    assert DEFAULT_MODEL == "poster_v1_mfn64_image.ferplus"
    two = poster_fer.create_model("poster_v1_s.ferplus", pretrained=True)
    assert two.cfg.streams == "both" and two.meta["classes"] == FERPLUS
    scratch = poster_fer.create_model("poster_v1_s_image", pretrained=True)  # an architecture's default weights
    assert scratch.pretrained_cfg.name == "poster_v1_s_image.ferplus"
    assert scratch.cfg.streams == "image" and scratch.cfg.image_backbone == "ir"
    assert scratch.meta["metrics"]["test"]["accuracy"] > 0.85
    mfn = poster_fer.create_model("poster_v1_mfn_image.ferplus", pretrained=True)
    assert mfn.cfg.image_backbone == "arcface_mobilefacenet" and mfn.cfg.backbone_size == 112
    assert mfn.meta["classes"] == FERPLUS and mfn.meta["preprocessing"]["input_size"] == 48
    default = poster_fer.create_model(DEFAULT_MODEL, pretrained=True)
    assert default.cfg.streams == "image" and default.cfg.image_backbone == "arcface_mobilefacenet"
    assert default.cfg.backbone_size == 64 and default.meta["preprocessing"]["input_size"] == 48
    assert default.meta["metrics"]["test"]["accuracy"] >= 0.88
    assert not hasattr(default, "face_landback")


@pytest.mark.parametrize("old,new", [("poster_v1_ferplus_mfn64_image", "poster_v1_mfn64_image.ferplus"),
                                     ("poster_v1_ferplus_s", "poster_v1_s.ferplus")])
def test_names_from_before_the_records_still_load_with_a_warning(old, new):
    with pytest.warns(DeprecationWarning, match=new):
        model = poster_fer.create_model(old, pretrained=True)
    assert model.pretrained_cfg.name == new
    with pytest.warns(DeprecationWarning):
        arch = poster_fer.create_model(old)  # as an architecture name it builds the architecture
    assert arch.model_name == new.split(".")[0] and arch.pretrained_cfg is None
    with pytest.warns(DeprecationWarning):
        rec = poster_fer.Recognizer(old, detector=None)
    assert rec.meta["weights"] == new


def test_list_models_says_which_weights_ship():
    shipped = poster_fer.list_models(pretrained=True, available=True)
    download = poster_fer.list_models(pretrained=True, available=False)
    assert shipped == poster_fer.list_pretrained() == SHIPPED
    assert set(download) == set(poster_fer.list_models("*official", pretrained=True))
    assert sorted(shipped + download) == poster_fer.list_models(pretrained=True)
    with pytest.raises(ValueError, match="pretrained=True"):
        poster_fer.list_models(available=True)


@pytest.mark.parametrize("call", ["create_model('poster_v1_ferplus_s')",
                                  "create_model('poster_v1_ferplus_s', pretrained=True)",
                                  "get_weights('poster_v1_ferplus_s')", "get_weights('poster_v1_ferplus_s_image')"])
def test_the_deprecation_warning_points_at_the_callers_line(call, tmp_path):
    """Python shows a DeprecationWarning by default only when it is attributed to __main__: a script's own line."""
    script = tmp_path / "old_script.py"
    script.write_text(f"import poster_fer\nx = 1\nposter_fer.{call}\n")
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-1000:]
    assert f"{script}:3: DeprecationWarning" in res.stderr, res.stderr[-1000:]


def test_default_model_metadata():
    meta = poster_fer.read_metadata(pretrained_path())
    assert meta["model"] == "poster_v1_mfn64_image" and meta["weights"] == DEFAULT_MODEL
    assert meta["classes"] == FERPLUS
    prep = meta["preprocessing"]
    assert prep["crop_geometry"]["name"] == "fer2013" and prep["grayscale"] is True and prep["input_size"] == 48
    assert 0.2 < meta["temperature"] < 5.0 and meta["temperature"] != 1.0
    assert len(meta["logit_bias"]) == 8 and abs(sum(meta["logit_bias"])) < 1e-4
    assert meta["metrics"]["test"]["accuracy"] > 0.8
    assert meta["licence"].startswith("research and non-commercial")


def test_create_model_pretrained_and_round_trips(tmp_path):
    model = poster_fer.create_model(DEFAULT_MODEL, pretrained=True)
    assert not model.training and all(p.dtype == torch.float32 for p in model.parameters())
    assert model.model_name == "poster_v1_mfn64_image"
    fresh = poster_fer.create_model(DEFAULT_MODEL)
    assert fresh.pretrained_cfg is None
    trained, init = model.state_dict(), fresh.state_dict()
    assert any(not torch.equal(trained[k], init[k]) for k in init)
    with pytest.raises(ValueError, match="cannot override"):
        poster_fer.create_model(DEFAULT_MODEL, pretrained=True, dims=(64, 32, 16))
    with pytest.raises(KeyError, match="no weights named"):
        poster_fer.create_model("poster_v1_tiny", pretrained=True)

    poster_fer.save_model(model, tmp_path / "copy")
    again = poster_fer.load_model(tmp_path / "copy")
    for key in ("classes", "preprocessing", "temperature", "model"):
        assert again.meta[key] == model.meta[key], key
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))


def test_pretrained_with_other_classes_keeps_the_backbone_bit_identical():
    """timm's ``create_model(name, pretrained=True, num_classes=N)``: a new head, everything else as trained;
    classes that keep their name (happy = happiness) keep their trained head rows."""
    base = poster_fer.create_model(DEFAULT_MODEL, pretrained=True)
    fer2013 = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    tuned = poster_fer.create_model(DEFAULT_MODEL, pretrained=True, classes=fer2013)
    a, b = base.state_dict(), tuned.state_dict()
    assert set(a) == set(b)
    for k in a:
        if not k.startswith("head."):
            assert torch.equal(a[k], b[k]), k
    assert tuned.cfg.num_classes == 7 and tuned.classes == fer2013
    for i, name in enumerate(fer2013):
        j = {"angry": "anger", "happy": "happiness", "sad": "sadness"}.get(name, name)
        assert torch.equal(b["head.linear.weight"][i], a["head.linear.weight"][FERPLUS.index(j)])
    assert "temperature" not in tuned.meta and "logit_bias" not in tuned.meta  # they described the old head
    three = poster_fer.create_model(DEFAULT_MODEL, pretrained=True, num_classes=3)
    assert three.get_classifier().out_features == 3 and three.classes is None
    rows = poster_fer.create_model(DEFAULT_MODEL, pretrained=True, classes=["pain", "neutral"])
    assert torch.equal(rows.state_dict()["head.linear.weight"][1], a["head.linear.weight"][0])
    assert not torch.equal(rows.state_dict()["head.linear.weight"][0], a["head.linear.weight"][0])


def test_one_preprocessing_and_calibrated_probabilities_agree_across_paths():
    """``create_transform``, the evaluation transform, the training preload + on-device normalisation and the
    Recognizer's crop preparation give the same tensor for one face; ``predict_proba`` equals the Recognizer's
    calibrated probabilities (exact path to 1e-6; the Recognizer's folded fast path to 1e-5)."""
    from PIL import Image

    from poster_fer.weights import create_transform as eval_transform
    from poster_fer_train.loaders import BatchPreparer, preload_images

    model = poster_fer.create_model(DEFAULT_MODEL, pretrained=True)
    face = Image.open(sample_path()).convert("RGB").crop((180, 60, 440, 320)).resize((60, 60))
    a = poster_fer.create_transform(model)(face)
    b = eval_transform(model.meta["preprocessing"])(face)
    rec = poster_fer.Recognizer(detector=None)
    c = torch.from_numpy(rec.preprocessing.batch([np.asarray(face)]))[0]

    class One:
        def get_image(self, i):
            return face

        def __len__(self):
            return 1

    prep = rec.preprocessing
    pixels = preload_images(One(), prep.input_size, prep.grayscale)
    d = BatchPreparer(torch.device("cpu"), prep.mean, prep.std, preload=True).to_input(pixels)[0]
    for other in (b, c, d):
        assert torch.equal(a, other)
    p = model.predict_proba(a[None])
    exact = poster_fer.Recognizer.from_model(model, detector=None)
    exact.backend.net = exact.backend.model  # the unfolded network
    np.testing.assert_allclose(p, exact.classify([np.asarray(face)]), atol=1e-6)
    np.testing.assert_allclose(p, rec.classify([np.asarray(face)]), atol=1e-5)
    assert np.abs(p - torch.softmax(model(a[None]), -1).detach().numpy()).max() > 1e-3  # calibration matters


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
    face = onnx_rec.predict(sample_path(), return_crops=True)[0]
    b = face.probabilities
    assert max(abs(a[c] - b[c]) for c in a) < 1e-4
    # the plain model's calibrated probabilities are the exported ones too
    plain = model.predict_proba(torch.from_numpy(torch_rec.preprocessing.batch([face.crop])))[0]
    assert max(abs(float(p) - b[c]) for p, c in zip(plain, model.classes, strict=True)) < 1e-4


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


def test_the_default_models_balanced_point_on_both_backends(capsys):
    """The shipped default offers the 'balanced' operating point (benchmarks/operating_point.py): the torch and
    ONNX backends apply its calibration, its neutral over-prediction on FER+ test is the recorded one, and an
    unknown point is a one-line usage error naming the ones that exist."""
    from poster_fer.inference import load_backend

    meta = poster_fer.read_metadata(pretrained_path())
    point = meta["operating_points"]["balanced"]
    assert point["test"]["neutral_overprediction"] < 0.043 < meta["metrics"]["test"]["accuracy"]
    x = np.random.default_rng(0).normal(size=(4, 3, 48, 48)).astype(np.float32)
    torch_default = load_backend(pretrained_path(), backend="torch")
    torch_bal = load_backend(pretrained_path(), backend="torch", operating_point="balanced")
    with torch.no_grad():
        raw = torch_default.model(torch.from_numpy(x)).numpy()
    want = (raw + np.asarray(point["logit_bias"], np.float32)) / point["temperature"]
    np.testing.assert_allclose(torch_bal(x), want, rtol=1e-4, atol=1e-4)
    pytest.importorskip("onnxruntime")
    onnx_bal = load_backend(pretrained_path(), backend="onnxruntime", operating_point="balanced")
    np.testing.assert_allclose(onnx_bal(x), want, rtol=1e-3, atol=1e-3)
    assert main(["predict", str(sample_path()), "--no-progress", "--operating-point", "balanced"]) == 0
    assert main(["predict", str(sample_path()), "--no-progress", "--operating-point", "strict"]) == 2
    err = capsys.readouterr().err
    assert "no operating point 'strict'" in err and "default, balanced" in err and "Traceback" not in err


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
    """``--weights poster_v1_mfn_image.ferplus`` picks the shipped weights of that name (no path needed)."""
    from poster_fer.hub import resolve_weights

    assert resolve_weights(None) == pretrained_path()
    assert resolve_weights("poster_v1_mfn_image.ferplus") == pretrained_path("poster_v1_mfn_image.ferplus")
    assert resolve_weights(str(tmp_path)) == tmp_path
    rec = poster_fer.Recognizer.from_checkpoint("poster_v1_mfn_image.ferplus")
    assert rec.meta["weights"] == "poster_v1_mfn_image.ferplus"
    assert main(["predict", str(sample_path()), "--no-progress", "--weights", "poster_v1_mfn_image.ferplus"]) == 0
    faces = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(faces) == 1 and faces[0]["status"] == "ok" and faces[0]["label"] in FERPLUS
