"""Running a model over a dataset, and what a published number needs around it.

Split by concern: class matching in :mod:`.class_match`, sample ids and subsets in :mod:`.samples`, calibration
maths and metrics in :mod:`.calibration`, the loop in :mod:`.loop`; preprocessing is the weights' own
:func:`poster_fer.create_transform`.

:func:`run_evaluation` runs a saved model over a dataset through the one evaluation loop
(:func:`poster_fer.evaluation.loop.predict_split`, which training's validation and test use too), so a number
means the same thing wherever it is reported.
:func:`evaluate_dataset` adds what a published number needs around it: the class check, the metrics, the
output files and their provenance.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..card import card_of, thaw
from ..devices import resolve_device
from ..precision import autocast as precision_autocast
from ..precision import resolve_precision
from ..probabilities import calibrate_logits, softmax, validate_temperature
from ..provenance import git_revision
from ..weights.preprocessing import Preprocessing, create_transform
from .calibration import calibration_metrics, fit_temperature
from .class_match import ClassMismatchError, match_classes
from .loop import predict_split
from .metrics import compute_metrics
from .report import write_eval_outputs
from .samples import EvalImages, sample_ids, subsample_indices

__all__ = ["TTA_MODES", "EvalOptions", "evaluate_dataset", "fit_dataset_temperature", "run_evaluation"]

TTA_MODES = (None, "flip")

@torch.no_grad()
def run_evaluation(
    model: nn.Module,
    dataset: Any,
    batch_size: int = 64,
    tta: str | None = None,
    device: str | torch.device | None = "cpu",
    collect_features: bool = False,
    *,
    transform: Callable | None = None,
    indices: Sequence[int] | np.ndarray | None = None,
    num_workers: int = 0,
    progress: bool = True,
    desc: str = "eval",
    temperature: float = 1.0,
    logit_bias: Sequence[float] | None = None,
    precision: str | None = None,
) -> dict[str, Any]:
    """Predict every sample of ``dataset`` (in order) through :func:`~poster_fer.evaluation.loop.predict_split`
    and return the raw material of the metrics.

    ``transform`` replaces the dataset's own (it is applied to ``dataset.get_image(i)``); without it the
    dataset's transform must already produce model input. ``tta="flip"`` averages the softmax of each image
    and its mirror. ``indices`` restricts the run to those samples. ``temperature`` divides the logits before
    every softmax (calibrated confidences; the argmax is unchanged without TTA); ``logit_bias`` (per-class
    offsets, the model's class-prior correction) is added before that, as every inference path does
    (:func:`~poster_fer.weights.io.calibrate_logits`). ``precision`` is an autocast name (``bf16``...; default
    full precision). Returns ``y_true`` (hard labels, argmax of soft targets), ``y_pred``, ``probs`` (N, C
    float32, as deployed), ``probs_uncalibrated`` (the same at T = 1 without the bias), ``logits`` (N, C
    float32, raw, of the unflipped image: what a temperature is fitted on), ``features`` ((N, D) from
    ``model.forward_features`` of the unflipped image, or ``None``), ``paths`` (sample ids), ``indices`` and
    ``temperature``. The model is put in eval mode and left there.
    """
    if tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {TTA_MODES}, not {tta!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    temperature = validate_temperature(temperature)
    dev = resolve_device(device)
    idx = np.arange(len(dataset)) if indices is None else np.asarray(indices, dtype=np.int64)
    if idx.size == 0:
        raise ValueError("nothing to evaluate: the dataset (or the chosen subset) is empty")
    labels = np.asarray(dataset.labels, dtype=np.int64)[idx]
    ids = sample_ids(dataset)
    loader = torch.utils.data.DataLoader(
        EvalImages(dataset, idx, labels, transform), batch_size=batch_size, shuffle=False, num_workers=num_workers,
        pin_memory=dev.type == "cuda",
    )

    def prepare(batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any], None]:
        return batch["image"].to(dev, non_blocking=True), batch["target"], {}, None

    model.eval().to(dev)
    out = predict_split(model, loader, prepare, device=dev, autocast=precision_autocast(
        dev, resolve_precision(precision, dev, "precision")), return_features=collect_features,
        tta_flip=tta == "flip", progress=progress, desc=desc)
    views = [out.logits] if out.flip_logits is None else [out.logits, out.flip_logits]
    calibrated = temperature != 1.0 or logit_bias is not None
    prob = (sum(softmax(calibrate_logits(v, temperature, logit_bias)) for v in views) / len(views)
            if calibrated else out.probs)
    return {
        "y_true": labels,
        "y_pred": prob.argmax(axis=1).astype(np.int64),
        "probs": prob.astype(np.float32),
        "probs_uncalibrated": out.probs,
        "logits": out.logits,
        "temperature": temperature,
        "features": out.features,
        "paths": [ids[i] for i in idx.tolist()],
        "indices": idx,
    }


def _checkpoint_record(model: nn.Module, checkpoint: str | os.PathLike[str] | None) -> dict[str, Any]:
    card = card_of(model)
    return {
        "path": None if checkpoint is None else str(Path(checkpoint).resolve()),
        "model": getattr(model, "model_name", None),
        "family": getattr(model, "family", None),
        "provenance": card.provenance_record() or None,
        "training_metrics": thaw(card.metrics) or None,
    }


def _resolve_classes_and_preprocessing(
    model: nn.Module, dataset: Any, classes: Sequence[str] | None,
    preprocessing: Preprocessing | Mapping[str, Any] | None, classes_by_position: bool,
) -> tuple[list[str], np.ndarray | None, Preprocessing]:
    """(model class names, dataset-to-model label map, eval preprocessing), defaulting to the model's card."""
    card = card_of(model)
    names = [str(n) for n in (classes if classes is not None else card.classes)]
    num_classes = int(model.cfg.num_classes)
    if not names:
        if not classes_by_position:
            raise ClassMismatchError(f"the {num_classes}-class model records no class names: pass classes=[...] "
                                     "(--classes) or classes_by_position=True (--classes-by-position)")
        names = [str(n) for n in dataset.classes]
    if len(names) != num_classes:
        raise ClassMismatchError(f"{len(names)} class names for a {num_classes}-class model")
    mapping = match_classes(names, dataset.classes, by_position=classes_by_position)
    if preprocessing is None:
        preprocessing = thaw(card.preprocessing)
    if not isinstance(preprocessing, Preprocessing):
        preprocessing = Preprocessing.from_dict(preprocessing, int(model.cfg.input_size))
    return names, mapping, preprocessing


def fit_dataset_temperature(
    model: nn.Module,
    dataset: Any,
    *,
    classes: Sequence[str] | None = None,
    preprocessing: Preprocessing | Mapping[str, Any] | None = None,
    classes_by_position: bool = False,
    batch_size: int = 64,
    device: str | torch.device | None = "cpu",
    max_samples: int | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> tuple[float, int]:
    """Fit the calibration temperature on a (validation) split; returns ``(T, samples used)``.

    Same preprocessing and class matching as :func:`evaluate_dataset`, on the logits of the unflipped images
    plus the model's stored ``logit_bias`` (the temperature scales what is deployed). The model's metadata is
    left alone: store the result with
    :func:`poster_fer.weights.io.set_temperature` if it should travel with the checkpoint.
    """

    _, mapping, prep = _resolve_classes_and_preprocessing(model, dataset, classes, preprocessing,
                                                          classes_by_position)
    idx = subsample_indices(len(dataset), max_samples)
    out = run_evaluation(model, dataset, batch_size=batch_size, device=device, transform=create_transform(prep),
                         indices=idx, num_workers=num_workers, progress=progress, desc="fit temperature")
    y_true = out["y_true"] if mapping is None else mapping[out["y_true"]]

    bias = card_of(model).logit_bias
    logits = out["logits"] if bias is None else out["logits"] + np.asarray(bias, dtype=np.float32)
    return fit_temperature(logits, y_true), int(idx.size)


@dataclass(frozen=True)
class EvalOptions:
    """How :func:`evaluate_dataset` evaluates: one typed object that the command line, training and the
    benchmarks fill in, instead of eighteen keywords passed along.

    ``classes`` and ``preprocessing`` default to the model's card; ``classes_by_position`` maps dataset labels
    by index instead of by name; ``temperature`` overrides the card's; ``provenance`` is merged into the record;
    ``checkpoint`` is the file the record names; ``tsne`` adds a t-SNE picture of the features.
    """

    classes: Sequence[str] | None = None
    preprocessing: Preprocessing | Mapping[str, Any] | None = None
    classes_by_position: bool = False
    batch_size: int = 64
    tta: str | None = None
    device: str | torch.device | None = "cpu"
    max_samples: int | None = None
    tsne: bool = False
    tsne_max_points: int = 5000
    num_workers: int = 0
    provenance: Mapping[str, Any] | None = None
    checkpoint: str | os.PathLike[str] | None = None
    make_plots: bool = True
    progress: bool = True
    temperature: float | None = None


def evaluate_dataset(model: nn.Module, dataset: Any, out_dir: str | os.PathLike[str] | None = None,
                     options: EvalOptions | None = None, **settings: Any) -> dict[str, Any]:
    """Evaluate a model on a dataset and (with ``out_dir``) write the full record; returns the metrics.

    ``options`` (an :class:`EvalOptions`; its fields may also be given as keywords, which override it). Images go
    through :func:`poster_fer.create_transform` of the model's preprocessing, so the checkpoint's input size,
    statistics, channel order and grey conversion are applied whatever transform the dataset carries. Dataset
    labels are mapped onto the model's classes by :func:`match_classes`. The temperature (the card's, else 1)
    scales the logits as every inference path does, so probabilities, NLL and ``predictions.csv`` are the
    calibrated ones the deployed model reports; ``ece`` (T = 1) and ``ece_calibrated`` show what it buys.
    ``out_dir`` receives ``metrics.json``, ``report.md``, ``predictions.csv``, ``confusion.png``,
    ``reliability.png`` (and ``tsne.png`` with ``tsne``).
    """
    opts = dataclasses.replace(options or EvalOptions(), **settings)  # an unknown keyword is a TypeError
    scored = _score(model, dataset, opts)
    if out_dir is None:
        return scored.metrics
    record = _eval_record(model, dataset, opts, scored)
    out, metrics = scored.out, scored.metrics
    predictions = {"true": scored.y_true, "pred": out["y_pred"], "probs": out["probs"], "path": out["paths"],
                   "index": out["indices"]}
    paths = write_eval_outputs(out_dir, metrics, predictions, provenance=record, make_plots=opts.make_plots)
    if opts.make_plots:
        from .plots import plot_reliability

        paths["reliability"] = plot_reliability(
            out["probs_uncalibrated"], scored.y_true, Path(out_dir) / "reliability.png",
            calibrated_probs=out["probs"], temperature=out["temperature"],
            n_bins=metrics["calibration"]["n_bins"], title=record["name"])
    if opts.tsne:
        from .plots import write_tsne

        paths["tsne"] = Path(out_dir) / "tsne.png"
        write_tsne(out["features"], scored.y_true, scored.names, paths["tsne"], max_points=opts.tsne_max_points)
    return {**metrics, "files": {k: str(v) for k, v in paths.items()}}


@dataclass
class _Scored:
    """What one evaluation pass produced: the metrics and what the record and the pictures are made of."""

    metrics: dict[str, Any]
    out: dict[str, Any]
    y_true: np.ndarray
    names: list[str]
    mapping: np.ndarray | None
    prep: Preprocessing
    idx: np.ndarray
    seconds: float


def _score(model: nn.Module, dataset: Any, opts: EvalOptions) -> _Scored:
    """Predict the (sub)set once and compute the metrics, calibrated as the deployed model is."""
    card = card_of(model)
    names, mapping, prep = _resolve_classes_and_preprocessing(model, dataset, opts.classes, opts.preprocessing,
                                                              opts.classes_by_position)
    temperature = opts.temperature
    if temperature is not None:
        source = "given"
    else:
        source = "checkpoint metadata" if card.temperature is not None else "none stored (T = 1)"
        temperature = 1.0 if card.temperature is None else float(card.temperature)
    idx = subsample_indices(len(dataset), opts.max_samples)
    start = time.perf_counter()
    out = run_evaluation(model, dataset, batch_size=opts.batch_size, tta=opts.tta, device=opts.device,
                         collect_features=opts.tsne, transform=create_transform(prep), indices=idx,
                         num_workers=opts.num_workers, progress=opts.progress, temperature=temperature,
                         logit_bias=card.logit_bias)
    seconds = time.perf_counter() - start
    y_true = out["y_true"] if mapping is None else mapping[out["y_true"]]
    metrics = compute_metrics(y_true, out["y_pred"], names, probs=out["probs"])
    metrics.update(calibration_metrics(y_true, out, out["temperature"], source))
    return _Scored(metrics, out, y_true, names, mapping, prep, idx, seconds)


def _eval_record(model: nn.Module, dataset: Any, opts: EvalOptions, scored: _Scored) -> dict[str, Any]:
    """What metrics.json and report.md say about the run: model, data, preprocessing, machine, provenance."""
    report = getattr(dataset, "report", None)
    idx, mapping, seconds = scored.idx, scored.mapping, scored.seconds
    record: dict[str, Any] = {
        "name": f"{getattr(model, 'model_name', 'model')} on {getattr(report, 'dataset', 'data')}"
                f"[{getattr(report, 'split', '?')}]",
        "checkpoint": _checkpoint_record(model, opts.checkpoint),
        "dataset": {
            "classes": list(dataset.classes),
            "num_samples": len(dataset),
            "evaluated": int(idx.size),
            "subset": None if idx.size == len(dataset) else f"random {idx.size} of {len(dataset)} (seed 0)",
            "class_mapping": None if mapping is None else {
                str(d): scored.names[int(m)] for d, m in zip(dataset.classes, mapping, strict=True)},
            "classes_by_position": bool(opts.classes_by_position),
            "load_report": report.as_dict() if report is not None else None,
        },
        "preprocessing": scored.prep.to_meta(),
        "tta": opts.tta or "none",
        "device": str(resolve_device(opts.device)),
        "seconds": round(seconds, 2),
        "images_per_second": round(idx.size / seconds, 2) if seconds > 0 else None,
        "git_revision": git_revision(),
        "torch": torch.__version__,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    for key, value in (opts.provenance or {}).items():
        if isinstance(value, Mapping) and isinstance(record.get(key), dict):
            record[key] = {**record[key], **value}
        else:
            record[key] = value
    return record
