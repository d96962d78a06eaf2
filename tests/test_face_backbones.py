"""Face-recognition backbones from their registry files: conversion, faithfulness, identity separation, POSTER use."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from conftest import need_shared
from poster_fer import create_model
from poster_fer.faces import CropGeometry, align_face, template_from_arcface
from poster_fer.faces.detect import YuNetDetector
from poster_fer.faces.download import bundled_yunet_path
from poster_fer.faces.io import load_image
from poster_fer.models.arcface_mobilefacenet import ArcFaceMobileFaceNet, tf_same_pad
from poster_fer.models.dlib_resnet import DlibResNet, add_prev
from poster_fer.samples import sample_path
from poster_fer.weights import CheckpointError
from poster_fer.weights.face_backbones import (
    load_arcface_mobilefacenet,
    load_dlib_resnet,
    load_face_backbone_into,
    parse_dlib_layers,
)
from tfjs_graph_reference import run_graph

pytestmark = pytest.mark.usefixtures("one_thread")


def mfn_json():
    need_shared("weights", "face_backbones", "mobilefacenet.bin")
    return need_shared("weights", "face_backbones", "mobilefacenet.json")


def dlib_dat():
    return need_shared("weights", "face_backbones", "dlib_face_recognition_resnet_model_v1.dat")


@pytest.fixture(scope="module")
def portraits() -> dict[str, np.ndarray]:
    """Two different people (the packaged sample and the shared astronaut), each aligned twice (shifted 2 px)."""
    det = YuNetDetector(str(bundled_yunet_path()))
    dlib_chip = CropGeometry("dlib150", (150, 150), template_from_arcface(150, 0.8, 0.42))  # ~dlib's face chip
    out = {}
    for name, path in (("hopper", sample_path()), ("astronaut", need_shared("samples", "astronaut.png"))):
        rgb = load_image(path)
        rgb = np.asarray(rgb.convert("RGB")) if hasattr(rgb, "convert") else rgb
        lm = np.asarray(det.detect(rgb)[0].landmarks)
        for suffix, shift in (("", 0.0), ("_shift", 2.0)):
            out[name + suffix] = align_face(rgb, lm + shift, "arcface112")
            out[name + suffix + "_150"] = align_face(rgb, lm + shift, dlib_chip)
    return out


def _nchw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).permute(2, 0, 1)[None].float()


# ---------------------------------------------------------------------------------- ArcFace MobileFaceNet ----


def test_tf_same_pad_matches_tensorflow_rule():
    x = torch.zeros(1, 1, 112, 111)
    # stride 2, k 3 on an even side pads (0, 1); on an odd side (1, 1); stride 1 pads (1, 1)
    assert tf_same_pad(x, 3, 2).shape[-2:] == (113, 113)
    assert tf_same_pad(torch.ones(1, 1, 4, 4), 3, 2)[0, 0, 0].sum() == 4  # no row added on top
    assert tf_same_pad(x, 3, 1).shape[-2:] == (114, 113)


def test_mfn_literal_port_matches_graph_interpreter(portraits):
    """The module, built as the graph is written, equals an op-by-op run of the JSON graph."""
    path = mfn_json()
    model, report = load_arcface_mobilefacenet(path, with_head=True, literal_graph=True)
    x = ((portraits["hopper"].astype(np.float32) - 127.5) / 128.0)[None]
    noise = np.random.default_rng(0).uniform(-1, 1, size=(1, 112, 112, 3)).astype(np.float32)
    for inp in (x, noise):
        ref = run_graph(path, inp)
        with torch.no_grad():
            got = model.eval()(torch.from_numpy(inp).permute(0, 3, 1, 2)).numpy()
        assert ref.shape == (1, 192)
        np.testing.assert_allclose(got, ref, atol=2e-6)
    assert report.ok and report.loaded == 121  # 58 convs x (weight, bias) + 5 PReLU slopes outside depthwise


def test_mfn_default_reading_separates_identities(portraits):
    """The trained network (PReLU slope -2m, depthwise PReLU) tells people apart; the literal graph cannot."""
    path = mfn_json()
    fixed, report = load_arcface_mobilefacenet(path, with_head=True)
    literal, _ = load_arcface_mobilefacenet(path, with_head=True, literal_graph=True)
    assert report.ok and report.loaded == 121 + 16 and "-2m" in report.summary()

    def emb(model, key):
        with torch.no_grad():
            return model.eval()((_nchw(portraits[key]) - 127.5) / 128.0)[0]

    same = float(emb(fixed, "hopper") @ emb(fixed, "hopper_shift"))
    diff = float(emb(fixed, "hopper") @ emb(fixed, "astronaut"))
    assert same > 0.9 and diff < 0.5, (same, diff)
    assert float(emb(literal, "hopper") @ emb(literal, "astronaut")) > 0.99
    assert abs(float(emb(fixed, "hopper").norm()) - 1.0) < 1e-5


def test_mfn_truncated_model_reports_dropped_layers():
    model, report = load_arcface_mobilefacenet(mfn_json(), last="stage4")
    assert model.out_channels == 128 and "stages.stage5" not in dict(model.named_modules())
    dropped = " ".join(report.dropped)
    assert "Conv2d_5_InvResBlock_0" in dropped and "Logits" in dropped and "Conv2d_4" not in dropped
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 112, 112)).shape == (1, 128, 14, 14)


def test_mfn_bad_files(tmp_path):
    src = mfn_json()
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_arcface_mobilefacenet(tmp_path / "missing.json")
    bad_json = tmp_path / "model.json"
    bad_json.write_text("{not json")
    with pytest.raises(CheckpointError, match="model.json: not a TF.js graph"):
        load_arcface_mobilefacenet(bad_json)
    shutil.copy(src, tmp_path / "mobilefacenet.json")
    blob = bytearray((src.parent / "mobilefacenet.bin").read_bytes())
    blob[100] ^= 0xFF
    (tmp_path / "mobilefacenet.bin").write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="mobilefacenet.bin: sha256 .* is not the published"):
        load_arcface_mobilefacenet(tmp_path / "mobilefacenet.json")
    (tmp_path / "mobilefacenet.bin").write_bytes(bytes(blob[:-8]))
    with pytest.raises(CheckpointError, match="manifest|before"):
        load_arcface_mobilefacenet(tmp_path / "mobilefacenet.json", expected_sha256=None)


# --------------------------------------------------------------------------------------------- dlib ResNet ----


def test_dlib_file_structure():
    layers = parse_dlib_layers(dlib_dat().read_bytes())
    types = [r["type"] for r in layers]
    assert types.count("con") == 29 and types.count("add_prev") == 14 and types[-1] == "fc"
    assert layers[1]["size"] == (150, 150)
    np.testing.assert_allclose(layers[1]["mean_rgb"], (122.782, 117.001, 104.298), atol=1e-3)
    model, report = load_dlib_resnet(dlib_dat(), with_head=True)
    assert report.ok and report.loaded == 29 * 4 + 1
    assert sum(p.numel() for p in model.parameters()) == 5_614_592  # the published 5.61M


@pytest.mark.parametrize("size,expected", [(112, [26, 13, 6, 3, 1]), (150, [35, 17, 8, 4, 2]),
                                           (224, [54, 27, 13, 6, 3])])
def test_dlib_feature_map_sizes(size, expected):
    """The sizes dlib's own runtime gives (face-backbones notes), including the zero-padded down blocks."""
    sizes = []
    for last in ("level4", "level3", "level2", "level1", "level0"):
        with torch.no_grad():
            sizes.append(DlibResNet(last=last)(torch.zeros(1, 3, size, size)).shape[-1])
    assert sizes == expected


def test_dlib_add_prev_pads_bottom_right_and_channels():
    a = torch.ones(1, 4, 3, 3)
    b = torch.full((1, 2, 4, 4), 10.0)
    out = add_prev(a, b)
    assert out.shape == (1, 4, 4, 4)
    assert out[0, 0, 0, 0] == 11 and out[0, 0, 3, 3] == 10 and out[0, 3, 3, 3] == 0 and out[0, 3, 0, 0] == 1


def test_dlib_embeddings_separate_identities(portraits):
    model, _ = load_dlib_resnet(dlib_dat(), with_head=True)
    mean = torch.tensor([122.782, 117.001, 104.298]).view(1, 3, 1, 1)

    def emb(m, key):
        with torch.no_grad():
            return m.eval()((_nchw(portraits[key + "_150"]) - mean) / 256.0)[0]

    same = float((emb(model, "hopper") - emb(model, "hopper_shift")).norm())
    diff = float((emb(model, "hopper") - emb(model, "astronaut")).norm())
    assert same < 0.25 and diff > 0.45, (same, diff)
    torch.manual_seed(0)
    rand = DlibResNet(with_head=True)
    assert float((emb(rand, "hopper") - emb(rand, "astronaut")).norm()) < 0.45  # the check can fail


def test_dlib_bad_files(tmp_path):
    bad = tmp_path / "model.dat"
    bad.write_bytes(dlib_dat().read_bytes()[:500_000])
    with pytest.raises(CheckpointError, match="model.dat: sha256"):
        load_dlib_resnet(bad)
    with pytest.raises(CheckpointError, match="model.dat: .*(layer sequence|past the end)"):
        load_dlib_resnet(bad, expected_sha256=None)


# ------------------------------------------------------------------------------- as POSTER's image stream ----


@pytest.mark.parametrize("name,kind,path", [("poster_v1_tiny_mfn", "arcface_mobilefacenet", mfn_json),
                                            ("poster_v1_tiny_dlib", "dlib_resnet", dlib_dat)])
def test_poster_loads_face_backbone(name, kind, path):
    model = create_model(name)
    report = load_face_backbone_into(model.face_back, kind, path())
    assert report.ok and report.dropped  # truncated: the later layers are reported
    ref = (load_arcface_mobilefacenet(path(), last="stage2")[0] if kind == "arcface_mobilefacenet"
           else load_dlib_resnet(path(), last="level4")[0])
    for k, v in ref.state_dict().items():
        assert torch.equal(model.face_back.state_dict()[k], v), k


def test_poster_backbone_input_normalisation():
    """The model's ImageNet-normalised input reaches the backbone as that backbone's own normalisation."""
    pixels = torch.randint(0, 256, (1, 3, 64, 64)).float()
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    x = (pixels / 255.0 - mean) / std
    m = create_model("poster_v1_tiny_mfn")
    torch.testing.assert_close(x * m.backbone_scale + m.backbone_shift, (pixels - 127.5) / 128.0)
    d = create_model("poster_v1_tiny_dlib")
    dmean = torch.tensor((122.782, 117.001, 104.298)).view(1, 3, 1, 1)
    torch.testing.assert_close(x * d.backbone_scale + d.backbone_shift, (pixels - dmean) / 256.0)
    assert "backbone_scale" not in m.state_dict()  # derived from the config, not stored


def test_poster_face_backbone_config_errors():
    with pytest.raises(ValueError, match="image_backbone must be one of"):
        create_model("poster_v1_tiny", image_backbone="vgg")
    with pytest.raises(ValueError, match="needs image_tokens='pool'"):
        create_model("poster_v1_tiny", image_backbone="dlib_resnet")
    with pytest.raises(ValueError, match="unknown feature map"):
        create_model("poster_v1_tiny_mfn", image_layer="stage9")
    with pytest.raises(ValueError, match="image_layer applies"):
        create_model("poster_v1_tiny", image_layer="stage2")
    with pytest.raises(ValueError, match="unknown face backbone"):
        load_face_backbone_into(ArcFaceMobileFaceNet(last="stem"), "vgg", "x")
