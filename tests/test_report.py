"""Report files: contents checked against a hand-counted 10-sample example; figures are valid PNGs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from poster_fer.evaluation.metrics import compute_metrics
from poster_fer.evaluation.plots import TsneOptions, plot_curves, tsne_subsample_indices, write_tsne
from poster_fer.evaluation.report import load_metrics, render_markdown, write_eval_outputs

NAMES = ["Anger", "Happy", "Sad"]
# Hand count: confusion rows (true) Anger [2, 1, 1], Happy [0, 3, 0], Sad [1, 0, 2].
Y_TRUE = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
Y_PRED = [0, 0, 1, 2, 1, 1, 1, 2, 0, 2]


def _probs(pred: list[int], c: int) -> np.ndarray:
    probs = np.full((len(pred), c), 0.1)
    probs[np.arange(len(pred)), pred] = 1.0 - 0.1 * (c - 1)
    return probs


def _predictions() -> list[dict]:
    probs = _probs(Y_PRED, 3)
    return [
        {"path": f"img/{i:03d}.jpg", "true": t, "pred": p, "probs": probs[i].tolist()}
        for i, (t, p) in enumerate(zip(Y_TRUE, Y_PRED, strict=True))
    ]


def _assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size[0] > 100 and im.size[1] > 100
        im.verify()


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, dict, dict[str, Path]]:
    out = tmp_path_factory.mktemp("eval")
    metrics = compute_metrics(Y_TRUE, Y_PRED, NAMES, probs=_probs(Y_PRED, 3))
    provenance = {"checkpoint": Path("/ckpt/poster_raf.pth"), "dataset": "toy", "seed": np.int64(3)}
    paths = write_eval_outputs(out, metrics, _predictions(), provenance)
    return out, metrics, paths


def test_all_files_written(written) -> None:
    out, _, paths = written
    for name in ("metrics.json", "report.md", "predictions.csv", "confusion.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    assert set(paths) == {"metrics", "report", "predictions", "confusion"}
    _assert_png(out / "confusion.png")


def test_metrics_json_round_trip_and_hand_count(written) -> None:
    out, metrics, _ = written
    loaded = json.loads((out / "metrics.json").read_text())
    assert load_metrics(out) == loaded
    for key, value in metrics.items():
        assert loaded[key] == value, key
    assert loaded["num_samples"] == 10 and loaded["class_names"] == NAMES
    assert loaded["confusion"] == [[2, 1, 1], [0, 3, 0], [1, 0, 2]]
    assert loaded["accuracy"] == pytest.approx(0.7)
    assert loaded["mean_class_accuracy"] == pytest.approx((2 / 4 + 3 / 3 + 2 / 3) / 3)
    assert [loaded["per_class"][n]["accuracy"] for n in NAMES] == pytest.approx([0.5, 1.0, 2 / 3])
    assert [loaded["per_class"][n]["precision"] for n in NAMES] == pytest.approx([2 / 3, 3 / 4, 2 / 3])
    assert [loaded["per_class"][n]["f1"] for n in NAMES] == pytest.approx([4 / 7, 6 / 7, 2 / 3])
    assert loaded["macro_f1"] == pytest.approx((4 / 7 + 6 / 7 + 2 / 3) / 3)
    assert loaded["confusion_normalised"][0] == pytest.approx([50.0, 25.0, 25.0])
    assert loaded["counts"] == {
        "num_samples": 10,
        "support": {"Anger": 4, "Happy": 3, "Sad": 3},
        "predicted": {"Anger": 3, "Happy": 4, "Sad": 3},
    }
    assert loaded["provenance"] == {"checkpoint": "/ckpt/poster_raf.pth", "dataset": "toy", "seed": 3}


def test_report_markdown(written) -> None:
    out, _, _ = written
    text = (out / "report.md").read_text()
    for name in NAMES:
        assert name in text
    assert "**Accuracy 70.00%**" in text
    assert "72.22" in text  # mean class accuracy (50 + 100 + 66.67) / 3
    assert "Prediction percentage given ground truth" in text
    assert "| Anger | 50.00 | 25.00 | 25.00 |" in text
    assert "| Anger | 2 | 1 | 1 | 4 |" in text
    assert "poster_raf.pth" in text


def test_predictions_csv(written) -> None:
    out, _, _ = written
    with (out / "predictions.csv").open(newline="") as fh:
        rows = list(csv.reader(fh))
    header = ["index", "path", "true", "true_name", "pred", "pred_name"]
    assert rows[0] == header + ["prob_Anger", "prob_Happy", "prob_Sad"]
    assert len(rows) == 11
    assert rows[3][:6] == ["2", "img/002.jpg", "0", "Anger", "1", "Happy"]
    assert [float(v) for v in rows[3][6:]] == pytest.approx([0.1, 0.8, 0.1])


def test_columns_form_without_probs_or_plots(tmp_path: Path) -> None:
    names = ["a, b", "c|d"]  # awkward names must survive CSV quoting and Markdown tables
    metrics = compute_metrics([0, 1, 1], [0, 1, 0], names)
    cols = {"y_true": np.array([0, 1, 1]), "y_pred": np.array([0, 1, 0]), "index": [10, 11, 12]}
    paths = write_eval_outputs(tmp_path, metrics, cols, provenance=None, make_plots=False)
    assert not (tmp_path / "confusion.png").exists() and "confusion" not in paths
    with paths["predictions"].open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0][-2:] == ["prob_a, b", "prob_c|d"]
    assert rows[3] == ["12", "", "1", "c|d", "0", "a, b", "", ""]
    assert "c\\|d" in paths["report"].read_text()


def test_structured_array_predictions(tmp_path: Path) -> None:
    arr = np.zeros(3, dtype=[("true", "i8"), ("pred", "i8"), ("path", "U8")])
    arr["true"], arr["pred"], arr["path"] = [0, 1, 1], [0, 1, 0], ["x", "y", "z"]
    metrics = compute_metrics(arr["true"], arr["pred"], ["a", "b"])
    paths = write_eval_outputs(tmp_path, metrics, arr, {}, make_plots=False)
    assert paths["predictions"].read_text().splitlines()[1].startswith("0,x,0,a,0,a")


def test_inconsistent_inputs_rejected(tmp_path: Path) -> None:
    metrics = compute_metrics(Y_TRUE, Y_PRED, NAMES)
    with pytest.raises(ValueError, match="9 predictions but metrics count 10"):
        write_eval_outputs(tmp_path, metrics, _predictions()[:9], {}, make_plots=False)
    swapped = [dict(r, pred=r["true"]) for r in _predictions()]
    with pytest.raises(ValueError, match="do not match"):
        write_eval_outputs(tmp_path, metrics, swapped, {}, make_plots=False)
    bad = _predictions()
    bad[0]["pred"] = 3
    with pytest.raises(ValueError, match=r"row 0: pred=3 is not a class index in \[0, 3\)"):
        write_eval_outputs(tmp_path, metrics, bad, {}, make_plots=False)
    with pytest.raises(ValueError, match="compute_metrics"):
        write_eval_outputs(tmp_path, {"accuracy": 1.0}, [], {}, make_plots=False)
    with pytest.raises(ValueError, match="probs has 2 values"):
        write_eval_outputs(tmp_path, metrics, [dict(r, probs=[0.5, 0.5]) for r in _predictions()], {})


def test_render_markdown_marks_undefined_classes() -> None:
    text = render_markdown(compute_metrics([0, 0, 2], [0, 0, 2], ["x", "y", "z"]))
    assert "| accuracy | 100.00 | — | 100.00 | 100.00 | 100.00 |" in text


def test_tsne_three_clusters(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=10.0, size=(3, 16))
    labels = np.repeat(np.arange(3), 20)
    feats = centres[labels] + rng.normal(size=(60, 16))
    out = tmp_path / "tsne.png"
    emb = write_tsne(feats, labels, NAMES, out, options=TsneOptions(seed=0, max_iter=250))
    assert emb.shape == (60, 2) and np.all(np.isfinite(emb))
    _assert_png(out)
    # Clusters stay separated: each point's nearest neighbour in the embedding shares its label.
    d = np.linalg.norm(emb[:, None] - emb[None], axis=-1) + np.eye(60) * 1e9
    assert np.mean(labels[d.argmin(1)] == labels) > 0.95


def test_tsne_subsampling_is_deterministic(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    a = tsne_subsample_indices(100, 40, seed=1)
    assert np.array_equal(a, tsne_subsample_indices(100, 40, seed=1))
    assert len(np.unique(a)) == 40 and np.all(np.diff(a) > 0)
    assert np.array_equal(tsne_subsample_indices(30, 40), np.arange(30))
    rng = np.random.default_rng(1)
    emb = write_tsne(rng.normal(size=(100, 8)), rng.integers(0, 3, 100), NAMES, tmp_path / "t.png",
                     options=TsneOptions(max_points=40, max_iter=250))
    assert emb.shape == (40, 2)
    with pytest.raises(ValueError, match="labels must lie"):
        write_tsne(rng.normal(size=(10, 4)), np.full(10, 5), NAMES, tmp_path / "bad.png")


def test_plot_curves(tmp_path: Path) -> None:
    history = [
        {"epoch": e, "train_loss": 1.0 / e, "train_acc": 0.5 + 0.04 * e, "lr": 1e-4 * 0.9**e}
        | ({"val_loss": 1.2 / e, "val_acc": 0.45 + 0.04 * e} if e % 2 == 0 else {})
        for e in range(1, 9)
    ]
    out = plot_curves(history, tmp_path / "curves.png")
    _assert_png(out)
    with pytest.raises(ValueError, match="no plottable"):
        plot_curves([{"epoch": 1, "note": "x"}], tmp_path / "none.png")
    with pytest.raises(ValueError, match="empty"):
        plot_curves([], tmp_path / "none.png")


def test_report_provenance_is_readable_rows() -> None:
    metrics = compute_metrics(Y_TRUE, Y_PRED, NAMES)
    recipe = {"train": {f"key{i}": i for i in range(40)}}  # a whole recipe: far too long for a table cell
    prov = {"checkpoint": {"path": "/ckpt/best", "provenance": {"command": "poster-fer train --recipe a|b",
                                                                  "recipe": recipe, "epoch": 10}}, "tta": "none"}
    text = render_markdown(metrics, prov)
    section = text.split("## Provenance", 1)[1].split("## ", 1)[0]
    assert "| checkpoint.path | /ckpt/best |" in section
    assert "| checkpoint.provenance.command | poster-fer train --recipe a\\|b |" in section  # pipe escaped
    assert "| checkpoint.provenance.epoch | 10 |" in section and "| tta | none |" in section
    long = len(json.dumps(recipe))
    assert f"| checkpoint.provenance.recipe | ({long:,} characters: see metrics.json) |" in section
    assert "key39" not in section
