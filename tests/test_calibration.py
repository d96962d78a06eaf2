"""Calibration: temperature fitting, ECE / reliability bins, the temperature in metadata, backends and eval."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from poster_fer import create_model, load_model, read_metadata, save_model
from poster_fer.data import FER2013_CLASSES, build_dataset
from poster_fer.evaluation import (
    apply_temperature,
    calibrate_model,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
    run_evaluation,
    softmax_with_temperature,
)
from poster_fer.probabilities import get_temperature, set_temperature
from poster_fer.weights import create_transform as eval_transform
from poster_fer_apps.cli import main

#: class names for the tiny models these tests build (save_model refuses a model without any)
_CLASS_NAMES = {n: [f"c{i}" for i in range(n)] for n in range(1, 11)}
_CLASS_NAMES[7] = ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"]
_CLASS_NAMES[8] = ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt"]

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny models, one thread

SIZE = 48


def _tiny(seed: int = 0, size: int = SIZE):
    """48 px with pooled image tokens for the eval tests; ONNX export needs a size the 7x7 pools divide (112)."""
    torch.manual_seed(seed)
    extra = {"image_tokens": "pool"} if size % 7 else {}
    model = create_model("poster_v1_tiny", input_size=size, backbone_size=size, landmark_size=size, **extra,
                         classes=_CLASS_NAMES[7])
    with torch.no_grad():  # spread the head so predictions (and confidences) vary between images
        model.head.linear.weight.mul_(50.0)
    return model.eval()


def _sample_labels(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> np.ndarray:
    """One label per row drawn from softmax(logits / temperature) (inverse-CDF sampling)."""
    p = softmax_with_temperature(logits, temperature)
    return (p.cumsum(axis=1) > rng.random((p.shape[0], 1))).argmax(axis=1)


# ---------------------------------------------------------------------------------------------------------
# fitting


@pytest.mark.parametrize("t_true", [0.6, 2.5])
def test_fit_recovers_the_temperature_that_generated_the_labels(t_true):
    rng = np.random.default_rng(1)
    z = rng.normal(scale=3.0, size=(20000, 7))
    y = _sample_labels(z, t_true, rng)
    t = fit_temperature(z, y)
    assert abs(t - t_true) < 0.05 * t_true
    # torch tensors (float32, int64) give the same answer as numpy
    t_torch = fit_temperature(torch.from_numpy(z).float(), torch.from_numpy(y))
    assert t_torch == pytest.approx(t, rel=1e-4)
    # it is the NLL minimum: nudging T either way is worse
    def nll(temp: float) -> float:
        p = softmax_with_temperature(z, temp)
        return float(-np.mean(np.log(p[np.arange(len(y)), y])))

    assert nll(t) < nll(t * 1.05) and nll(t) < nll(t / 1.05) and nll(t) < nll(1.0)


def test_fit_is_deterministic_and_ignores_a_per_row_shift():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(500, 5)) * 2
    y = _sample_labels(z, 1.7, rng)
    t = fit_temperature(z, y)
    assert fit_temperature(z, y) == t
    assert fit_temperature(z + rng.normal(size=(500, 1)) * 10, y) == pytest.approx(t, rel=1e-6)
    assert fit_temperature(z * 3, y) == pytest.approx(3 * t, rel=1e-6)  # scaling logits scales T


@pytest.mark.parametrize(
    ("logits", "targets", "match"),
    [
        (np.zeros((0, 3)), np.zeros(0, int), "empty"),
        (np.ones(4), np.zeros(4, int), "2-D"),
        (np.ones((4, 1)), np.zeros(4, int), "2 classes"),
        (np.array([[0.0, np.nan], [1.0, 0.0]]), np.array([0, 1]), "NaN"),
        (np.ones((3, 4)), np.array([0, 1, 2]), "constant"),
        (np.eye(3) * 5, np.array([0, 1, 2]), "separate the targets perfectly"),
        (np.eye(3) * 5, np.array([1, 2, 0]), "better than chance"),
        (np.eye(3), np.array([0, 1, 3]), r"lie in \[0, 3\)"),
        (np.eye(3), np.array([0, 1]), "shape"),
        (np.eye(3), np.full((3, 3), 1 / 3), "shape"),
        (np.eye(3), np.array([0.0, 0.5, 1.0]), "integer class indices"),
    ],
)
def test_fit_refuses_degenerate_input(logits, targets, match):
    with pytest.raises(ValueError, match=match):
        fit_temperature(logits, targets)


def test_apply_temperature_keeps_the_input_type_and_refuses_bad_values():
    z = np.array([[2.0, -1.0, 0.5]])
    out = apply_temperature(z, 2.0)
    assert isinstance(out, np.ndarray) and np.allclose(out, z / 2)
    zt = torch.tensor(z)
    out_t = apply_temperature(zt, 4.0)
    assert isinstance(out_t, torch.Tensor) and torch.allclose(out_t, zt / 4)
    assert softmax_with_temperature(z, 2.0).argmax() == z.argmax()
    for bad in (0.0, -1.0, float("nan"), float("inf"), "warm"):
        with pytest.raises(ValueError, match="temperature"):
            apply_temperature(z, bad)


# ---------------------------------------------------------------------------------------------------------
# ECE and reliability bins


def _naive_ece(probs: np.ndarray, targets: np.ndarray, n_bins: int) -> float:
    """Reference: one pass over the samples per bin, bins (k/n, (k+1)/n] with 0 in the first."""
    n = len(targets)
    total = 0.0
    for k in range(n_bins):
        lo, hi = k / n_bins, (k + 1) / n_bins
        members = []
        for i in range(n):
            c = max(probs[i])
            if (lo < c <= hi) or (k == 0 and c == 0.0):
                members.append(i)
        if not members:
            continue
        acc = sum(int(np.argmax(probs[i]) == targets[i]) for i in members) / len(members)
        conf = sum(max(probs[i]) for i in members) / len(members)
        total += len(members) / n * abs(acc - conf)
    return total


@pytest.mark.parametrize("n_bins", [1, 10, 15])
def test_ece_matches_a_naive_loop(n_bins):
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.full(5, 0.4), size=400)
    targets = rng.integers(0, 5, size=400)
    assert expected_calibration_error(probs, targets, n_bins) == pytest.approx(_naive_ece(probs, targets, n_bins),
                                                                                abs=1e-12)


def test_ece_by_hand_with_confidences_on_bin_edges():
    # 4 bins: 0.5 and 0.75 sit on edges and belong to the lower bin ((0.25, 0.5] and (0.5, 0.75]).
    probs = np.array([[0.5, 0.5, 0.0], [0.75, 0.25, 0.0], [0.25, 0.75, 0.0], [1.0, 0.0, 0.0]])
    targets = np.array([0, 1, 1, 0])
    bins = reliability_bins(probs, targets, n_bins=4)
    assert bins["counts"].tolist() == [0, 1, 2, 1]
    assert bins["accuracy"][2] == pytest.approx(0.5) and bins["confidence"][2] == pytest.approx(0.75)
    assert np.isnan(bins["accuracy"][0]) and np.isnan(bins["confidence"][0])
    # bin 1: |1 - 0.5| * 1/4; bin 2: |0.5 - 0.75| * 2/4; bin 3: |1 - 1| * 1/4
    assert expected_calibration_error(probs, targets, n_bins=4) == pytest.approx(0.125 + 0.125)
    perfect = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(perfect, np.array([0, 1])) == 0.0


def test_reliability_bins_count_every_sample_once():
    rng = np.random.default_rng(4)
    probs = rng.dirichlet(np.ones(7), size=333)
    targets = rng.integers(0, 7, size=333)
    bins = reliability_bins(probs, targets, n_bins=15)
    assert bins["counts"].sum() == 333 and len(bins["counts"]) == 15 and len(bins["edges"]) == 16
    used = bins["counts"] > 0
    lo, hi = bins["edges"][:-1][used], bins["edges"][1:][used]
    assert np.all(bins["confidence"][used] > lo) and np.all(bins["confidence"][used] <= hi)
    correct = probs.argmax(1) == targets
    assert np.sum(bins["accuracy"][used] * bins["counts"][used]) == pytest.approx(correct.sum())
    with pytest.raises(ValueError, match="logits"):
        reliability_bins(probs * 5, targets)
    with pytest.raises(ValueError, match="n_bins"):
        reliability_bins(probs, targets, n_bins=0)


def test_temperature_scaling_lowers_ece_of_overconfident_predictions():
    rng = np.random.default_rng(5)
    z = rng.normal(scale=2.0, size=(5000, 7))
    y = _sample_labels(z, 3.0, rng)  # the logits are 3x too sharp
    before = expected_calibration_error(softmax_with_temperature(z), y)
    after = expected_calibration_error(softmax_with_temperature(z, fit_temperature(z, y)), y)
    assert before > 0.1 and after < 0.03


# ---------------------------------------------------------------------------------------------------------
# metadata


def test_temperature_round_trips_through_save_and_load(tmp_path):
    model = _tiny()
    assert get_temperature(model) == 1.0  # none stored
    plain = save_model(model, tmp_path / "plain")
    assert "temperature" not in read_metadata(plain) and get_temperature(load_model(plain).meta) == 1.0

    set_temperature(model, 1.75)
    loaded = load_model(save_model(model, tmp_path / "calibrated"))
    assert loaded.meta["temperature"] == 1.75 and get_temperature(loaded) == 1.75
    assert json.loads((tmp_path / "calibrated" / "meta.json").read_text())["temperature"] == 1.75
    assert read_metadata(tmp_path / "calibrated" / "model.safetensors")["temperature"] == 1.75  # embedded copy
    assert load_model(save_model(model, tmp_path / "kw", temperature=3.0)).meta["temperature"] == 3.0
    with pytest.raises(ValueError, match="temperature"):
        save_model(model, tmp_path / "bad", temperature=-2.0)
    with pytest.raises(ValueError, match="temperature"):
        set_temperature({}, 0.0)


def test_calibrate_model_fits_and_stores_the_temperature():
    rng = np.random.default_rng(6)
    z = rng.normal(scale=3.0, size=(4000, 7))
    y = _sample_labels(z, 2.0, rng)
    model = _tiny()
    t = calibrate_model(model, torch.from_numpy(z), y)
    assert model.meta["temperature"] == t and abs(t - 2.0) < 0.15


# ---------------------------------------------------------------------------------------------------------
# inference backends


def test_torch_and_onnx_backends_apply_the_same_temperature(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from poster_fer.export import OnnxRuntimeModel, export_onnx
    from poster_fer.inference import Recognizer, load_backend

    size = 112
    model = _tiny(size=size)
    prep = {"input_size": size, "grayscale": False}
    plain = save_model(model, tmp_path / "plain", classes=list(FER2013_CLASSES), preprocessing=prep)
    calibrated = save_model(model, tmp_path / "cal", classes=list(FER2013_CLASSES), preprocessing=prep,
                            temperature=2.5)
    onnx_path = tmp_path / "cal.onnx"
    export_onnx(load_model(calibrated), onnx_path, check_batch_sizes=())

    runtime = OnnxRuntimeModel(onnx_path)
    assert runtime.temperature == 2.5 and runtime.meta["temperature"] == 2.5
    x = np.random.default_rng(7).normal(size=(4, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        raw = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(runtime(x), raw, rtol=1e-4, atol=1e-4)  # the graph itself returns raw logits

    torch_be = load_backend(calibrated, backend="torch")
    onnx_be = load_backend(onnx_path, backend="onnxruntime")
    plain_be = load_backend(plain, backend="torch")
    assert torch_be.temperature == onnx_be.temperature == 2.5 and plain_be.temperature == 1.0
    p_torch = softmax_with_temperature(torch_be(x))
    p_onnx = softmax_with_temperature(onnx_be(x))
    p_plain = softmax_with_temperature(plain_be(x))
    np.testing.assert_allclose(p_torch, p_onnx, atol=1e-4)
    np.testing.assert_allclose(p_torch, softmax_with_temperature(raw, 2.5), atol=1e-5)
    assert np.abs(p_torch - p_plain).max() > 1e-2  # the temperature really changed the confidences
    assert (p_torch.argmax(1) == p_plain.argmax(1)).all()

    # and end to end through the recognizer, which applies the softmax
    crops = [np.random.default_rng(i).integers(0, 256, (size, size, 3), dtype=np.uint8) for i in range(3)]
    rec_torch = Recognizer.from_checkpoint(calibrated, detector=None).classify(crops)
    rec_onnx = Recognizer.from_checkpoint(onnx_path, detector=None).classify(crops)
    rec_plain = Recognizer.from_checkpoint(plain, detector=None).classify(crops)
    np.testing.assert_allclose(rec_torch, rec_onnx, atol=1e-4)
    assert np.abs(rec_torch - rec_plain).max() > 1e-2
    assert rec_torch.max(1).mean() < rec_plain.max(1).mean()  # T > 1 softens the confidences


# ---------------------------------------------------------------------------------------------------------
# poster-fer eval


def _write_csv(path, labels_by_usage: dict[str, list[int]]) -> None:
    """A Kaggle-layout fer2013.csv whose pixels depend only on the row number, so relabelling keeps the images."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["emotion", "pixels", "Usage"])
        row = 0
        for usage, labels in labels_by_usage.items():
            for label in labels:
                rng = np.random.default_rng(100 + row)
                ramp = np.linspace(0, 1, 2304) * rng.uniform(20, 230) + rng.integers(0, 60, 2304)
                writer.writerow([label, " ".join(str(int(v)) for v in ramp.clip(0, 255)), usage])
                row += 1


@pytest.fixture(scope="module")
def eval_fixture(tmp_path_factory):
    """A tiny model and a fer2013 csv labelled mostly with the model's own predictions (so a temperature can
    be fitted on it: informative, but not perfectly separated)."""
    root = tmp_path_factory.mktemp("calib_fer")
    counts = {"Training": 4, "PublicTest": 12, "PrivateTest": 12}
    _write_csv(root / "fer2013.csv", {u: [0] * n for u, n in counts.items()})
    model = _tiny()
    prep = {"input_size": SIZE, "grayscale": True}
    labels = {"Training": [0] * counts["Training"]}
    for usage, split in (("PublicTest", "val"), ("PrivateTest", "test")):
        ds = build_dataset("fer2013", root, split)
        pred = run_evaluation(model, ds, transform=eval_transform(prep), progress=False)["y_pred"]
        labels[usage] = [int(p) if i % 3 else int(p + 1) % 7 for i, p in enumerate(pred)]
    _write_csv(root / "fer2013.csv", labels)
    kw = {"classes": list(FER2013_CLASSES), "preprocessing": prep}
    return root, save_model(model, root / "plain", **kw), save_model(model, root / "cal", temperature=2.0, **kw)


def _eval(ckpt, root, out, *extra):
    return main(["eval", "--weights", str(ckpt), "--data", str(root), "--dataset", "fer2013", "--split", "test",
                 "--device", "cpu", "--out", str(out), *extra])


def _csv_probs(path):
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    probs = np.array([[float(r[f"prob_{c}"]) for c in FER2013_CLASSES] for r in rows])
    return probs, np.array([int(r["true"]) for r in rows])


def test_eval_reports_ece_before_and_after_the_stored_temperature(eval_fixture, tmp_path, capsys):
    root, plain, cal = eval_fixture
    out = tmp_path / "cal"
    assert _eval(cal, root, out) == 0
    assert "ECE" in capsys.readouterr().out
    png = out / "reliability.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    m = json.loads((out / "metrics.json").read_text())
    assert m["temperature"] == 2.0 and m["calibration"]["temperature_source"] == "checkpoint metadata"

    # predictions.csv holds the calibrated probabilities; both ECEs are recomputed from it independently
    probs, true = _csv_probs(out / "predictions.csv")
    assert m["ece_calibrated"] == pytest.approx(expected_calibration_error(probs, true), abs=1e-4)
    raw = softmax_with_temperature(np.log(np.clip(probs, 1e-300, None)) * 2.0)  # undo T = 2 (up to a row shift)
    assert m["ece"] == pytest.approx(expected_calibration_error(raw, true), abs=1e-4)
    assert abs(m["ece"] - m["ece_calibrated"]) > 1e-3
    assert sum(m["calibration"]["bins"]["calibrated"]["counts"]) == len(true)
    report = (out / "report.md").read_text()
    assert "## Calibration" in report and "T = 2" in report

    # the same model without a stored temperature: T = 1, before = after, raw probabilities in the csv
    out_plain = tmp_path / "plain"
    assert _eval(plain, root, out_plain) == 0
    mp = json.loads((out_plain / "metrics.json").read_text())
    assert mp["temperature"] == 1.0 and mp["ece"] == mp["ece_calibrated"] == pytest.approx(m["ece"], abs=1e-4)
    assert mp["calibration"]["temperature_source"] == "none stored (T = 1)"
    np.testing.assert_allclose(_csv_probs(out_plain / "predictions.csv")[0], raw, atol=1e-4)
    assert (out_plain / "reliability.png").is_file()


def test_eval_fits_the_temperature_on_another_split(eval_fixture, tmp_path, capsys):
    root, plain, _ = eval_fixture
    out = tmp_path / "fit"
    assert _eval(plain, root, out, "--fit-temperature-on", "val") == 0
    assert "fitted on 12 val samples" in capsys.readouterr().err
    m = json.loads((out / "metrics.json").read_text())
    ds = build_dataset("fer2013", root, "val")
    logits = run_evaluation(load_model(plain), ds, transform=eval_transform({"input_size": SIZE, "grayscale": True}),
                            progress=False)["logits"]
    expected = fit_temperature(logits, np.asarray(ds.labels))
    assert m["temperature"] == pytest.approx(expected, rel=1e-5) and m["temperature"] != 1.0
    assert m["provenance"]["calibration"]["fitted_on"] == "val"
    assert "temperature" not in read_metadata(plain)  # the checkpoint is left alone

    assert _eval(plain, root, tmp_path / "given", "--temperature", "0") == 2
    assert "--temperature must be positive" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------
# class-prior correction (logit_bias)


def test_logit_bias_is_validated():
    from poster_fer.probabilities import get_logit_bias

    assert get_logit_bias({"classes": ["a", "b"]}) is None
    assert get_logit_bias({"classes": ["a", "b"], "logit_bias": [0.5, -1]}) == [0.5, -1.0]
    with pytest.raises(ValueError, match="2 values for 3 classes"):
        get_logit_bias({"classes": ["a", "b", "c"], "logit_bias": [0.5, -1]})
    with pytest.raises(ValueError, match="finite"):
        get_logit_bias({"logit_bias": [float("nan"), 1.0]})
    with pytest.raises(ValueError, match="list of numbers"):
        get_logit_bias({"logit_bias": "big"})


def test_backends_and_evaluation_apply_bias_then_temperature(tmp_path):
    pytest.importorskip("onnxruntime")
    from poster_fer.export import export_onnx
    from poster_fer.inference import load_backend

    size = 112
    model = _tiny(size=size)
    bias = [0.0, 3.0, -1.0, 0.5, 0.0, -2.0, 1.0]
    ckpt = save_model(model, tmp_path / "b", classes=list(FER2013_CLASSES),
                      preprocessing={"input_size": size, "grayscale": False}, temperature=2.0, logit_bias=bias)
    export_onnx(load_model(ckpt), tmp_path / "b.onnx", check_batch_sizes=())
    x = np.random.default_rng(3).normal(size=(5, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        raw = model(torch.from_numpy(x)).numpy()
    want = (raw + np.asarray(bias, dtype=np.float32)) / 2.0
    np.testing.assert_allclose(load_backend(ckpt, backend="torch")(x), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(load_backend(tmp_path / "b.onnx", backend="onnxruntime")(x), want,
                               rtol=1e-4, atol=1e-4)

    # run_evaluation: predictions and probabilities follow the biased logits; "logits" stay raw
    class _Data:
        labels = [0, 1, 2, 3, 4]
        classes = list(FER2013_CLASSES)

        def __len__(self):
            return 5

        def get_image(self, i):
            return torch.from_numpy(x[i])

    out = run_evaluation(load_model(ckpt), _Data(), batch_size=2, transform=lambda t: t, progress=False,
                         temperature=2.0, logit_bias=bias)
    np.testing.assert_allclose(out["logits"], raw, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["probs"], softmax_with_temperature(want), atol=1e-5)
    assert (out["y_pred"] == want.argmax(1)).all()
    np.testing.assert_allclose(out["probs_uncalibrated"], softmax_with_temperature(raw), atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# operating points (other calibrations a weight set offers)


def _points_meta():
    return {"classes": ["neutral", "happy", "sad"], "logit_bias": [0.1, 0.0, -0.1], "temperature": 0.7,
            "preprocessing": {"input_size": 8},
            "operating_points": {"balanced": {"logit_bias": [-1.0, 0.5, 0.5], "temperature": 0.9, "prior_tau": 0.6}}}


def test_with_operating_point_swaps_the_calibration_and_names_what_exists():
    from poster_fer.probabilities import operating_points, with_operating_point

    meta = _points_meta()
    assert with_operating_point(meta, None) is meta and with_operating_point(meta, "default") is meta
    out = with_operating_point(meta, "balanced")
    assert out["logit_bias"] == [-1.0, 0.5, 0.5] and out["temperature"] == 0.9 and out["operating_point"] == "balanced"
    assert meta["logit_bias"] == [0.1, 0.0, -0.1]  # the record itself is untouched
    assert list(operating_points(meta)) == ["default", "balanced"]
    with pytest.raises(ValueError, match="no operating point 'strict'.*it has: default, balanced"):
        with_operating_point(meta, "strict")
    no_bias = {**meta, "operating_points": {"plain": {"temperature": 1.2}}}
    assert "logit_bias" not in with_operating_point(no_bias, "plain")  # a point without a bias drops the default's


@pytest.mark.parametrize("points, problem", [
    ({"balanced": {"logit_bias": [1.0, 2.0]}}, "2 values for 3 classes"),
    ({"balanced": {"temperature": -1}}, "positive"),
    ({"default": {"temperature": 1.0}}, "not a usable name"),
    ({"balanced": [1, 2, 3]}, "must be an object"),
    ([1, 2], "must be an object of name"),
])
def test_bad_operating_points_are_refused_on_load(points, problem):
    from poster_fer.weights.checks import CheckpointError, check_metadata

    with pytest.raises(CheckpointError, match=f"meta.json: metadata field 'operating_points'.*{problem}"):
        check_metadata({**_points_meta(), "operating_points": points}, "meta.json", rebuild=False)


def test_prior_correction_grid_and_rules_against_a_naive_reference():
    from poster_fer.evaluation.operating import choose_prior_tau, prior_bias, prior_correction_grid

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=300)
    z = rng.normal(size=(300, 3)) + 2.0 * np.eye(3)[y]
    z[:, 0] += 1.0  # a model that leans to class 0 ("neutral")
    prior = [0.6, 0.3, 0.1]
    bias = prior_bias(prior, 0.5)
    assert abs(float(bias.sum())) < 1e-6
    np.testing.assert_allclose(bias[0] - bias[2], -0.5 * (np.log(0.6) - np.log(0.1)), rtol=1e-5)
    grid = prior_correction_grid(z, y, prior, ["neutral", "b", "c"], taus=(0.0, 0.5, 1.0))
    for g in grid:
        pred = (z - g["tau"] * np.log(prior)).argmax(1)
        assert g["accuracy"] == pytest.approx((pred == y).mean())
        assert g["mean_class_accuracy"] == pytest.approx(np.mean([(pred[y == c] == c).mean() for c in range(3)]))
        assert g["neutral_overprediction"] == pytest.approx((pred[y != 0] == 0).mean())
    assert grid[0]["neutral_overprediction"] > grid[2]["neutral_overprediction"]  # correcting the lean lowers it
    balanced = choose_prior_tau(grid, "balanced")
    assert balanced["balanced"] == max(g["balanced"] for g in grid)
    strict = choose_prior_tau(grid, "mca_within_accuracy", max_accuracy_drop=0.0)
    assert strict["accuracy"] >= grid[0]["accuracy"] - 1e-12
    with pytest.raises(ValueError, match="unknown rule"):
        choose_prior_tau(grid, "best")
    with pytest.raises(ValueError, match="positive frequencies"):
        prior_bias([0.5, 0.0, 0.5], 1.0)


def test_a_shipped_folder_gains_an_operating_point_as_data(tmp_path, monkeypatch):
    """add_operating_point writes the point into meta.json, the safetensors header and the record (fresh sha256)
    with the tensors unchanged; the backends then offer it by name and refuse an unknown one."""
    from safetensors import safe_open

    import poster_fer.card as card
    import poster_fer.weights.records as records
    import poster_fer_train.release as release
    from poster_fer.inference import InferenceError, load_backend

    for module in (records, release, card):
        monkeypatch.setattr(module, "pretrained_root", lambda: tmp_path)
    (tmp_path / "records.json").write_text("{}\n")
    records.load_records.cache_clear()
    try:
        name = "poster_v1_tiny.t"
        folder = save_model(_tiny(), tmp_path / name, classes=_CLASS_NAMES[7], temperature=2.0,
                            logit_bias=[0.0] * 7, preprocessing={"input_size": SIZE, "grayscale": False})
        before = _tensors(folder)
        release.write_record(name, release.record_for_folder(folder, name, splits={}))
        bias = [1.0, -1.0, 0.0, 0.0, 0.5, -0.5, 0.0]
        release.add_operating_point(name, "balanced", {"logit_bias": bias, "temperature": 0.5, "prior_tau": 0.3})
        meta = json.loads((folder / "meta.json").read_text())
        with safe_open(str(folder / "model.safetensors"), "numpy") as f:
            assert json.loads(f.metadata()["poster_fer_meta"]) == meta
        assert _tensors(folder).keys() == before.keys()
        assert all(np.array_equal(_tensors(folder)[k], before[k]) for k in before)
        record = records.load_records()[name]
        assert record.verify() == folder  # the sha256 follows the rewritten file
        assert record.calibration["operating_points"]["balanced"]["prior_tau"] == 0.3

        x = np.random.default_rng(1).normal(size=(3, 3, SIZE, SIZE)).astype(np.float32)
        with torch.no_grad():
            raw = load_model(folder)(torch.from_numpy(x)).numpy()
        be = load_backend(folder, backend="torch", operating_point="balanced")
        np.testing.assert_allclose(be(x), (raw + np.asarray(bias, np.float32)) / 0.5, rtol=1e-4, atol=1e-4)
        assert be.meta["operating_point"] == "balanced"
        np.testing.assert_allclose(load_backend(folder, backend="torch")(x), raw / 2.0, rtol=1e-4, atol=1e-4)
        with pytest.raises(InferenceError, match="no operating point 'strict'.*default, balanced"):
            load_backend(folder, backend="torch", operating_point="strict")
        from poster_fer.inference import Recognizer

        rec = Recognizer(folder, detector=None, operating_point="balanced")
        assert rec.meta["operating_point"] == "balanced"
        with pytest.raises(InferenceError, match="applies when the Recognizer opens the weights"):
            Recognizer(be, detector=None, operating_point="balanced")
    finally:
        records.load_records.cache_clear()


def _tensors(folder):
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys()}
