"""Numerical parity with the official POSTER / POSTER++ code (fixtures in shared/parity).

Each variant: build ours, regenerate the recipe weights from the official key list, wrap them in an official
training container with ``module.`` keys, save it, load it through the official-checkpoint path, and compare
the reference outputs within 1e-4 relative error.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import need_shared
from poster_fer import CheckpointError, create_model, load_official
from poster_fer.weights.parity import recipe_state_dict

# (fixture, architecture, classes, container, the official weights record whose class order the head has; None:
# the one record of that architecture and head size is found without being named)
VARIANTS = [
    ("poster_v1_rafdb", "poster_v1", 7, "v1", None),
    ("poster_v1_affectnet8", "poster_v1_affectnet", 8, "v1", None),
    ("poster_v2_7cls", "poster_v2", 7, "v2", "poster_v2.rafdb_official"),
    ("poster_v2_8cls", "poster_v2", 8, "v2", None),
]


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).norm() / ref.norm())


def official_container(state_dict: dict, kind: str) -> dict:
    sd = {"module." + k: v for k, v in state_dict.items()}
    if kind == "v1":
        return {"iter": 1, "model_state_dict": sd, "optimizer_state_dict": {}}
    return {"epoch": 1, "state_dict": sd, "best_acc": torch.tensor(0.5)}


@pytest.mark.parametrize("variant,name,num_classes,kind,weights", VARIANTS)
def test_official_parity(variant, name, num_classes, kind, weights, tmp_path):
    keys_json = need_shared("parity", f"{variant}.keys.json")
    expected = load_file(str(need_shared("parity", f"{variant}.expected.safetensors")))
    x = load_file(str(need_shared("parity", "input.safetensors")))["input"]

    ours = create_model(name, num_classes=num_classes)
    official_keys = [k for k, _, _ in json.loads(keys_json.read_text())]
    dead = ours.official_dead_keys()
    from poster_fer.weights.official import _is_dead

    live = [k for k in official_keys if not _is_dead(k, dead)]
    assert sorted(live) == sorted(ours.state_dict()), "key set differs from the official one (dead modules aside)"

    ints = {k: v for k, v in ours.state_dict().items() if not v.is_floating_point()}
    path = tmp_path / "official.pth"
    torch.save(official_container(recipe_state_dict(keys_json, ints), kind), path)
    del ours

    if weights is None:
        model = load_official(path, model=name, num_classes=num_classes)
    else:  # two records fit (POSTER++ RAF-DB and AffectNet-7 both have 7 classes, in different orders)
        with pytest.raises(CheckpointError, match="which dataset's class order"):
            load_official(path, model=name, num_classes=num_classes)
        model = load_official(path, model=weights)
    assert not model.training
    assert model.classes == list(model.pretrained_cfg.classes)
    assert len(model.conversion_report.dropped) == len(official_keys) - len(live)
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model.forward_head(feats)
        if kind == "v1":
            image_out = model.image_features(x)
            assert rel_err(image_out, expected["image_backbone_out"]) <= 1e-4
            assert rel_err(feats, expected["features"]) <= 1e-4
        else:
            assert rel_err(model.ir_back(model._resize(x))[0], expected["image_backbone_out"]) <= 1e-4
            assert rel_err(model.landmark_features(x)[0], expected["landmark_stream_out"]) <= 1e-4
    assert logits.shape == expected["logits"].shape
    assert rel_err(logits, expected["logits"]) <= 1e-4


def test_v1_landmark_head_parity():
    """MobileFaceNet with its regression head reproduces the official 136-d landmark output."""
    from poster_fer.models.mobilefacenet import MobileFaceNet
    from poster_fer.weights.official import convert_official_state_dict

    keys_json = need_shared("parity", "poster_v1_rafdb.keys.json")
    expected = load_file(str(need_shared("parity", "poster_v1_rafdb.expected.safetensors")))
    x = load_file(str(need_shared("parity", "input.safetensors")))["input"]
    sd = recipe_state_dict(keys_json)
    lm_sd = {k[len("face_landback."):]: v for k, v in sd.items() if k.startswith("face_landback.")}
    net = MobileFaceNet(with_head=True).eval()
    converted, report = convert_official_state_dict(lm_sd, net)
    assert report.ok and not report.dropped
    net.load_state_dict(converted)
    with torch.no_grad():
        out = net.landmarks(torch.nn.functional.interpolate(x, size=112))
    assert rel_err(out, expected["landmark_stream_out"]) <= 1e-4
