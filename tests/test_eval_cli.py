"""``poster-fer eval`` end to end on a tiny model and a 21-row FER2013-style csv, checked by hand counts."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from poster_fer import create_model, save_model
from poster_fer.data import FER2013_CLASSES, IMAGENET_MEAN, IMAGENET_STD, RAFDB_CLASSES, build_dataset
from poster_fer.evaluation.class_match import ClassMismatchError, canonical_class_name, match_classes
from poster_fer.evaluation.evaluate import run_evaluation
from poster_fer.evaluation.samples import subsample_indices
from poster_fer_apps.cli import main

#: class names for the tiny models these tests build (save_model refuses a model without any)
_CLASS_NAMES = {n: [f"c{i}" for i in range(n)] for n in range(1, 11)}
_CLASS_NAMES[7] = ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"]
_CLASS_NAMES[8] = ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt"]

SIZE = 48
# Test rows (PrivateTest) cover every class, Fear twice, so per-class counts are not all equal.
TEST_LABELS = [0, 1, 2, 3, 4, 5, 6, 2]


def _tiny(**kw):
    torch.manual_seed(0)
    return create_model("poster_v1_tiny", input_size=SIZE, backbone_size=SIZE, landmark_size=SIZE,
                        image_tokens="pool", **kw, classes=_CLASS_NAMES[kw.get("num_classes", 7)])


def write_fer2013_csv(path, rows, seed=0):
    """A Kaggle-layout fer2013.csv of (label, usage) rows: a brightness ramp per class plus noise."""
    rng = np.random.default_rng(seed)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["emotion", "pixels", "Usage"])
        for label, usage in rows:
            base = np.linspace(0, 200, 2304) * (label + 1) / 7 + rng.integers(0, 55, 2304)
            writer.writerow([label, " ".join(str(int(v)) for v in base.clip(0, 255)), usage])
    return path


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    root = tmp_path_factory.mktemp("fer")
    rows = [(i % 7, "Training") for i in range(7)] + [(i % 7, "PublicTest") for i in range(6)]
    rows += [(label, "PrivateTest") for label in TEST_LABELS]
    write_fer2013_csv(root / "fer2013.csv", rows)
    model = _tiny()
    with torch.no_grad():  # spread the head so the tiny model does not predict one class for everything
        model.head.linear.weight.mul_(50.0)
    ckpt = save_model(model, root / "ckpt", classes=list(FER2013_CLASSES),
                      preprocessing={"input_size": SIZE, "grayscale": True})
    return root, ckpt, model.eval()


def _inputs(root, flip=False):
    """The test split as the checkpoint's preprocessing makes it, built by hand (not by the code under test)."""
    ds = build_dataset("fer2013", root, "test")
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    xs = []
    for i in range(len(ds)):
        img = ds.get_image(i).convert("L").convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        xs.append((x - mean) / std)
    x = torch.stack(xs)
    return x.flip(-1) if flip else x


def _read_predictions(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_eval_writes_every_file_and_numbers_match_a_hand_count(fixture, tmp_path, capsys):
    root, ckpt, model = fixture
    out = tmp_path / "eval"
    rc = main(["eval", "--weights", str(ckpt), "--data", str(root), "--dataset", "fer2013", "--split", "test",
               "--tta", "flip", "--tsne", "--batch-size", "3", "--device", "cpu", "--out", str(out)])
    assert rc == 0
    for name in ("metrics.json", "report.md", "confusion.png", "predictions.csv", "tsne.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert "accuracy" in capsys.readouterr().out

    rows = _read_predictions(out / "predictions.csv")
    assert len(rows) == len(TEST_LABELS)
    true = np.array([int(r["true"]) for r in rows])
    pred = np.array([int(r["pred"]) for r in rows])
    probs = np.array([[float(r[f"prob_{c}"]) for c in FER2013_CLASSES] for r in rows])
    assert true.tolist() == TEST_LABELS
    assert [r["true_name"] for r in rows] == [FER2013_CLASSES[t] for t in TEST_LABELS]
    assert np.array_equal(probs.argmax(1), pred)
    assert len(set(pred.tolist())) > 1, "fixture should give varied predictions"

    # The probabilities are the flip-TTA average of the model on the checkpoint's preprocessing.
    with torch.no_grad():
        expect = 0.5 * (model(_inputs(root)).softmax(1) + model(_inputs(root, flip=True)).softmax(1))
    np.testing.assert_allclose(probs, expect.numpy(), atol=2e-5)

    m = json.loads((out / "metrics.json").read_text())
    assert m["num_samples"] == len(rows)
    assert m["accuracy"] == pytest.approx(np.mean(true == pred))
    conf = np.zeros((7, 7), int)
    for t, p in zip(true, pred, strict=True):
        conf[t, p] += 1
    assert m["confusion"] == conf.tolist()
    recalls = []
    for k, name in enumerate(FER2013_CLASSES):
        hits, n = int(np.sum((true == k) & (pred == k))), int(np.sum(true == k))
        assert m["per_class"][name]["support"] == n
        assert m["per_class"][name]["accuracy"] == pytest.approx(hits / n)
        recalls.append(hits / n)
    assert m["mean_class_accuracy"] == pytest.approx(np.mean(recalls))
    prov = m["provenance"]
    assert prov["tta"] == "flip"
    assert prov["checkpoint"]["path"] == str(ckpt.resolve())
    assert prov["dataset"]["kind"] == "fer2013" and prov["dataset"]["split"] == "test"
    assert prov["dataset"]["load_report"]["num_samples"] == len(TEST_LABELS)
    assert prov["preprocessing"]["grayscale"] is True
    assert prov["command"].startswith("poster-fer eval --weights")
    assert "Per-class accuracy" in (out / "report.md").read_text()


def test_run_evaluation_features_and_subset(fixture):
    root, _, model = fixture
    ds = build_dataset("fer2013", root, "test")
    from poster_fer import create_transform as eval_transform

    tf = eval_transform({"input_size": SIZE, "grayscale": True})
    out = run_evaluation(model, ds, batch_size=4, collect_features=True, transform=tf, indices=[1, 3, 6],
                         progress=False)
    assert out["features"].shape == (3, model.num_features)
    assert out["y_true"].tolist() == [TEST_LABELS[i] for i in (1, 3, 6)]
    with torch.no_grad():
        direct = model(_inputs(root)[[1, 3, 6]]).softmax(1).numpy()
    np.testing.assert_allclose(out["probs"], direct, atol=2e-5)
    assert out["paths"][0].startswith("fer2013.csv#line")
    with pytest.raises(ValueError, match="tta"):
        run_evaluation(model, ds, tta="five_crop", transform=tf)


def test_class_count_mismatch_is_a_clear_error(fixture, tmp_path, capsys):
    root, _, _ = fixture
    ckpt = save_model(_tiny(num_classes=8), tmp_path / "eight")
    rc = main(["eval", "--weights", str(ckpt), "--data", str(root), "--dataset", "fer2013", "--out",
               str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "class-count mismatch" in err and "8 classes" in err and "7" in err
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_class_name_mismatch_needs_by_position(fixture, tmp_path, capsys):
    root, _, _ = fixture
    names = [f"c{i}" for i in range(7)]
    ckpt = save_model(_tiny(), tmp_path / "renamed", classes=names, preprocessing={"input_size": SIZE})
    args = ["eval", "--weights", str(ckpt), "--data", str(root), "--dataset", "fer2013", "--max-samples", "4"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 2
    assert "class-name mismatch" in capsys.readouterr().err
    assert main(args + ["--classes-by-position", "--out", str(tmp_path / "b")]) == 0
    m = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert m["class_names"] == names and m["num_samples"] == 4


def test_same_classes_in_another_order_are_remapped(fixture, tmp_path):
    """A RAF-DB-ordered checkpoint scored on FER2013 labels: truths are moved to the model's indices."""
    root, _, _ = fixture
    ckpt = save_model(_tiny(), tmp_path / "raf", classes=list(RAFDB_CLASSES),
                      preprocessing={"input_size": SIZE, "grayscale": True})
    out = tmp_path / "o"
    assert main(["eval", "--weights", str(ckpt), "--data", str(root), "--dataset", "fer2013", "--out",
                 str(out)]) == 0
    rows = _read_predictions(out / "predictions.csv")
    got = [canonical_class_name(r["true_name"]) for r in rows]
    assert got == [canonical_class_name(FER2013_CLASSES[t]) for t in TEST_LABELS]
    m = json.loads((out / "metrics.json").read_text())
    assert m["class_names"] == list(RAFDB_CLASSES)
    assert m["provenance"]["dataset"]["class_mapping"]["Happy"] == "Happiness"


def test_match_classes_rules():
    assert match_classes(["a", "b"], ["a", "b"]) is None
    assert match_classes(["Happy", "Sad"], ["sadness", "happiness"]).tolist() == [1, 0]
    assert match_classes(["x", "y"], ["p", "q"], by_position=True) is None
    with pytest.raises(ClassMismatchError, match="class-count"):
        match_classes(["a", "b"], ["a", "b", "c"])
    with pytest.raises(ClassMismatchError, match="class-name"):
        match_classes(["a", "b"], ["a", "c"])


def test_subsample_indices_are_reproducible_and_sorted():
    a, b = subsample_indices(100, 10), subsample_indices(100, 10)
    assert a.tolist() == b.tolist() and a.tolist() == sorted(set(a.tolist())) and len(a) == 10
    assert subsample_indices(5, 10).tolist() == list(range(5))


def test_eval_needs_a_dataset_kind_and_an_existing_checkpoint(fixture, tmp_path, capsys):
    root, ckpt, _ = fixture
    assert main(["eval", "--weights", str(ckpt), "--data", str(root), "--out", str(tmp_path / "o")]) == 2
    assert "--dataset" in capsys.readouterr().err
    assert main(["eval", "--weights", str(tmp_path / "nope"), "--data", str(root), "--dataset", "fer2013",
                 "--out", str(tmp_path / "o")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err


def test_dataset_and_root_default_to_what_training_recorded(fixture, tmp_path):
    root, _, _ = fixture
    recipe = {"data": {"kind": "fer2013", "root": str(root), "options": {}}}
    ckpt = save_model(_tiny(), tmp_path / "trained", classes=list(FER2013_CLASSES),
                      preprocessing={"input_size": SIZE, "grayscale": True},
                      provenance={"source": "poster-fer train", "recipe": recipe})
    out = tmp_path / "o"
    assert main(["eval", "--weights", str(ckpt), "--max-samples", "3", "--out", str(out)]) == 0
    prov = json.loads((out / "metrics.json").read_text())["provenance"]
    assert prov["dataset"]["kind"] == "fer2013" and prov["dataset"]["root"] == str(root.resolve())
    assert prov["dataset"]["evaluated"] == 3 and prov["dataset"]["num_samples"] == len(TEST_LABELS)
    assert prov["checkpoint"]["provenance"]["source"] == "poster-fer train"


def test_eval_transform_honours_grey_and_channel_order():
    from poster_fer import create_transform as eval_transform

    red = Image.new("RGB", (20, 20), (200, 10, 30))
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    grey = eval_transform({"input_size": 8, "grayscale": True})(red) * std + mean
    assert grey.shape == (3, 8, 8)
    assert torch.allclose(grey[0], grey[1], atol=1e-5) and torch.allclose(grey[1], grey[2], atol=1e-5)
    assert abs(float(grey[0, 0, 0]) - round(0.299 * 200 + 0.587 * 10 + 0.114 * 30) / 255) < 1e-5
    bgr = eval_transform({"input_size": 8, "channel_order": "BGR"})(red) * std + mean
    assert torch.allclose(bgr[:, 0, 0], torch.tensor([30, 10, 200]) / 255.0, atol=1e-5)
    # one implementation (Preprocessing) serves every path, so any recorded resize is honoured, a bogus one refused
    nearest = eval_transform({"input_size": 8, "resize_interpolation": "nearest"})(red) * std + mean
    assert torch.allclose(nearest[:, 0, 0], torch.tensor([200, 10, 30]) / 255.0, atol=1e-5)
    with pytest.raises(ValueError, match="resize_interpolation"):
        eval_transform({"input_size": 8, "resize_interpolation": "cubic-ish"})


def test_evaluate_dataset_takes_typed_options_and_refuses_an_unknown_setting():
    """Issue 36: one EvalOptions instead of eighteen keywords; the keywords still work and override it, and a
    misspelt one is refused before anything runs."""
    from poster_fer.evaluation import EvalOptions, evaluate_dataset

    with pytest.raises(TypeError, match="batchsize"):
        evaluate_dataset(None, None, None, EvalOptions(batch_size=8), batchsize=4)
    assert EvalOptions().batch_size == 64 and EvalOptions(tta="flip").tta == "flip"


def test_run_evaluation_reads_eval_options_and_keeps_the_old_call_forms(fixture):
    """Issue 36: run_evaluation takes an EvalOptions; its fields as keywords still override it (as
    evaluate_dataset takes them), the old positional settings still work with a warning, a typo is refused."""
    from poster_fer import create_transform
    from poster_fer.evaluation import EvalOptions

    root, _, model = fixture
    ds = build_dataset("fer2013", root, "test")
    tf = create_transform({"input_size": SIZE, "grayscale": True})
    opts = EvalOptions(batch_size=3, tta="flip", collect_features=True, progress=False, temperature=2.0)
    new = run_evaluation(model, ds, options=opts, transform=tf)
    by_keyword = run_evaluation(model, ds, batch_size=3, tta="flip", collect_features=True, progress=False,
                                temperature=2.0, transform=tf)
    with pytest.warns(DeprecationWarning, match="options=EvalOptions"):
        by_position = run_evaluation(model, ds, 3, "flip", "cpu", True, transform=tf, progress=False,
                                     temperature=2.0)
    for key in ("y_pred", "probs", "probs_uncalibrated", "logits", "features"):
        np.testing.assert_array_equal(new[key], by_keyword[key])
        np.testing.assert_array_equal(new[key], by_position[key])
    assert new["temperature"] == 2.0 and new["features"].shape == (len(ds), model.num_features)
    plain = run_evaluation(model, ds, options=EvalOptions(progress=False), transform=tf)
    assert plain["temperature"] == 1.0 and plain["features"] is None  # None means T = 1 here, not the card's
    with pytest.raises(TypeError, match="max_sample"):
        run_evaluation(model, ds, transform=tf, max_sample=3)
    with pytest.raises(TypeError, match="multiple values"):
        run_evaluation(model, ds, 3, transform=tf, batch_size=3)


def test_predict_split_options_and_the_old_keywords(fixture):
    """Issue 36: predict_split's run settings are one PredictOptions; the keywords before it warn and agree."""
    from poster_fer import create_transform
    from poster_fer.evaluation import PredictOptions, predict_split
    from poster_fer.evaluation.samples import EvalImages

    root, _, model = fixture
    ds = build_dataset("fer2013", root, "test")
    idx = np.arange(len(ds))
    images = EvalImages(ds, idx, np.asarray(ds.labels), create_transform({"input_size": SIZE, "grayscale": True}))
    loader = torch.utils.data.DataLoader(images, batch_size=3)

    def prepare(batch):
        return batch["image"], batch["target"], {}, None

    criterion = torch.nn.CrossEntropyLoss()
    new = predict_split(model, loader, prepare, device=torch.device("cpu"),
                        options=PredictOptions(criterion=criterion, tta_flip=True, progress=False))
    with pytest.warns(DeprecationWarning, match="options=PredictOptions"):
        old = predict_split(model, loader, prepare, device=torch.device("cpu"), criterion=criterion, tta_flip=True,
                            progress=False)
    assert new.indices.tolist() == idx.tolist() and new.y_true.tolist() == TEST_LABELS
    assert np.isfinite(new.loss) and new.loss == old.loss and new.flip_logits is not None
    np.testing.assert_array_equal(new.probs, old.probs)
    with pytest.raises(TypeError, match="tta"):
        predict_split(model, loader, prepare, device=torch.device("cpu"), tta=True)


def test_fit_dataset_temperature_takes_eval_options(fixture, monkeypatch):
    """Issue 36: fit_dataset_temperature reads the same EvalOptions; keywords override it, and a setting it does
    not use is refused rather than silently ignored."""
    from poster_fer.evaluation import EvalOptions, evaluate, fit_dataset_temperature

    seen = []  # the tiny model predicts no better than chance, so record what the fit is given instead

    def fake_fit(logits, y_true):
        seen.append((logits.copy(), y_true.copy()))
        return float(len(seen))

    monkeypatch.setattr(evaluate, "fit_temperature", fake_fit)
    root, _, model = fixture
    ds = build_dataset("fer2013", root, "test")
    pre = {"input_size": SIZE, "grayscale": True}
    by_options = fit_dataset_temperature(model, ds, EvalOptions(preprocessing=pre, batch_size=4, progress=False,
                                                                max_samples=5))
    by_keyword = fit_dataset_temperature(model, ds, EvalOptions(batch_size=64), preprocessing=pre, batch_size=4,
                                         progress=False, max_samples=5)
    assert by_options == (1.0, 5) and by_keyword == (2.0, 5)
    np.testing.assert_array_equal(seen[0][0], seen[1][0])
    np.testing.assert_array_equal(seen[0][1], seen[1][1])
    assert seen[0][0].shape == (5, 7)
    with pytest.raises(TypeError, match="tta"):
        fit_dataset_temperature(model, ds, tta="flip")


def test_write_tsne_options_and_the_old_keywords(tmp_path):
    """Issue 36: write_tsne's settings are one TsneOptions; keywords or positions (the form before) warn."""
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    from poster_fer.evaluation import TsneOptions, write_tsne

    rng = np.random.default_rng(0)
    feats, labels = rng.normal(size=(12, 5)), np.arange(12) % 3
    new = write_tsne(feats, labels, ["a", "b", "c"], tmp_path / "a.png", options=TsneOptions(max_points=8,
                                                                                             max_iter=250))
    with pytest.warns(DeprecationWarning, match="options=TsneOptions"):
        old = write_tsne(feats, labels, ["a", "b", "c"], tmp_path / "b.png", 0, 8, max_iter=250)
    assert new.shape == (8, 2) and (tmp_path / "a.png").is_file()
    np.testing.assert_array_equal(new, old)
