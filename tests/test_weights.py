"""Weights I/O: official containers, safe unpickling, conversion reports, pretrained files, our format."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from conftest import need_shared
from poster_fer import CheckpointError, create_model, load_model, load_official, read_metadata, save_model
from poster_fer.constants import FERPLUS_CLASSES, RAFDB_CLASSES
from poster_fer.weights import (
    convert_official_state_dict,
    load_pretrained_ir50,
    load_pretrained_mobilefacenet,
    safe_torch_load,
)
from poster_fer.weights.official import strip_prefix, unwrap_container
from poster_fer.weights.parity import recipe_state_dict

#: class names for the tiny models these tests build (save_model refuses a model without any)
_CLASS_NAMES = {n: [f"c{i}" for i in range(n)] for n in range(1, 11)}
_CLASS_NAMES[7] = ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"]
_CLASS_NAMES[8] = ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt"]

TINY7 = list(RAFDB_CLASSES)  # class names for the tiny official-layout checkpoints (no record covers them)


@pytest.mark.parametrize("name,key", [("container_v1_sample.pth", "model_state_dict"),
                                      ("container_v2_sample.pth", "state_dict")])
def test_container_samples_load(name, key):
    obj = safe_torch_load(need_shared("parity", name))
    assert key in obj
    sd, info = unwrap_container(obj)
    sd = strip_prefix(sd)
    assert len(sd) == 6 and all(k.startswith("face_landback.") for k in sd)
    assert all(torch.all(v == 0.5) for v in sd.values() if v.is_floating_point())
    if "v2" in name:
        assert info["epoch"] == obj["epoch"] and "best_acc" in info
        rec = obj["recorder"]
        assert type(rec).__name__ == "RecorderMeter" and hasattr(rec, "epoch_losses")


def test_v2_container_refused_by_plain_weights_only():
    """The reason the allow-list exists: plain weights_only loading refuses the V2 container."""
    with pytest.raises(pickle.UnpicklingError):
        torch.load(need_shared("parity", "container_v2_sample.pth"), weights_only=True)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/poster_fer_pwned",))


def test_malicious_pickle_refused(tmp_path):
    marker = "/tmp/poster_fer_pwned"
    if os.path.exists(marker):
        os.unlink(marker)
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"a": torch.zeros(1)}, "payload": _Exploit()}, path)
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        safe_torch_load(path)
    with pytest.raises(CheckpointError, match="evil.pth"):
        load_official(path, model="poster_v1_tiny", classes=TINY7)
    assert not os.path.exists(marker)


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pth"):
        safe_torch_load(bad)
    with pytest.raises(CheckpointError, match="no such file"):
        safe_torch_load(tmp_path / "missing.pth")


def _official_sd(model):
    """An official-looking state_dict for ``model``: its own tensors plus the dead keys the official has."""
    sd = {"module." + k: v.clone() for k, v in model.state_dict().items()}
    sd["module.ir_back.output_layer.3.weight"] = torch.zeros(4, 4)
    sd["module.pyramid_fuse.cls_token"] = torch.zeros(1, 1, 64)
    return sd


def test_conversion_report_and_errors():
    model = create_model("poster_v1_tiny", classes=_CLASS_NAMES[7])
    sd = _official_sd(model)
    converted, report = convert_official_state_dict(sd, model)
    assert report.ok and report.loaded == len(model.state_dict())
    assert sorted(report.dropped) == ["ir_back.output_layer.3.weight", "pyramid_fuse.cls_token"]
    assert sd["module.head.linear.weight"] is not None  # input untouched (pure function)

    extra = dict(sd, **{"module.something.else": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="unexpected.*something.else"):
        convert_official_state_dict(extra, model)
    _, rep = convert_official_state_dict(extra, model, strict=False)
    assert rep.unexpected == ["something.else"] and not rep.ok

    missing = {k: v for k, v in sd.items() if "se_block" not in k}
    with pytest.raises(CheckpointError, match="missing.*se_block"):
        convert_official_state_dict(missing, model)

    wrong = dict(sd, **{"module.head.linear.weight": torch.zeros(8, 64)})
    with pytest.raises(CheckpointError, match="mismatched.*head.linear.weight"):
        convert_official_state_dict(wrong, model)


def test_affectnet_hint(tmp_path):
    """A checkpoint without token convs loaded as poster_v1 points the user at the AffectNet variant."""
    src = create_model("poster_v1_tiny", token_conv=False, classes=_CLASS_NAMES[7])
    path = tmp_path / "affectnet.pth"
    torch.save({"iter": 3, "model_state_dict": _official_sd(src), "optimizer_state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="AffectNet variant"):
        load_official(path, model="poster_v1_tiny", classes=TINY7)
    model = load_official(path, model="poster_v1_tiny", classes=TINY7, token_conv=False)
    assert model.meta["provenance"]["container"]["iter"] == 3


def test_load_official_num_classes(tmp_path):
    src = create_model("poster_v1_tiny", num_classes=8, classes=_CLASS_NAMES[8])
    path = tmp_path / "c8.pth"
    torch.save({"model_state_dict": _official_sd(src)}, path)
    # no record covers a tiny 8-class head: its class names are refused, never guessed from the size
    with pytest.raises(CheckpointError, match="which dataset's class order"):
        load_official(path, model="poster_v1_tiny")
    names = list(FERPLUS_CLASSES)
    model = load_official(path, model="poster_v1_tiny", classes=names)
    assert model.cfg.num_classes == 8 and model.classes == names and model.pretrained_cfg is None
    with pytest.raises(CheckpointError, match="8 classes but num_classes=7"):
        load_official(path, model="poster_v1_tiny", classes=TINY7, num_classes=7)
    with pytest.raises(CheckpointError, match="7 class names given for a 8-class"):
        load_official(path, model="poster_v1_tiny", classes=TINY7)
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(model(x), src.eval()(x))


def test_official_channel_order_metadata(tmp_path):
    path = tmp_path / "v1.pth"
    torch.save({"model_state_dict": _official_sd(create_model("poster_v1_tiny", classes=_CLASS_NAMES[7]))}, path)
    assert load_official(path, model="poster_v1_tiny", classes=TINY7).meta["preprocessing"]["channel_order"] == "RGB"
    assert load_official(path, model="poster_v1_tiny", classes=TINY7, channel_order="BGR").meta["preprocessing"][
        "channel_order"] == "BGR"
    from poster_fer.weights.official import default_channel_order

    assert default_channel_order("poster_v1") == "BGR" and default_channel_order("poster_v2") == "RGB"


def test_load_official_weights_keyword_is_model_and_warns(tmp_path):
    """Issue 36: ``weights=NAME`` said what ``model=NAME`` says; it still works (same checks), with a warning."""
    path = tmp_path / "v1.pth"
    torch.save({"model_state_dict": _official_sd(create_model("poster_v1_tiny", classes=_CLASS_NAMES[7]))}, path)
    with pytest.warns(DeprecationWarning, match="pass model=NAME"):
        with pytest.raises(CheckpointError, match="are for 'poster_v1', not 'poster_v1_tiny'"):
            load_official(path, model="poster_v1_tiny", weights="poster_v1.rafdb_official")


def test_pretrained_mobilefacenet_shared_file():
    path = need_shared("weights", "mobilefacenet_68pt.pth.tar")
    model = create_model("poster_v1_tiny", classes=_CLASS_NAMES[7])
    before = model.face_landback.conv1.conv.weight.clone()
    report = load_pretrained_mobilefacenet(model, path)
    assert report.ok and report.loaded == 333 - 12  # the 12 regression-head entries are dropped
    assert sorted({k.split(".")[0] for k in report.dropped}) == ["output_layer"]
    assert not torch.equal(before, model.face_landback.conv1.conv.weight)


def test_pretrained_ir50_maps_stages(tmp_path):
    """A full 4-stage ir50.pth loads into v1 (body.N) and v2 (body1/2/3) alike; stage 4 is reported dropped."""
    sd = recipe_state_dict(need_shared("parity", "pretrained_ir50.keys.json"))
    assert len(sd) == 349
    path = tmp_path / "ir50.pth"
    torch.save(sd, path)
    for name in ("poster_v1", "poster_v2"):
        model = create_model(name, depth=1) if name == "poster_v1" else create_model(name, vit_depth=1)
        report = load_pretrained_ir50(model, path)
        # 292 entries of stem + stages 1-3 (the official module's 304 ir_back keys add the dead output_layer)
        assert report.ok and report.loaded == len(model.ir_back.state_dict()) == 292
        assert len(report.dropped) == 349 - 292
        body = model.ir_back.body[20] if name == "poster_v1" else model.ir_back.body3[13]
        torch.testing.assert_close(body.res_layer[1].weight, sd["body.20.res_layer.1.weight"])
    small = create_model("poster_v1_tiny", classes=_CLASS_NAMES[7])
    with pytest.raises(CheckpointError, match="do not fit"):
        load_pretrained_ir50(small, path)


def test_save_load_roundtrip(tmp_path):
    model = create_model("poster_v2_tiny", num_classes=3, classes=_CLASS_NAMES[3]).eval()
    out = save_model(model, tmp_path / "m", classes=["a", "b", "c"], metrics={"val": {"accuracy": 0.5}},
                     preprocessing={"channel_order": "BGR", "grayscale": True})
    meta = json.loads((out / "meta.json").read_text())
    assert meta["model"] == "poster_v2_tiny" and meta["classes"] == ["a", "b", "c"]
    assert meta["preprocessing"]["input_size"] == 224 and meta["preprocessing"]["channel_order"] == "BGR"
    assert meta["preprocessing"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    loaded = load_model(out)
    assert not loaded.training and loaded.meta["metrics"]["val"]["accuracy"] == 0.5
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    # A lone safetensors file is self-describing.
    (out / "meta.json").unlink()
    assert read_metadata(out / "model.safetensors")["classes"] == ["a", "b", "c"]
    assert load_model(out / "model.safetensors").cfg.num_classes == 3


def test_save_rejects_bad_metadata(tmp_path):
    model = create_model("poster_v1_tiny", classes=_CLASS_NAMES[7])
    with pytest.raises(ValueError, match="2 class names"):
        save_model(model, tmp_path / "x", classes=["a", "b"])
    with pytest.raises(ValueError, match="channel_order"):
        save_model(model, tmp_path / "x", preprocessing={"channel_order": "RBG"})


def test_load_model_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_model(tmp_path / "nothing")
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match="no poster-fer metadata"):
        load_model(tmp_path / "plain.safetensors")
    out = save_model(create_model("poster_v1_tiny", classes=_CLASS_NAMES[7]), tmp_path / "m")
    meta = json.loads((out / "meta.json").read_text())
    meta["config"]["depth"] = 2
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(out)
