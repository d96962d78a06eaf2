"""The model card (issue 36): one typed, frozen description of a model, stored once, and the one rule for a new
head, through every path a re-headed model takes (save, load, Recognizer, ONNX export)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

import poster_fer
from poster_fer.card import ModelCard
from poster_fer.export import OnnxRuntimeModel, export_onnx
from poster_fer.inference import Recognizer
from poster_fer.samples import sample_path
from poster_fer.weights.io import _HEADER_KEY
from poster_fer.weights.records import RECORDS_FILE, load_records, pretrained_root

pytestmark = pytest.mark.usefixtures("one_thread")

SHIPPED = poster_fer.list_pretrained()
FERPLUS = list(poster_fer.get_weights(poster_fer.DEFAULT_MODEL).classes)
HEADS = {  # a new head by size, and by names: a subset, a superset and the same classes reordered
    "num_classes": {"num_classes": 3},
    "subset": {"classes": ["sadness", "happiness", "neutral"]},
    "superset": {"classes": [*FERPLUS, "pain"]},
    "reordered": {"classes": FERPLUS[::-1]},
}
# every head on the default model; one on each other shipped model (ONNX exports cost seconds each)
CASES = [(poster_fer.DEFAULT_MODEL, head) for head in HEADS] + \
        [(name, "reordered") for name in SHIPPED if name != poster_fer.DEFAULT_MODEL]


def _header_card(weights) -> dict:
    """The card stored in a safetensors header, read without safetensors (8-byte length, then JSON)."""
    with open(weights, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return json.loads(json.loads(f.read(n))["__metadata__"][_HEADER_KEY])


@pytest.mark.parametrize("name,head", CASES, ids=[f"{n}-{h}" for n, h in CASES])
def test_a_new_head_derives_a_new_card_through_save_load_recognizer_and_onnx(name, head, tmp_path):
    original = poster_fer.create_model(name, pretrained=True)
    assert original.pretrained_cfg is original.card and original.card.name == name
    model = poster_fer.create_model(name, pretrained=True, **HEADS[head])
    card = model.card
    # the one rule: nothing that described the old head survives; the new card says whom it descends from
    assert card.name is None and card.calibration == {} and card.metrics == {} and card.file is None
    assert card.parent == name and card.origin == f"fine-tuned from {name}"
    assert card.licence == original.card.licence and card.preprocessing == original.card.preprocessing
    assert model.pretrained_cfg is card and card.num_classes == model.cfg.num_classes
    if "classes" in HEADS[head]:
        assert model.classes == HEADS[head]["classes"]
        old_w, new_w = original.get_classifier().weight, model.get_classifier().weight
        for i, c in enumerate(model.classes):  # rows kept by class name, bit for bit
            if c in FERPLUS:
                assert torch.equal(new_w[i], old_w[FERPLUS.index(c)]), c
    else:
        assert model.classes is None
        model.card = dataclasses.replace(card, classes=("a", "b", "c"))  # names are needed to save

    folder = poster_fer.save_model(model, tmp_path / "mine")
    stored = json.loads((folder / "meta.json").read_text())
    assert "weights" not in stored and "operating_points" not in stored and "temperature" not in stored
    assert _header_card(folder / "model.safetensors") == stored
    loaded = poster_fer.load_model(folder)
    assert loaded.card == model.card and loaded.pretrained_cfg.name is None
    rec = Recognizer.from_checkpoint(folder)
    (face,) = rec.predict(str(sample_path()))
    assert list(face.probabilities) == list(model.classes)

    onnx_file = tmp_path / "mine.onnx"
    export_onnx(loaded, onnx_file)
    runtime = OnnxRuntimeModel(onnx_file)
    assert runtime.meta["classes"] == list(model.classes) and "weights" not in runtime.meta
    batch = torch.rand(2, 3, loaded.cfg.input_size, loaded.cfg.input_size)
    np.testing.assert_allclose(_calibrated(runtime, batch), loaded.predict_proba(batch), atol=1e-5)


def _calibrated(runtime: OnnxRuntimeModel, batch: torch.Tensor) -> np.ndarray:
    from poster_fer.probabilities import calibrated_probabilities

    return calibrated_probabilities(runtime(batch.numpy()), runtime.meta)


def test_the_index_and_the_stored_cards_cannot_disagree():
    """Stored once: a shipped model's records.json entry holds only what the index needs, its card is the folder's
    meta.json, and the safetensors header (covered by the indexed sha256) holds the same text; editing one alone
    fails here."""
    from poster_fer.checksums import sha256_of

    index = json.loads((pretrained_root() / RECORDS_FILE).read_text())
    for name in SHIPPED:
        entry = index[name]
        assert set(entry) <= {"architecture", "file", "sha256", "onnx", "aliases", "default"}, entry.keys()
        weights = pretrained_root() / entry["file"]
        assert sha256_of(weights) == entry["sha256"]
        stored = json.loads((weights.parent / "meta.json").read_text())
        assert _header_card(weights) == stored
        assert ModelCard.from_meta(stored).name == name
        card = load_records()[name]
        assert card.to_meta() == stored and card.metrics["test"]["split"]  # metrics say what they were measured on


def test_meta_json_round_trips_and_old_writes_warn_and_go_through_the_card(tmp_path):
    for name in SHIPPED:
        stored = json.loads((pretrained_root() / name / "meta.json").read_text())
        assert ModelCard.from_meta(stored).to_meta() == stored
    model = poster_fer.create_model("poster_v1_tiny", num_classes=2, classes=["a", "b"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.card.classes = ("x", "y")  # type: ignore[misc]
    assert model.meta["classes"] == ["a", "b"]  # the old dict, read from the card
    with pytest.warns(DeprecationWarning, match="model.card"):
        model.meta["temperature"] = 2.0
    assert model.card.temperature == 2.0
    with pytest.warns(DeprecationWarning, match="assign model.card"):
        model.meta = {"classes": ["c", "d"]}
    assert model.classes == ["c", "d"]
    with pytest.raises(ValueError, match="3 class names for a 2-class head"):
        model.card = dataclasses.replace(model.card, classes=("a", "b", "c"))


def test_a_retrained_copy_does_not_inherit_the_published_name(tmp_path):
    """weights/io compares classes and sha256 before handing out a published card: a file whose metadata names
    the shipped model but whose tensors differ loads with its own card and the name as its parent."""
    model = poster_fer.create_model(poster_fer.DEFAULT_MODEL, pretrained=True)
    with torch.no_grad():
        model.get_classifier().bias.add_(0.01)  # a retrained copy, its card untouched
    folder = poster_fer.save_model(model, tmp_path / "copy")
    assert json.loads((folder / "meta.json").read_text())["weights"] == poster_fer.DEFAULT_MODEL
    loaded = poster_fer.load_model(folder)
    assert loaded.card.name is None and loaded.card.parent == poster_fer.DEFAULT_MODEL
    assert loaded.card.file is None and not loaded.card.shipped


# Calibrated probabilities on the shipped sample before the card moved into the folders (2026-12-07, torch
# backend): moving the description changed each file's header, never a tensor or a calibration.
BEFORE = {
    "poster_v1_mfn64_image.ferplus": {"neutral": 0.9246, "sadness": 0.062, "contempt": 0.0057},
    "poster_v1_mfn_image.ferplus": {"neutral": 0.8904, "sadness": 0.082, "contempt": 0.0198},
    "poster_v1_s.ferplus": {"neutral": 0.9498, "sadness": 0.0218, "contempt": 0.0158},
    "poster_v1_s_image.ferplus": {"neutral": 0.929, "sadness": 0.0601, "contempt": 0.0041},
}


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_shipped_weights_give_the_probabilities_they_gave_before(name):
    (face,) = Recognizer.from_checkpoint(name, backend="torch").predict(str(sample_path()))
    for cls, p in BEFORE[name].items():
        assert face.probabilities[cls] == pytest.approx(p, abs=1e-4), cls


def _earlier_layouts(folder, tmp_path):
    """One folder of each layout earlier releases wrote, from one saved tiny model."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    meta = json.loads((folder / "meta.json").read_text())
    with safe_open(str(folder / "model.safetensors"), "numpy") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}

    def layout(name, record, with_side=True, header=True):
        out = tmp_path / name
        out.mkdir()
        save_file(tensors, str(out / "model.safetensors"),
                  metadata={_HEADER_KEY: json.dumps(record)} if header else None)
        if with_side:
            (out / "meta.json").write_text(json.dumps(record))
        return out

    first = {k: meta[k] for k in ("format", "model", "family", "config", "classes")}  # the first format
    return {
        "first record: no preprocessing, calibration or provenance": (layout("first", first), None),
        "a lone .safetensors (the record only in its header)": (layout("lone", meta, with_side=False)
                                                                / "model.safetensors", None),
        "meta.json only (a header without the record)": (layout("side", meta, header=False), None),
        "no class names (load_model(classes=...) names them)": (
            layout("nameless", {k: v for k, v in meta.items() if k != "classes"}), meta["classes"]),
        "a calibrated record with a retired weights name": (
            layout("retired", {**meta, "temperature": 1.5, "weights": "poster_v1_ferplus_s"}), None),
    }


def test_every_earlier_saved_layout_still_loads_and_labels(tmp_path):
    model = poster_fer.create_model("poster_v1_tiny", num_classes=3, classes=["a", "b", "c"], input_size=48,
                                    backbone_size=48, image_tokens="pool")
    folder = poster_fer.save_model(model, tmp_path / "now")
    x = torch.rand(2, 3, 48, 48)
    for what, (path, classes) in _earlier_layouts(folder, tmp_path).items():
        loaded = poster_fer.load_model(path, classes=classes)
        assert loaded.classes == ["a", "b", "c"], what
        assert loaded.card.name is None, what  # a retired or foreign name is not the shipped card
        assert loaded.predict_proba(x).shape == (2, 3), what
        torch.testing.assert_close(loaded(x), model.eval()(x)), what


def test_docs_models_table_is_the_cards():
    """docs/models.md's table of shipped weights is generated from the cards: a card edited alone fails here."""
    from pathlib import Path

    from poster_fer_train.release import TABLE_BEGIN, TABLE_END, models_table

    text = (Path(__file__).resolve().parents[1] / "docs" / "models.md").read_text()
    generated = text.split(TABLE_BEGIN, 1)[1].split(TABLE_END, 1)[0].strip()
    assert generated == models_table()
    for name in SHIPPED:
        assert f"`{name}`" in generated


def test_review_findings_stay_fixed(tmp_path):
    """Found by reviewing the card change: a converted official checkpoint keeps its own card; a retired name in
    ``extra`` never overrides the card's name; copying ``model.meta`` copies a dict, not the model; a write through
    a stale view does not undo a newer change; an unreadable shipped card does not break the index."""
    import copy
    import pickle

    from poster_fer.probabilities import set_temperature
    from poster_fer.weights.io import published_card

    meta = {"format": "poster-fer/1", "model": "poster_v1", "family": "poster_v1", "config": {"num_classes": 7},
            "classes": list(poster_fer.get_weights("poster_v1.rafdb_official").classes),
            "preprocessing": {"input_size": 224, "channel_order": "RGB"}, "temperature": 1.7,
            "weights": "poster_v1.rafdb_official", "provenance": {"source": "official", "file": "rafdb.pth"}}
    card = published_card(meta, tmp_path / "unused.safetensors")
    assert card.preprocessing["channel_order"] == "RGB" and card.temperature == 1.7
    assert card.name == "poster_v1.rafdb_official" and card.provenance["file"] == "rafdb.pth"

    retired = ModelCard.from_meta({"model": "poster_v1_s", "classes": ["a"], "weights": "poster_v1_ferplus_s"})
    assert retired.name is None and retired.to_meta()["weights"] == "poster_v1_ferplus_s"
    assert dataclasses.replace(retired, name="poster_v1_s.mine").to_meta()["weights"] == "poster_v1_s.mine"

    model = poster_fer.create_model(poster_fer.DEFAULT_MODEL, pretrained=True)
    assert type(copy.copy(model.meta)) is dict and len(pickle.dumps(model.meta)) < 100_000
    assert model.pretrained_cfg.shipped
    view = model.meta
    set_temperature(model, 3.0)
    with pytest.warns(DeprecationWarning):
        view["note"] = 1
    assert model.card.temperature == 3.0 and model.card.extra["note"] == 1 and model.card.shipped


def test_an_unreadable_shipped_card_lists_and_says_what_is_wrong(tmp_path, monkeypatch):
    import poster_fer.card as card_module
    import poster_fer.weights.records as records

    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "meta.json").write_text("{ not json")
    (tmp_path / RECORDS_FILE).write_text(json.dumps({"poster_v1_s.x": {"file": "x/model.safetensors"}}))
    for module in (records, card_module):
        monkeypatch.setattr(module, "pretrained_root", lambda: tmp_path)
    records.load_records.cache_clear()
    try:
        card = records.load_records()["poster_v1_s.x"]
        assert "unusable" in card.description and "meta.json" in card.description
        with pytest.raises(poster_fer.CheckpointError, match="missing from this installation"):
            card.verify()
    finally:
        records.load_records.cache_clear()
