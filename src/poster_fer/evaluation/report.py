"""Writing an evaluation run to disk: ``metrics.json``, ``report.md``, ``predictions.csv``, ``confusion.png``.

Metrics carrying calibration numbers (``ece``, ``ece_calibrated``, ``temperature``, from
:func:`~poster_fer.evaluation.evaluate.evaluate_dataset`) also get a calibration section in the report.

The text outputs are written first and need only numpy, so a run's numbers survive even where matplotlib
is not installed; the figure is drawn last.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..jsonable import to_jsonable
from .plots import plot_confusion, plot_curves, write_tsne

__all__ = ["load_metrics", "plot_curves", "render_markdown", "write_eval_outputs", "write_tsne"]

FORMAT_VERSION = 1

_REQUIRED_KEYS = (
    "class_names",
    "num_samples",
    "accuracy",
    "mean_class_accuracy",
    "macro_f1",
    "per_class",
    "confusion",
    "confusion_normalised",
)

# Accepted column names for predictions given as columns (dict of arrays or numpy structured array).
_COLUMN_ALIASES = {
    "true": ("true", "y_true", "label", "labels", "target", "targets"),
    "pred": ("pred", "y_pred", "preds", "prediction", "predictions"),
    "path": ("path", "paths"),
    "index": ("index", "indices", "idx"),
    "probs": ("probs", "prob", "probabilities"),
}


def _check_metrics(metrics: Mapping[str, Any]) -> list[str]:
    missing = [k for k in _REQUIRED_KEYS if k not in metrics]
    if missing:
        raise ValueError(f"metrics dict lacks {missing}; build it with compute_metrics()")
    names = [str(n) for n in metrics["class_names"]]
    c = len(names)
    conf = np.asarray(metrics["confusion"])
    if conf.shape != (c, c):
        raise ValueError(f"metrics['confusion'] has shape {conf.shape}, expected ({c}, {c})")
    return names


def _class_index(value: Any, num_classes: int) -> int | None:
    """The value as a class index, or ``None`` when it is not an integer in range."""
    if isinstance(value, (bool, np.bool_, str, bytes)):
        return None
    try:
        idx = int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return idx if idx == value and 0 <= idx < num_classes else None


def _normalise_predictions(predictions: Any, num_classes: int) -> list[dict[str, Any]]:
    """Accept a list of per-sample dicts, a dict of columns, or a numpy structured array; return rows."""
    if isinstance(predictions, np.ndarray) and predictions.dtype.names:
        predictions = {name: predictions[name] for name in predictions.dtype.names}
    if isinstance(predictions, Mapping):
        cols: dict[str, Any] = {}
        for key, aliases in _COLUMN_ALIASES.items():
            found = [a for a in aliases if a in predictions]
            if len(found) > 1:
                raise ValueError(f"predictions has several columns for {key!r}: {found}")
            if found:
                cols[key] = predictions[found[0]]
        for key in ("true", "pred"):
            if key not in cols:
                raise ValueError(f"predictions needs a {key!r} column (one of {_COLUMN_ALIASES[key]})")
        n = len(cols["true"])
        for key, col in cols.items():
            if len(col) != n:
                raise ValueError(f"predictions column {key!r} has {len(col)} rows, expected {n}")
        rows = [{key: col[i] for key, col in cols.items()} for i in range(n)]
    elif isinstance(predictions, Sequence) and not isinstance(predictions, (str, bytes)):
        rows = []
        for i, item in enumerate(predictions):
            if not isinstance(item, Mapping):
                raise ValueError(f"predictions[{i}] must be a dict, got {type(item).__name__}")
            row = {}
            for key, aliases in _COLUMN_ALIASES.items():
                for alias in aliases:
                    if alias in item:
                        row[key] = item[alias]
                        break
            rows.append(row)
    else:
        raise ValueError(f"predictions must be a list of dicts or a dict of columns, got {type(predictions)}")

    out = []
    for i, row in enumerate(rows):
        for key in ("true", "pred"):
            if key not in row:
                raise ValueError(f"prediction row {i} lacks {key!r}")
            if _class_index(row[key], num_classes) is None:
                raise ValueError(
                    f"prediction row {i}: {key}={row[key]!r} is not a class index in [0, {num_classes})"
                )
        probs = row.get("probs")
        if probs is not None:
            probs = np.asarray(probs, dtype=np.float64).reshape(-1)
            if probs.shape != (num_classes,):
                raise ValueError(f"prediction row {i}: probs has {probs.size} values, expected {num_classes}")
        out.append(
            {
                "index": int(row["index"]) if row.get("index") is not None else i,
                "path": "" if row.get("path") is None else str(row["path"]),
                "true": int(row["true"]),
                "pred": int(row["pred"]),
                "probs": probs,
            }
        )
    return out


def _pct(x: Any) -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{100.0 * float(x):.2f}"


def _md_cell(text: Any) -> str:
    """Escape pipes so class names cannot break a Markdown table."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[str]], numeric: bool = True) -> list[str]:
    """A Markdown table; the first column is left-aligned, the rest right-aligned when ``numeric``."""
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |"]
    seps = [":---" if (i == 0 or not numeric) else "---:" for i in range(len(header))]
    lines.append("| " + " | ".join(seps) + " |")
    lines.extend("| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows)
    return lines


def render_markdown(metrics: Mapping[str, Any], provenance: Mapping[str, Any] | None = None) -> str:
    """Markdown report: summary line, per-class accuracy (paper Table 2 layout), row-normalised percentages
    (Table 3 layout), per-class precision/recall/F1, raw confusion counts and, when the metrics have them,
    calibration (ECE before and after the temperature)."""
    names = _check_metrics(metrics)
    per = metrics["per_class"]
    conf = np.asarray(metrics["confusion"], dtype=np.int64)
    norm = np.asarray(metrics["confusion_normalised"], dtype=np.float64)
    lines = ["# Evaluation report", ""]
    summary = (
        f"**Accuracy {_pct(metrics['accuracy'])}%**"
        f" · mean class accuracy {_pct(metrics['mean_class_accuracy'])}%"
        f" · macro F1 {_pct(metrics['macro_f1'])}% · {int(metrics['num_samples'])} samples"
        f" · {len(names)} classes"
    )
    if metrics.get("top_k_accuracy"):
        summary += "".join(f" · top-{k} {_pct(v)}%" for k, v in metrics["top_k_accuracy"].items())
    if metrics.get("nll") is not None:
        summary += f" · NLL {float(metrics['nll']):.4f}"
    if metrics.get("ece") is not None:
        summary += f" · ECE {_pct(metrics['ece'])}%"
        if metrics.get("temperature") is not None and float(metrics["temperature"]) != 1.0:
            summary += f" ({_pct(metrics.get('ece_calibrated'))}% at T = {float(metrics['temperature']):.4g})"
    lines += [summary, ""]

    if provenance:
        rows = [[k, v] for k, v in _provenance_rows(to_jsonable(provenance))]
        lines += ["## Provenance", ""]
        lines += ["Nested keys are dotted; a value too long for a table (a whole recipe) is in `metrics.json`.", ""]
        lines += _md_table(["key", "value"], rows, numeric=False) + [""]

    lines += ["## Per-class accuracy (%)", ""]
    lines.append("Recall of each class; the mean is over classes with samples (— = no samples).")
    lines.append("")
    header = ["", *names, "Mean", "Overall"]
    row = ["accuracy", *(_pct(per[n]["accuracy"]) for n in names)]
    row += [_pct(metrics["mean_class_accuracy"]), _pct(metrics["accuracy"])]
    lines += _md_table(header, [row]) + [""]

    lines += ["## Prediction percentage given ground truth (%)", ""]
    lines.append("Rows: true class; columns: predicted class; each non-empty row sums to 100.")
    lines.append("")
    rows = [[n, *(f"{v:.2f}" for v in norm[i])] for i, n in enumerate(names)]
    lines += _md_table(["true \\ pred", *names], rows) + [""]

    lines += ["## Per-class precision, recall, F1", ""]
    rows = [
        [n, _pct(per[n]["precision"]), _pct(per[n]["recall"]), _pct(per[n]["f1"]), str(per[n]["support"])]
        for n in names
    ]
    lines += _md_table(["class", "precision %", "recall %", "F1 %", "support"], rows) + [""]

    lines += ["## Confusion counts", ""]
    rows = [[n, *(str(int(v)) for v in conf[i]), str(int(conf[i].sum()))] for i, n in enumerate(names)]
    rows.append(["total", *(str(int(v)) for v in conf.sum(axis=0)), str(int(conf.sum()))])
    lines += _md_table(["true \\ pred", *names, "total"], rows) + [""]
    lines += _calibration_lines(metrics)
    return "\n".join(lines)


def _calibration_lines(metrics: Mapping[str, Any]) -> list[str]:
    """ECE and NLL before and after the temperature; empty for metrics computed without calibration numbers."""
    if metrics.get("ece") is None:
        return []
    temp = float(metrics.get("temperature") or 1.0)
    source = (metrics.get("calibration") or {}).get("temperature_source")
    bins = (metrics.get("calibration") or {}).get("n_bins")
    nll_raw = metrics.get("nll_uncalibrated")
    nll_cal = metrics.get("nll")
    lines = ["## Calibration", ""]
    lines.append(f"Reported probabilities (NLL, top-k, `predictions.csv`) are softmax(logits / T) with T = {temp:.4g}"
                 + (f" ({source})" if source else "") + "; `reliability.png` plots accuracy per confidence bin.")
    lines.append(f"ECE: expected calibration error over {bins or 15} equal-width confidence bins (lower is better).")
    lines.append("")
    rows = [
        ["uncalibrated (T = 1)", _pct(metrics.get("ece")), "—" if nll_raw is None else f"{float(nll_raw):.4f}"],
        [f"temperature-scaled (T = {temp:.4g})", _pct(metrics.get("ece_calibrated")),
         "—" if nll_cal is None else f"{float(nll_cal):.4f}"],
    ]
    return lines + _md_table(["probabilities", "ECE %", "NLL"], rows) + [""]


def _provenance_rows(d: dict[str, Any], prefix: str = "", depth: int = 0,
                     max_chars: int = 160) -> list[tuple[str, str]]:
    """Readable key/value rows: nested mappings become dotted keys (three levels), long values are elided."""
    rows: list[tuple[str, str]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and depth < 2:
            rows += _provenance_rows(v, f"{key}.", depth + 1, max_chars)
            continue
        text = v if isinstance(v, str) else json.dumps(v)
        if len(text) > max_chars:
            text = f"({len(text):,} characters: see metrics.json)"
        rows.append((key, text))
    return rows


def _write_predictions_csv(path: Path, rows: list[dict[str, Any]], names: list[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        header = ["index", "path", "true", "true_name", "pred", "pred_name"]
        writer.writerow(header + [f"prob_{n}" for n in names])
        for r in rows:
            probs = [f"{p:.6g}" for p in r["probs"]] if r["probs"] is not None else [""] * len(names)
            writer.writerow(
                [r["index"], r["path"], r["true"], names[r["true"]], r["pred"], names[r["pred"]], *probs]
            )


def write_eval_outputs(
    out_dir: str | Path,
    metrics: Mapping[str, Any],
    predictions: Sequence[Mapping[str, Any]] | Mapping[str, Any] | np.ndarray,
    provenance: Mapping[str, Any] | None = None,
    make_plots: bool = True,
) -> dict[str, Path]:
    """Write a complete, self-describing record of one evaluation; returns {kind: path}.

    ``metrics`` is :func:`~poster_fer.evaluation.metrics.compute_metrics` output. ``predictions`` is either a
    list of per-sample dicts or a dict of equal-length columns (or a numpy structured array), with keys
    ``true`` and ``pred`` (class indices) and optionally ``path``, ``index`` and ``probs`` (C floats per
    sample). ``provenance`` (checkpoint, dataset, split, commit, ...) is stored in ``metrics.json`` and shown
    in ``report.md`` so a number can always be traced to what produced it; ``provenance["name"]``, when
    present, titles the confusion figure. Raises ``ValueError`` when the predictions do not reproduce
    ``metrics["confusion"]``, which catches metrics and predictions taken from different runs.
    """
    names = _check_metrics(metrics)
    rows = _normalise_predictions(predictions, len(names))
    if len(rows) != int(metrics["num_samples"]):
        raise ValueError(f"{len(rows)} predictions but metrics count {metrics['num_samples']} samples")
    conf = np.asarray(metrics["confusion"], dtype=np.int64)
    recount = np.zeros_like(conf)
    np.add.at(recount, ([r["true"] for r in rows], [r["pred"] for r in rows]), 1)
    if not np.array_equal(recount, conf):
        raise ValueError("predictions do not match metrics['confusion']; were they computed from other data?")
    support = conf.sum(axis=1)
    predicted = conf.sum(axis=0)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "metrics": out / "metrics.json",
        "report": out / "report.md",
        "predictions": out / "predictions.csv",
    }
    record = dict(to_jsonable(metrics))
    record["counts"] = {
        "num_samples": int(conf.sum()),
        "support": {n: int(support[i]) for i, n in enumerate(names)},
        "predicted": {n: int(predicted[i]) for i, n in enumerate(names)},
    }
    record["provenance"] = to_jsonable(provenance or {})
    record["format_version"] = FORMAT_VERSION
    paths["metrics"].write_text(json.dumps(record, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    paths["report"].write_text(render_markdown(metrics, provenance), encoding="utf-8")
    _write_predictions_csv(paths["predictions"], rows, names)
    if make_plots:
        title = str(provenance["name"]) if provenance and provenance.get("name") else None
        paths["confusion"] = plot_confusion(conf, names, out / "confusion.png", title=title)
    return paths


def load_metrics(path: str | Path) -> dict[str, Any]:
    """Read a ``metrics.json`` written by :func:`write_eval_outputs` (a file or the folder holding it)."""
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.json"
    return json.loads(p.read_text(encoding="utf-8"))
