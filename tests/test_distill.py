"""Distillation from saved teachers (training/distill.py): config checks, target mixing, the teacher pass, and a
student run whose results record its teacher."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from poster_fer.data import build_dataset
from poster_fer.weights import create_transform as eval_transform
from poster_fer.weights.io import load_model
from poster_fer.weights.preprocessing import Preprocessing
from poster_fer_apps.cli import main
from poster_fer_train import InferencePass
from poster_fer_train.distill import DistillConfig, TeacherTargets, teacher_logits
from poster_fer_train.loaders import BatchPreparer
from test_training import _synthetic_folder, _synthetic_recipe


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return _synthetic_folder(tmp_path_factory.mktemp("distill_data"), {"train": 12, "val": 6, "test": 6})


def test_config_reads_a_recipe_section_and_refuses_bad_values():
    assert DistillConfig.from_dict(None) is None
    assert DistillConfig.from_dict({"teachers": [], "alpha": 0.5}) is None
    cfg = DistillConfig.from_dict({"teachers": "a", "alpha": 0.25})
    assert cfg.teachers == ("a",) and cfg.alpha == 0.25 and cfg.mirror
    np.testing.assert_allclose(DistillConfig.from_dict({"teachers": ["a", "b"], "weights": [3, 1]}).teacher_weights(),
                               [0.75, 0.25])
    for bad, words in [({"teachers": ["a"], "alpha": 0.0}, "alpha"), ({"teachers": ["a"], "temperature": 0}, "temp"),
                       ({"teachers": ["a"], "weights": [1, 2]}, "one non-negative weight per teacher"),
                       ({"teachers": ["a"], "alhpa": 0.5}, r"unknown keys \['alhpa'\]")]:
        with pytest.raises(ValueError, match=words):
            DistillConfig.from_dict(bad)


def test_mix_blends_hard_and_soft_targets_and_picks_the_mirrored_view():
    probs = torch.tensor([[[0.6, 0.3, 0.1], [0.1, 0.3, 0.6]],
                          [[0.2, 0.2, 0.6], [0.3, 0.3, 0.4]]])
    tt = TeacherTargets(probs, alpha=0.75)
    mixed = tt.mix(torch.tensor([1, 0]), torch.tensor([0, 1]), torch.tensor([True, False]))
    torch.testing.assert_close(mixed, torch.tensor([[0.075, 0.475, 0.45], [0.4, 0.15, 0.45]]))
    soft = torch.tensor([[0.5, 0.5, 0.0]])
    torch.testing.assert_close(tt.mix(soft, torch.tensor([1])), 0.25 * soft + 0.75 * probs[1, 0:1])
    assert torch.allclose(mixed.sum(-1), torch.ones(2))
    # without a mirrored view a flipped sample takes the one view there is
    single = TeacherTargets(probs[:, :1], alpha=1.0)
    torch.testing.assert_close(single.lookup(torch.tensor([0]), torch.tensor([True])), probs[0, 0:1])
    with pytest.raises(ValueError, match="views"):
        TeacherTargets(probs[0], alpha=0.5)


def test_preparer_hands_the_mixed_target_to_the_loss():
    probs = torch.softmax(torch.randn(4, 1, 3), -1)
    prep = BatchPreparer(torch.device("cpu"), (0.5,) * 3, (0.25,) * 3, preload=True,
                         teacher=TeacherTargets(probs, alpha=0.5))
    batch = {"image": torch.zeros(2, 1, 8, 8, dtype=torch.uint8), "target": torch.tensor([2, 0]),
             "index": torch.tensor([3, 1])}
    _, target, _, _ = prep(batch)
    torch.testing.assert_close(target, 0.5 * torch.eye(3)[[2, 0]] + 0.5 * probs[[3, 1], 0])


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, synthetic):
    """One tiny model trained once on the synthetic data, the teacher of every test here that needs one."""
    root = tmp_path_factory.mktemp("teacher")
    recipe = _synthetic_recipe(root / "teacher.yaml", synthetic, epochs=1)
    assert main(["train", "--recipe", str(recipe), "--out", str(root / "teacher")]) == 0
    return root / "teacher" / "best"


def test_teacher_pass_equals_the_model_on_its_own_preprocessing(synthetic, teacher_dir):
    model = load_model(teacher_dir)
    ds = build_dataset("folder", str(synthetic), "val")
    transform = eval_transform(Preprocessing.from_meta(model.meta))
    run = InferencePass(device=torch.device("cpu"), batch_size=4, progress=False)
    logits = teacher_logits(model, ds, transform, mirror=True, run=run)
    assert logits.shape == (len(ds), 2, len(ds.classes))
    with pytest.warns(DeprecationWarning, match="run=InferencePass"):  # the earlier keywords still work
        legacy = teacher_logits(model, ds, transform, device=torch.device("cpu"), mirror=True, batch_size=4,
                                progress=False)
    torch.testing.assert_close(legacy, logits)
    x = torch.stack([transform(ds.get_image(i)) for i in range(len(ds))])
    with torch.no_grad():
        torch.testing.assert_close(logits[:, 0], model(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(logits[:, 1], model(x.flip(-1)), atol=1e-5, rtol=1e-5)


def test_student_run_records_its_teacher(tmp_path, synthetic, teacher_dir, capsys):
    recipe = _synthetic_recipe(tmp_path / "student.yaml", synthetic, epochs=1,
                               distill={"teachers": [str(teacher_dir), str(teacher_dir)], "alpha": 0.6,
                                        "mirror": True, "batch_size": 5})
    assert main(["train", "--recipe", str(recipe), "--out", str(tmp_path / "student")]) == 0
    info = json.loads((tmp_path / "student" / "results.json").read_text())["distill"]
    assert info["alpha"] == 0.6 and len(info["teachers"]) == 2
    first = info["teachers"][0]
    assert first["weight"] == 0.5 and len(first["sha256"]) == 64
    assert 0.0 <= first["train_agreement"] <= 1.0 and "val_accuracy" in first
    assert info["train_agreement"] == first["train_agreement"]  # two copies of one teacher: the same ensemble
    meta = json.loads((tmp_path / "student" / "best" / "meta.json").read_text())
    assert meta["provenance"]["distill"]["teachers"][0]["path"] == str(teacher_dir)
    assert "[distill]" in capsys.readouterr().out


def test_distill_needs_the_preload_pipeline(tmp_path, synthetic, capsys):
    recipe = _synthetic_recipe(tmp_path / "r.yaml", synthetic, epochs=1, distill={"teachers": ["x"]})
    data = yaml.safe_load(recipe.read_text())
    data["data"]["pipeline"] = "transforms"
    data["data"]["num_workers"] = 0
    recipe.write_text(yaml.safe_dump(data))
    assert main(["train", "--recipe", str(recipe), "--out", str(tmp_path / "run")]) != 0
    assert "train.distill needs data.pipeline: preload" in capsys.readouterr().err


def test_teacher_logits_on_disk_are_reused_and_keyed_by_their_inputs(tmp_path, synthetic, teacher_dir, monkeypatch):
    import poster_fer_train.distill as distill

    train = build_dataset("folder", str(synthetic), "train")
    calls = []
    real = distill.teacher_logits
    monkeypatch.setattr(distill, "teacher_logits", lambda *a, **k: calls.append(k["mirror"]) or real(*a, **k))

    def build(**cfg):
        config = DistillConfig.from_dict({"teachers": [str(teacher_dir)], "cache_dir": str(tmp_path / "cache"),
                                          "batch_size": 8, **cfg})
        run = distill.TeacherRun(torch.device("cpu"), say=lambda _: None, progress=False)
        return distill.build_teacher_targets(config, train, train.classes, run=run)

    first, info = build(alpha=0.5)
    assert calls == [True] and info["teachers"][0]["source"] == {"train": "computed"}
    again, info = build(alpha=0.9, temperature=2.0)  # mixing settings reuse the logits
    assert calls == [True] and info["teachers"][0]["source"] == {"train": "disk"}
    torch.testing.assert_close(again.probs, torch.softmax(torch.log(first.probs) / 2.0, -1), atol=1e-5, rtol=1e-4)
    build(mirror=False)  # a different view set is a different file
    assert calls == [True, False] and len(list((tmp_path / "cache").glob("teacher-*.safetensors"))) == 2
    for f in (tmp_path / "cache").glob("teacher-*.safetensors"):
        f.write_bytes(b"damaged")
    _, info = build()
    assert calls == [True, False, True] and info["teachers"][0]["source"] == {"train": "computed"}
