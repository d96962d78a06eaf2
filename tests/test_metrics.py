"""Metrics checked against naive per-sample loops, scikit-learn, hand-made edge cases and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from poster_fer.evaluation.metrics import (
    accuracy,
    compute_metrics,
    confusion_matrix,
    macro_f1,
    mean_class_accuracy,
    negative_log_likelihood,
    per_class_accuracy,
    precision_recall_f1,
    row_normalised,
    top_k_accuracy,
)

SEEDS = range(5)
CLASS_COUNTS = (2, 7, 8)


# --- naive references: plain Python loops, written independently of the vectorised code ---------------


def naive_confusion(t: list[int], p: list[int], c: int) -> list[list[int]]:
    conf = [[0] * c for _ in range(c)]
    for a, b in zip(t, p, strict=True):
        conf[a][b] += 1
    return conf


def naive_per_class(t: list[int], p: list[int], c: int) -> list[dict[str, float]]:
    out = []
    for k in range(c):
        tp = fp = fn = 0
        for a, b in zip(t, p, strict=True):
            if a == k and b == k:
                tp += 1
            elif a != k and b == k:
                fp += 1
            elif a == k and b != k:
                fn += 1
        prec = tp / (tp + fp) if tp + fp else math.nan
        rec = tp / (tp + fn) if tp + fn else math.nan
        if tp + fp + fn == 0:
            f1 = math.nan
        elif math.isnan(prec) or math.isnan(rec) or prec + rec == 0:
            f1 = 0.0
        else:
            f1 = 2 * prec * rec / (prec + rec)
        out.append({"precision": prec, "recall": rec, "f1": f1, "support": tp + fn})
    return out


def naive_mean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def random_labels(seed: int, c: int, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Labels that are right about half the time, so all confusion cells are exercised."""
    rng = np.random.default_rng(seed)
    t = rng.integers(0, c, size=n)
    p = np.where(rng.random(n) < 0.5, t, rng.integers(0, c, size=n))
    return t, p


def assert_close_nan(actual, expected) -> None:
    np.testing.assert_allclose(np.asarray(actual, dtype=float), np.asarray(expected, dtype=float), atol=1e-12)


# --- against the naive reference ----------------------------------------------------------------------


@pytest.mark.parametrize("c", CLASS_COUNTS)
@pytest.mark.parametrize("seed", SEEDS)
def test_matches_naive_reference(seed: int, c: int) -> None:
    t, p = random_labels(seed, c)
    tl, pl = t.tolist(), p.tolist()
    conf = confusion_matrix(t, p, c)
    assert conf.dtype == np.int64 and conf.shape == (c, c)
    assert conf.tolist() == naive_confusion(tl, pl, c)

    ref = naive_per_class(tl, pl, c)
    prec, rec, f1, sup = precision_recall_f1(t, p, c)
    assert_close_nan(prec, [r["precision"] for r in ref])
    assert_close_nan(rec, [r["recall"] for r in ref])
    assert_close_nan(f1, [r["f1"] for r in ref])
    assert sup.tolist() == [r["support"] for r in ref]
    assert_close_nan(per_class_accuracy(t, p, c), [r["recall"] for r in ref])

    assert accuracy(t, p) == pytest.approx(sum(a == b for a, b in zip(tl, pl, strict=True)) / len(tl))
    assert mean_class_accuracy(t, p, c) == pytest.approx(naive_mean([r["recall"] for r in ref]))
    assert macro_f1(t, p, c) == pytest.approx(naive_mean([r["f1"] for r in ref]))

    pct = row_normalised(conf)
    ref_conf = naive_confusion(tl, pl, c)
    for i in range(c):
        total = sum(ref_conf[i])
        for j in range(c):
            assert pct[i, j] == pytest.approx(100.0 * ref_conf[i][j] / total if total else 0.0)


@pytest.mark.parametrize("c", CLASS_COUNTS)
@pytest.mark.parametrize("seed", SEEDS)
def test_matches_sklearn(seed: int, c: int) -> None:
    skm = pytest.importorskip("sklearn.metrics")
    t, p = random_labels(seed, c, n=50)
    labels = list(range(c))
    np.testing.assert_array_equal(confusion_matrix(t, p, c), skm.confusion_matrix(t, p, labels=labels))
    assert accuracy(t, p) == pytest.approx(skm.accuracy_score(t, p))
    assert mean_class_accuracy(t, p, c) == pytest.approx(skm.balanced_accuracy_score(t, p))
    # Our convention leaves out classes with neither samples nor predictions; sklearn scores them 0.
    seen = sorted(set(t.tolist()) | set(p.tolist()))
    expected = skm.f1_score(t, p, labels=seen, average="macro", zero_division=0)
    assert macro_f1(t, p, c) == pytest.approx(expected)
    if len(seen) == c:
        assert macro_f1(t, p, c) == pytest.approx(
            skm.f1_score(t, p, labels=labels, average="macro", zero_division=0)
        )


# --- edge cases ----------------------------------------------------------------------------------------


def test_class_with_no_samples() -> None:
    c = 4
    t = np.array([0, 0, 1, 1, 3, 3])  # class 2 never occurs
    p = np.array([0, 1, 1, 1, 3, 0])  # and is never predicted
    acc = per_class_accuracy(t, p, c)
    assert np.isnan(acc[2])
    assert acc[[0, 1, 3]].tolist() == [0.5, 1.0, 0.5]
    assert mean_class_accuracy(t, p, c) == pytest.approx(2.0 / 3.0)
    prec, rec, f1, sup = precision_recall_f1(t, p, c)
    assert np.isnan(prec[2]) and np.isnan(rec[2]) and np.isnan(f1[2]) and sup[2] == 0
    # F1 = 2TP / (2TP + FP + FN) per class: 0 -> 2/4, 1 -> 4/5, 3 -> 2/3; class 2 excluded from the mean.
    assert macro_f1(t, p, c) == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    pct = row_normalised(confusion_matrix(t, p, c))
    assert pct[2].tolist() == [0.0] * c
    assert pct.sum(axis=1)[[0, 1, 3]] == pytest.approx([100.0] * 3)


def test_class_predicted_but_absent_counts_in_macro_f1() -> None:
    t = np.array([0, 0, 1, 1])
    p = np.array([0, 2, 1, 1])  # class 2 has no samples but is predicted once: F1 0, included
    prec, rec, f1, _ = precision_recall_f1(t, p, 3)
    assert prec[2] == 0.0 and np.isnan(rec[2]) and f1[2] == 0.0
    assert macro_f1(t, p, 3) == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)


def test_class_with_samples_never_predicted() -> None:
    t = np.array([0, 1, 1])
    p = np.array([0, 0, 0])
    prec, rec, f1, _ = precision_recall_f1(t, p, 2)
    assert np.isnan(prec[1]) and rec[1] == 0.0 and f1[1] == 0.0


@pytest.mark.parametrize("c", CLASS_COUNTS)
def test_perfect_predictions(c: int) -> None:
    t = np.arange(3 * c) % c
    m = compute_metrics(t, t, [f"c{i}" for i in range(c)])
    assert m["accuracy"] == 1.0 and m["mean_class_accuracy"] == 1.0 and m["macro_f1"] == 1.0
    assert np.array_equal(np.asarray(m["confusion"]), 3 * np.eye(c, dtype=int))
    assert np.allclose(m["confusion_normalised"], 100.0 * np.eye(c))


@pytest.mark.parametrize("c", CLASS_COUNTS)
def test_all_wrong(c: int) -> None:
    t = np.arange(4 * c) % c
    p = (t + 1) % c
    assert accuracy(t, p) == 0.0
    assert mean_class_accuracy(t, p, c) == 0.0
    assert macro_f1(t, p, c) == 0.0
    assert np.all(np.diag(confusion_matrix(t, p, c)) == 0)


def test_accepts_lists_and_integral_floats() -> None:
    assert confusion_matrix([0, 1, 1], [0.0, 1.0, 0.0], 2).tolist() == [[1, 0], [1, 1]]


def test_empty_input() -> None:
    assert confusion_matrix([], [], 3).tolist() == [[0] * 3] * 3
    assert math.isnan(accuracy([], []))
    assert math.isnan(mean_class_accuracy([], [], 3))
    with pytest.raises(ValueError, match="zero samples"):
        compute_metrics([], [], ["a", "b"])


# --- compute_metrics -----------------------------------------------------------------------------------


def test_compute_metrics_structure_and_json() -> None:
    import json

    names = ["neutral", "happy", "sad"]
    t = [0, 0, 0, 1, 1, 2]
    p = [0, 0, 1, 1, 1, 0]
    m = compute_metrics(t, p, names)
    assert m["class_names"] == names and m["num_samples"] == 6 and m["num_classes"] == 3
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["mean_class_accuracy"] == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)
    assert m["confusion"] == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert m["per_class"]["neutral"] == pytest.approx(
        {"accuracy": 2 / 3, "precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3, "predicted": 3}
    )
    assert m["per_class"]["sad"]["precision"] is None  # never predicted: undefined, not NaN
    assert m["per_class"]["sad"]["f1"] == 0.0
    json.dumps(m, allow_nan=False)  # strict JSON
    assert "nll" not in m and "top_k_accuracy" not in m


def test_compute_metrics_with_probs() -> None:
    names = ["a", "b", "c"]
    probs = np.array([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1], [0.2, 0.3, 0.5], [0.1, 0.2, 0.7]])
    t = np.array([0, 1, 2, 0])
    m = compute_metrics(t, probs.argmax(1), names, probs=probs)
    assert m["nll"] == pytest.approx(-np.mean(np.log([0.7, 0.4, 0.5, 0.1])))
    assert m["top_k_accuracy"] == pytest.approx({"2": 3 / 4})  # k=3 == C is not reported
    assert top_k_accuracy(t, probs, 1) == pytest.approx(accuracy(t, probs.argmax(1)))
    assert top_k_accuracy(t, probs, 3) == 1.0
    tied = np.array([[0.4, 0.4, 0.2]])  # a tie at the top counts in the sample's favour
    assert top_k_accuracy([1], tied, 1) == 1.0 and top_k_accuracy([0], tied, 1) == 1.0
    assert negative_log_likelihood(t, probs) == pytest.approx(m["nll"])


def test_top_k_matches_sklearn() -> None:
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(100, 7))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    t = rng.integers(0, 7, size=100)
    for k in (1, 2, 3, 5):
        assert top_k_accuracy(t, probs, k) == pytest.approx(
            skm.top_k_accuracy_score(t, probs, k=k, labels=list(range(7)))
        )


# --- validation ----------------------------------------------------------------------------------------


def test_label_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"y_true .*outside \[0, 3\).*first is 3 at index 1"):
        confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ValueError, match="y_pred .*outside"):
        per_class_accuracy([0, 1], [0, -1], 3)
    with pytest.raises(ValueError, match="outside"):
        compute_metrics([0, 1], [0, 2], ["a", "b"])


def test_length_mismatch() -> None:
    with pytest.raises(ValueError, match="differ in length: 3 vs 2"):
        accuracy([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="differ in length"):
        compute_metrics([0, 1], [0], ["a", "b"])


@pytest.mark.parametrize(
    ("t", "p", "c", "match"),
    [
        ([0.5, 1], [0, 1], 2, "integer class indices"),
        ([[0, 1]], [[0, 1]], 2, "1-D"),
        (["a"], ["a"], 2, "integer class indices"),
        ([0], [0], 0, "num_classes"),
    ],
)
def test_bad_labels(t, p, c, match) -> None:
    with pytest.raises(ValueError, match=match):
        confusion_matrix(t, p, c)


def test_bad_class_names_and_probs() -> None:
    with pytest.raises(ValueError, match="unique"):
        compute_metrics([0, 1], [0, 1], ["a", "a"])
    with pytest.raises(ValueError, match="empty"):
        compute_metrics([0], [0], [])
    with pytest.raises(ValueError, match="shape"):
        compute_metrics([0, 1], [0, 1], ["a", "b"], probs=np.full((2, 3), 1 / 3))
    with pytest.raises(ValueError, match="logits"):
        compute_metrics([0, 1], [0, 1], ["a", "b"], probs=np.array([[2.0, -1.0], [0.0, 3.0]]))
    with pytest.raises(ValueError, match="k must be"):
        top_k_accuracy([0], np.array([[0.5, 0.5]]), 3)


def test_row_normalised_rejects_non_square() -> None:
    with pytest.raises(ValueError, match="square"):
        row_normalised(np.zeros((2, 3)))
