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
import functools
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
from .loop import EvalOutput, PredictOptions, predict_split
from .metrics import compute_metrics
from .options import legacy_options, positional_settings
from .report import write_eval_outputs
from .samples import EvalImages, sample_ids, subsample_indices

__all__ = ["TTA_MODES", "EvalOptions", "evaluate_dataset", "fit_dataset_temperature", "run_evaluation"]

TTA_MODES = (None, "flip")

#: run_evaluation's settings that could be given by position before :class:`EvalOptions`, in their old order.
_RUN_POSITIONAL = ("batch_size", "tta", "device", "collect_features")
#: The :class:`EvalOptions` fields run_evaluation reads.
_RUN_FIELDS = frozenset({*_RUN_POSITIONAL, "num_workers", "progress", "desc", "temperature", "logit_bias", "precision"})


@torch.no_grad()
def run_evaluation(
    model: nn.Module,
    dataset: Any,
    *args: Any,
    options: EvalOptions | None = None,
    transform: Callable | None = None,
    indices: Sequence[int] | np.ndarray | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Predict every sample of ``dataset`` (in order) through :func:`~poster_fer.evaluation.loop.predict_split`
    and return the raw material of the metrics.

    ``options`` (an :class:`EvalOptions`; its fields may also be given as keywords, which override it, as
    :func:`evaluate_dataset` takes them) says how: ``batch_size``, ``tta``, ``device``, ``collect_features``,
    ``num_workers``, ``progress``, ``desc``, ``temperature``, ``logit_bias`` and ``precision`` are read; the
    other fields are :func:`evaluate_dataset`'s. The first four may still be given by position, with a
    DeprecationWarning. ``transform`` replaces the dataset's own (it is applied to ``dataset.get_image(i)``);
    without it the dataset's transform must already produce model input. ``tta="flip"`` averages the softmax
    of each image and its mirror. ``indices`` restricts the run to those samples. ``temperature`` (None means 1)
    divides the logits before every softmax (calibrated confidences; the argmax is unchanged without TTA);
    ``logit_bias`` (per-class offsets, the model's class-prior correction) is added before that, as every
    inference path does (:func:`~poster_fer.weights.io.calibrate_logits`); here None means no bias, where
    :func:`evaluate_dataset` reads the card's. ``precision`` is an autocast name (``bf16``...; default full
    precision). Returns ``y_true`` (hard labels, argmax of soft targets), ``y_pred``, ``probs`` (N, C
    float32, as deployed), ``probs_uncalibrated`` (the same at T = 1 without the bias), ``logits`` (N, C
    float32, raw, of the unflipped image: what a temperature is fitted on), ``features`` ((N, D) from
    ``model.forward_features`` of the unflipped image, or ``None``), ``paths`` (sample ids), ``indices`` and
    ``temperature``. The model is put in eval mode and left there.
    """
    opts = _run_options(options, args, settings)
    temperature = validate_temperature(1.0 if opts.temperature is None else opts.temperature)
    dev = resolve_device(opts.device)
    idx = np.arange(len(dataset)) if indices is None else np.asarray(indices, dtype=np.int64)
    if idx.size == 0:
        raise ValueError("nothing to evaluate: the dataset (or the chosen subset) is empty")
    labels = np.asarray(dataset.labels, dtype=np.int64)[idx]
    ids = sample_ids(dataset)
    loader = torch.utils.data.DataLoader(
        EvalImages(dataset, idx, labels, transform), batch_size=opts.batch_size, shuffle=False,
        num_workers=opts.num_workers, pin_memory=dev.type == "cuda",
    )
    model.eval().to(dev)
    loop = PredictOptions(autocast=precision_autocast(dev, resolve_precision(opts.precision, dev, "precision")),
                          return_features=opts.collect_features, tta_flip=opts.tta == "flip",
                          progress=opts.progress, desc=opts.desc)
    out = predict_split(model, loader, functools.partial(_to_device, dev), device=dev, options=loop)
    prob = _deployed_probs(out, temperature, opts.logit_bias)
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


def _to_device(dev: torch.device, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any], None]:
    """The loop's ``prepare`` step for :class:`EvalImages` batches: the images on ``dev``, the targets as they are."""
    return batch["image"].to(dev, non_blocking=True), batch["target"], {}, None


def _run_options(options: EvalOptions | None, args: Sequence[Any], settings: dict[str, Any]) -> EvalOptions:
    """run_evaluation's options: ``options`` with the keywords (and the old positional settings) over it."""
    unknown = sorted(set(settings) - _RUN_FIELDS)
    if unknown:
        raise TypeError(f"run_evaluation() got unexpected keyword argument(s) {unknown}")
    opts = options or EvalOptions()
    if args:  # the form before EvalOptions: batch_size, tta, device, collect_features by position
        legacy = positional_settings(args, _RUN_POSITIONAL, settings, "run_evaluation")
        opts = legacy_options(opts, EvalOptions, legacy, "run_evaluation")
    opts = dataclasses.replace(opts, **settings)
    if opts.tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {TTA_MODES}, not {opts.tta!r}")
    if opts.batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {opts.batch_size}")
    return opts


def _deployed_probs(out: EvalOutput, temperature: float, logit_bias: Sequence[float] | None) -> np.ndarray:
    """The probabilities as deployed: the loop's own at T = 1 without a bias, else each view's calibrated
    softmax, averaged over the views (the image and, with flip TTA, its mirror)."""
    if temperature == 1.0 and logit_bias is None:
        return out.probs
    views = [out.logits] if out.flip_logits is None else [out.logits, out.flip_logits]
    return sum(softmax(calibrate_logits(v, temperature, logit_bias)) for v in views) / len(views)


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


#: The :class:`EvalOptions` fields fit_dataset_temperature reads.
_FIT_FIELDS = frozenset({"classes", "preprocessing", "classes_by_position", "batch_size", "device", "max_samples",
                         "num_workers", "progress"})


def fit_dataset_temperature(
    model: nn.Module, dataset: Any, options: EvalOptions | None = None, **settings: Any
) -> tuple[float, int]:
    """Fit the calibration temperature on a (validation) split; returns ``(T, samples used)``.

    ``options`` (an :class:`EvalOptions`; its fields may also be given as keywords, which override it, as
    :func:`evaluate_dataset` takes them): ``classes``, ``preprocessing``, ``classes_by_position``, ``batch_size``,
    ``device``, ``max_samples``, ``num_workers`` and ``progress`` are read. Same preprocessing and class
    matching as :func:`evaluate_dataset`, on the logits of the unflipped images plus the model's stored
    ``logit_bias`` (the temperature scales what is deployed). The model's metadata is left alone: store the
    result with :func:`poster_fer.weights.io.set_temperature` if it should travel with the checkpoint.
    """
    unknown = sorted(set(settings) - _FIT_FIELDS)
    if unknown:
        raise TypeError(f"fit_dataset_temperature() got unexpected keyword argument(s) {unknown}")
    opts = dataclasses.replace(options or EvalOptions(), **settings)
    _, mapping, prep = _resolve_classes_and_preprocessing(model, dataset, opts.classes, opts.preprocessing,
                                                          opts.classes_by_position)
    idx = subsample_indices(len(dataset), opts.max_samples)
    run = EvalOptions(batch_size=opts.batch_size, device=opts.device, num_workers=opts.num_workers,
                      progress=opts.progress, desc="fit temperature")
    out = run_evaluation(model, dataset, options=run, transform=create_transform(prep), indices=idx)
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
    ``logit_bias`` overrides the card's, ``precision`` is an autocast name (``bf16``...; default full precision),
    ``collect_features`` keeps the features and ``desc`` names the progress bar.

    :func:`run_evaluation` and :func:`fit_dataset_temperature` read the fields they need from the same object;
    for :func:`run_evaluation`, ``temperature`` and ``logit_bias`` left None mean none (T = 1, no bias) rather
    than the card's.
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
    collect_features: bool = False
    desc: str = "eval"
    logit_bias: Sequence[float] | None = None
    precision: str | None = None


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
        from .plots import TsneOptions, write_tsne

        paths["tsne"] = Path(out_dir) / "tsne.png"
        write_tsne(out["features"], scored.y_true, scored.names, paths["tsne"],
                   options=TsneOptions(max_points=opts.tsne_max_points))
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
    run = dataclasses.replace(opts, temperature=temperature, collect_features=opts.tsne or opts.collect_features,
                              logit_bias=card.logit_bias if opts.logit_bias is None else opts.logit_bias)
    out = run_evaluation(model, dataset, options=run, transform=create_transform(prep), indices=idx)
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
