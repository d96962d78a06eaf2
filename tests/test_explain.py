"""Relevance maps (gradient-weighted attention rollout) for POSTER v1 / v2 and ``poster-fer explain``."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from poster_fer import create_model, save_model
from poster_fer.evaluation.explain import _mass_resize, _rollout, relevance_maps, resolve_target
from poster_fer.samples import sample_path
from poster_fer_apps.cli import main

#: class names for the tiny models these tests build (save_model refuses a model without any)
_CLASS_NAMES = {n: [f"c{i}" for i in range(n)] for n in range(1, 11)}
_CLASS_NAMES[7] = ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"]
_CLASS_NAMES[8] = ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt"]

SMALL = {"input_size": 48, "backbone_size": 48}
CASES = {
    # official 'view' image tokens: the map comes from the IR 14x14 map
    "v1_view": ("poster_v1_tiny", {"input_size": 112}, (14, 14), (7, 7)),
    "v1_pool": ("poster_v1_tiny", {**SMALL, "landmark_size": 48, "image_tokens": "pool"}, (7, 7), (7, 7)),
    "v1_self_fusion": ("poster_v1_tiny", {**SMALL, "landmark_size": 48, "image_tokens": "pool", "fusion": "self"},
                       (7, 7), (7, 7)),
    "v1_image_only": ("poster_v1_tiny_image_only", {**SMALL, "image_tokens": "pool"}, (7, 7), None),
    # face-recognition image streams (the shipped default's kind): the graph must start at their output too
    "v1_mfn_image_only": ("poster_v1_tiny_mfn", {"streams": "image", "fusion": "self", "pyramid": False}, (7, 7), None),
    "v1_dlib": ("poster_v1_tiny_dlib", {}, (7, 7), (7, 7)),
    "v2": ("poster_v2_tiny", SMALL, (12, 12), (12, 12)),  # finest window map at backbone 48 is 48/4
}


def _model(name, kw):
    torch.manual_seed(0)
    return create_model(name, **kw, classes=_CLASS_NAMES[kw.get("num_classes", 7)])


@pytest.mark.parametrize("case", sorted(CASES))
def test_maps_shape_range_and_input_dependence(case):
    name, kw, img_shape, lm_shape = CASES[case]
    model = _model(name, kw)
    s = model.cfg.input_size
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, s, s, generator=g)
    a = relevance_maps(model, x)
    assert a["probs"].shape == (2, 7) and a["target"].tolist() == a["probs"].argmax(1).tolist()
    for stream, shape in (("image", img_shape), ("landmark", lm_shape)):
        m = a[stream]
        if shape is None:
            assert m is None and a[f"{stream}_method"] is None
            continue
        assert m.shape == (2, *shape)
        assert np.isfinite(m).all() and m.min() >= 0
        np.testing.assert_allclose(m.reshape(2, -1).max(1), 1.0, rtol=1e-6)
        assert m[0].std() > 0, f"{stream} map is flat"
        assert not np.allclose(m[0], m[1], atol=1e-3), f"{stream} map does not depend on the input"
    # recording is switched off again and no gradients are left behind
    cores = [mod for mod in model.modules() if type(mod).__name__ == "AttentionCore"]
    assert all(not c.record and c.attn is None for c in cores)
    assert all(p.grad is None for p in model.parameters())


def test_target_class_changes_the_maps():
    name, kw, _, _ = CASES["v1_pool"]
    model = _model(name, kw)
    x = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(3))
    a, b = relevance_maps(model, x, target=0), relevance_maps(model, x, target=5)
    assert a["target"].tolist() == [0] and b["target"].tolist() == [5]
    assert not np.allclose(a["image"], b["image"], atol=1e-4)
    with pytest.raises(ValueError, match="out of range"):
        relevance_maps(model, x, target=7)


def test_rollout_and_mass_resize_definitions():
    a1 = torch.rand(1, 3, 3)
    a2 = torch.rand(1, 3, 3)
    eye = torch.eye(3)
    expect = (eye + a2[0]) @ (eye + a1[0])  # R <- R + A R, first layer first
    torch.testing.assert_close(_rollout([a1, a2])[0], expect)
    m = torch.rand(2, 7, 7)
    up = _mass_resize(m, 28)
    assert up.shape == (2, 28, 28)
    torch.testing.assert_close(up.sum(dim=(1, 2)), m.sum(dim=(1, 2)), rtol=1e-4, atol=1e-5)


def test_resolve_target_accepts_dataset_spellings():
    classes = ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"]
    assert resolve_target("happy", classes) == 3 and resolve_target("ANGRY", classes) == 5
    with pytest.raises(ValueError, match="unknown class"):
        resolve_target("contempt", classes)


def _save(tmp_path, name, kw):
    return save_model(_model(name, kw), tmp_path / name)


@pytest.mark.parametrize("case", ["v1_pool", "v2"])
def test_explain_cli_on_crops(case, tmp_path, capsys):
    name, kw, img_shape, _ = CASES[case]
    ckpt = _save(tmp_path, name, kw)
    rng = np.random.default_rng(0)
    img = tmp_path / "face.png"
    Image.fromarray(rng.integers(0, 255, (60, 60, 3), dtype=np.uint8)).save(img)
    out = tmp_path / "out"
    rc = main(["explain", "--weights", str(ckpt), str(img), str(tmp_path / "missing.png"), "--no-detect",
               "--class", "happy", "--out", str(out)])
    assert rc == 1  # one image explained, one skipped and reported
    assert "missing.png" in capsys.readouterr().err
    assert (out / "face_explain.png").stat().st_size > 0
    record = json.loads((out / "explain.json").read_text())
    assert record["skipped"] == {"unreadable image": 1}
    (res,) = record["results"]
    assert res["target"] == "Happiness"
    assert np.asarray(res["maps"]["image"]["values"]).shape == img_shape
    assert abs(sum(res["scores"].values()) - 1) < 1e-3


def test_explain_cli_detects_and_aligns(tmp_path):
    from poster_fer.faces.download import bundled_yunet_path

    photo = sample_path()
    yunet = bundled_yunet_path()  # byte-identical to the development copy
    ckpt = _save(tmp_path, *CASES["v1_view"][:2])
    out = tmp_path / "out"
    assert main(["explain", "--weights", str(ckpt), str(photo), "--detector-model", str(yunet),
                 "--geometry", "rafdb", "--out", str(out)]) == 0
    (res,) = json.loads((out / "explain.json").read_text())["results"]
    assert res["score"] > 0.5 and len(res["landmarks"]) == 5
    assert np.asarray(res["maps"]["image"]["values"]).shape == (14, 14)
    assert "not spatial" in res["maps"]["image"]["method"]
    assert (out / "grace_hopper_explain.png").stat().st_size > 0


def test_explain_cli_unknown_class(tmp_path, capsys):
    ckpt = _save(tmp_path, *CASES["v1_pool"][:2])
    img = tmp_path / "f.png"
    Image.new("RGB", (40, 40)).save(img)
    assert main(["explain", "--weights", str(ckpt), str(img), "--no-detect", "--class", "bored",
                 "--out", str(tmp_path / "o")]) == 2
    assert "unknown class 'bored'" in capsys.readouterr().err


def test_relevance_maps_report_calibrated_probabilities():
    """The explained class and its probability are the deployed ones: (logits + logit_bias) / T, as predict shows."""
    from poster_fer import create_model
    from poster_fer.evaluation import relevance_maps

    torch.manual_seed(0)
    model = create_model("poster_v1_tiny_image_only", num_classes=3, input_size=32, backbone_size=32,
                         image_tokens="pool", classes=_CLASS_NAMES[3])
    x = torch.randn(2, 3, 32, 32)
    raw = relevance_maps(model, x)
    model.card = dataclasses.replace(model.card, calibration={"temperature": 0.5, "logit_bias": [5.0, -5.0, 0.0]})
    cal = relevance_maps(model, x)
    np.testing.assert_allclose(cal["logits"], raw["logits"], atol=1e-5)
    expected = torch.from_numpy((raw["logits"] + np.array([5.0, -5.0, 0.0], dtype=np.float32)) / 0.5).softmax(1)
    np.testing.assert_allclose(cal["probs"], expected.numpy(), atol=1e-5)
    assert (cal["target"] == 0).all()  # the bias makes class 0 the shown prediction
