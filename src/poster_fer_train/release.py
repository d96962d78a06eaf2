"""Making a weight set ship: its record in ``records.json``, paths made portable, the folder named by the record.

Used by ``benchmarks/default_model.py`` (a trained run -> a shipped model) and by the migration of the models
shipped before weights had records. Shipping writes data only: a record and a saved-model folder named
``architecture.tag``; it never registers an architecture or renames one.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from poster_fer.card import ModelCard
from poster_fer.checksums import sha256_of
from poster_fer.constants import ONNX_FILE
from poster_fer.models.stats import model_stats
from poster_fer.probabilities import POINTS_KEY
from poster_fer.weights.io import (
    WEIGHTS_FILE,
    atomic_write,
    load_model,
    read_card,
    rewrite_metadata,
    save_model,
)
from poster_fer.weights.records import RECORDS_FILE, load_records, pretrained_root

__all__ = ["METRIC_KEYS", "ONNX_FILE", "TABLE_BEGIN", "TABLE_END", "add_operating_point", "models_table",
           "portable", "record_for_folder", "ship_folder", "ship_onnx", "write_models_table", "write_record"]

#: The headline metrics a record keeps per split (the full report stays in the folder's meta.json).
METRIC_KEYS = ("accuracy", "mean_class_accuracy", "macro_f1", "ece", "ece_calibrated", "nll", "num_samples")

_ABS_PATH = re.compile(r"(?<![\w.~-])/(?:[\w.@+-]+/)*[\w.@+-]+")


def portable(value: Any, root: str | Path | None = None) -> Any:
    """``value`` with every absolute path in its strings made portable: under ``root`` relative to it, anything
    else reduced to ``PATH/<name>`` (a developer's folders mean nothing to a user and should not be published)."""
    if isinstance(value, Mapping):
        return {k: portable(v, root) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v, root) for v in value]
    if not isinstance(value, str):
        return value
    base = str(Path(root).resolve()) + "/" if root is not None else None

    def fix(m: re.Match[str]) -> str:
        path = m.group(0)
        if base and (path + "/").startswith(base):
            return path[len(base):] or "."
        return "PATH/" + path.rstrip("/").rsplit("/", 1)[-1]

    return _ABS_PATH.sub(fix, value)


def _metrics_summary(metrics: Mapping[str, Any], splits: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for split, described in splits.items():
        m = metrics.get(split)
        if m:
            out[split] = {"split": described, **{k: m[k] for k in METRIC_KEYS if m.get(k) is not None}}
    return out


def record_for_folder(folder: str | Path, name: str, *, splits: Mapping[str, str], **fields: Any) -> dict[str, Any]:
    """Complete a shipped folder's card and return its records.json entry.

    The card is stored once, in the folder (meta.json and the safetensors header): this adds what it was missing
    (each metric split described in words, parameters, GFLOPs, and ``fields``: licence, recipe, command, origin,
    description), rewriting the metadata with the tensors byte for byte. The entry keeps only what the index
    needs: the file and its sha256, and ``aliases`` / ``default`` / ``onnx`` from ``fields`` or the entry it
    replaces. The ONNX twin carries the metadata too: run :func:`ship_onnx` afterwards."""
    folder = Path(folder)
    model = load_model(folder)
    stats = model_stats(model)
    card = model.card
    if card.parent == name:  # the index listed an older file under this name: not its own parent
        card = dataclasses.replace(card, parent=None)
    previous = load_records().get(name)
    index = {**(previous.index_entry() if previous is not None and previous.shipped else {}),
             **{k: fields.pop(k) for k in ("aliases", "default", "onnx") if k in fields}}
    metrics = {split: {**dict(card.metrics.get(split) or {}), **summary}
               for split, summary in _metrics_summary(card.metrics, splits).items()}
    card = dataclasses.replace(card, name=name, metrics={**card.metrics, **metrics},
                               num_params=stats["params_total"], gflops=stats["gflops"], **fields)
    weights = rewrite_metadata(folder, card.to_meta()) / WEIGHTS_FILE
    entry = {**index, "architecture": name.split(".", 1)[0], "file": f"{folder.name}/{WEIGHTS_FILE}",
             "sha256": sha256_of(weights)}
    ModelCard.from_dict(name, entry)  # refuse a malformed entry before it is written
    return entry


def write_record(name: str, record: Mapping[str, Any], root: str | Path | None = None) -> Path:
    """Add or replace ``name`` in ``records.json`` (sorted, atomically): a shipped model's index entry, or a
    download record's whole card."""
    path = Path(root or pretrained_root()) / RECORDS_FILE
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[name] = dict(record)
    text = json.dumps(dict(sorted(data.items())), indent=1) + "\n"
    atomic_write(path, lambda p: Path(p).write_text(text))
    load_records.cache_clear()
    return path


def ship_folder(model: Any, name: str, repo: str | Path, **metadata: Any) -> Path:
    """Save ``model`` as the package-data folder of weight set ``name`` (``pretrained/<name>/``), with its
    metadata's paths made portable relative to ``repo`` and ``weights`` naming the record."""
    out = pretrained_root() / name
    meta = portable({**model.card.to_meta(), **metadata}, repo)
    model.model_name = name.split(".", 1)[0]
    model.card = dataclasses.replace(ModelCard.from_meta(meta), name=name)
    return save_model(model, out)


def ship_onnx(name: str, sample: Any = None, tolerance: float = 1e-4) -> dict[str, Any]:
    """Write ``model.onnx`` beside shipped weights ``name`` and record it (file, sha256, opset, size, the largest
    probability difference from PyTorch on ``sample``) in the weight set's record; returns that entry.

    The graph is the exact fast paths' (``poster-fer export``'s default) with float16 storage for every weight
    float16 holds exactly; the rest stays float32. Convolutions with BatchNorm folded in (the exporter folds
    them in eval mode even without the fast paths) are not exact in float16, so models with many of them save
    less (files are 58% of a float32 export for the MobileFaceNet models, 75-79% for the from-scratch ones).
    Outputs are unchanged either way; ONNX Runtime folds the casts when it loads the file. ``sample`` (a float32
    (B,3,S,S) batch of real crops) is what the calibrated probabilities are compared on; refused above
    ``tolerance``.
    """
    import numpy as np

    from poster_fer.export import OnnxRuntimeModel, export_onnx
    from poster_fer.probabilities import calibrated_probabilities

    record = load_records()[name]
    folder = record.path()
    model = load_model(folder)
    out = folder / ONNX_FILE
    card = model.card
    report = export_onnx(model, out, optimize=True, storage="float16", sample=sample,
                         metadata={"provenance": {**card.provenance_record(), "exported_from": name}})
    worst = 0.0
    if sample is not None:
        import torch

        with torch.inference_mode():
            ref = calibrated_probabilities(model(torch.from_numpy(np.ascontiguousarray(sample))).numpy(), card)
        got = calibrated_probabilities(OnnxRuntimeModel(out)(sample), card)
        worst = float(np.abs(got - ref).max())
        if not worst <= tolerance or not np.array_equal(got.argmax(1), ref.argmax(1)):
            out.unlink()
            raise ValueError(f"{out}: probabilities differ from PyTorch by {worst:.3g} (> {tolerance:g}) or in top-1; "
                             "not shipped")
    entry = {"file": f"{folder.name}/{ONNX_FILE}", "sha256": sha256_of(out), "bytes": out.stat().st_size,
             "opset": report["opset"], "storage": "float16", "max_rel_logit_error": report["max_rel_error"],
             "max_abs_prob_diff": worst, "checked_on": 0 if sample is None else int(len(sample))}
    write_record(name, {**record.index_entry(), "onnx": entry})
    return entry


def add_operating_point(name: str, point: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    """Add (or replace) operating point ``point`` of shipped weights ``name`` in its card: the folder's meta.json
    and the metadata copy inside model.safetensors (the tensors are written back byte for byte); the index entry
    gets the new sha256. Returns the new metadata. Run :func:`ship_onnx` after it, so the ONNX file (which carries
    the metadata too) offers the point as well."""
    record = load_records()[name]
    folder = record.path()
    card = read_card(folder)
    calibration = {**card.calibration, POINTS_KEY: {**card.operating_points, point: dict(entry)}}
    meta = dataclasses.replace(card, calibration=calibration).to_meta()
    weights = rewrite_metadata(folder, meta) / WEIGHTS_FILE
    write_record(name, {**record.index_entry(), "sha256": sha256_of(weights)})
    return meta


#: The markers around docs/models.md's table of shipped weights, which :func:`models_table` writes.
TABLE_BEGIN = "<!-- shipped weights: generated from the cards by poster_fer_train.release.write_models_table -->"
TABLE_END = "<!-- end of the generated table -->"


def models_table() -> str:
    """The table of shipped weights, made from their cards (so docs/models.md cannot drift from them)."""
    from poster_fer.constants import DEFAULT_MODEL

    rows = ["| weights | what | classes | test accuracy / mean class (split) | parameters | GFLOPs |",
            "| --- | --- | --- | --- | --- | --- |"]
    for name in sorted(load_records()):
        card = load_records()[name]
        if not card.shipped:
            continue
        test = card.metrics.get("test") or {}
        score = ""
        if "accuracy" in test and "mean_class_accuracy" in test:
            score = (f"{test['accuracy'] * 100:.2f}% / {test['mean_class_accuracy'] * 100:.2f}% "
                     f"({test.get('split', 'test')})")
        default = " **(the default)**" if name == DEFAULT_MODEL else ""
        params = "" if card.num_params is None else f"{card.num_params:,}"
        rows.append(f"| `{name}`{default} | {card.description} | {card.num_classes} | {score} | {params} | "
                    f"{'' if card.gflops is None else card.gflops} |")
    return "\n".join(rows)


def write_models_table(doc: str | Path | None = None) -> Path:
    """Rewrite the generated table in docs/models.md (between :data:`TABLE_BEGIN` and :data:`TABLE_END`)."""
    path = Path(doc) if doc else Path(__file__).resolve().parents[2] / "docs" / "models.md"
    text = path.read_text()
    head, rest = text.split(TABLE_BEGIN, 1)
    tail = rest.split(TABLE_END, 1)[1]
    path.write_text(f"{head}{TABLE_BEGIN}\n{models_table()}\n{TABLE_END}{tail}")
    return path
