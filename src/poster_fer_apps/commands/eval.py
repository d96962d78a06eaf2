"""``poster-fer eval --weights CKPT --data PATH --out DIR``: test-set metrics, report, confusion, calibration, t-SNE."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from poster_fer.errors import UserError

from .common import add_device_argument, add_weights_arguments, check_operating_point, command_line, load_weights


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="evaluate a checkpoint on a dataset split (metrics, report, confusion, t-SNE)",
        description="Run a checkpoint over a dataset split with the preprocessing its metadata records and "
        "write metrics.json, report.md, confusion.png, reliability.png and predictions.csv (plus tsne.png with "
        "--tsne). Probabilities are divided by the calibration temperature the checkpoint stores (1 if none); "
        "ECE is reported before and after it. "
        "Dataset images are used as they are (already cropped faces): no face detection.")
    add_weights_arguments(p)
    p.add_argument("--data", metavar="PATH", help="dataset root (for fer2013/ferplus: the folder holding "
                   "fer2013.csv(.gz) and fer2013new.csv; default: the root the checkpoint was trained on)")
    p.add_argument("--dataset", metavar="KIND", help="dataset layout: rafdb, fer2013, ferplus, affectnet7, "
                   "affectnet8, affectnet, folder, csv (default: the one the checkpoint was trained on)")
    p.add_argument("--split", default="test", help="train, val, test or all (default: test)")
    p.add_argument("--label-mode", help="FER+ label mode (majority, probability, crossentropy, votes, "
                   "multi_target); accuracy always scores the majority/argmax label")
    p.add_argument("--val-fraction", type=float, help="carve val from train for --split val on datasets without "
                   "a val split (default: what the checkpoint's training did)")
    p.add_argument("--val-seed", type=int, help="seed of that held-out split (default: training's, else 0)")
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                   help="broken dataset rows: stop (default) or skip and count them in the report")
    p.add_argument("--classes-by-position", action="store_true",
                   help="match checkpoint and dataset classes by position when their names differ")
    p.add_argument("--tta", choices=("none", "flip"), default="none",
                   help="test-time augmentation: flip = average softmax of the image and its mirror")
    calib = p.add_mutually_exclusive_group()
    calib.add_argument("--temperature", type=float, metavar="T",
                       help="calibration temperature to evaluate with instead of the checkpoint's")
    calib.add_argument("--fit-temperature-on", metavar="SPLIT",
                       help="fit the temperature on this split (e.g. val) first and evaluate with it; the "
                       "checkpoint is not changed")
    p.add_argument("--tsne", action="store_true", help="also write tsne.png of the penultimate features (Fig. 5)")
    p.add_argument("--tsne-max-points", type=int, default=5000, help="t-SNE subsample size (default: 5000)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes (default: 0)")
    p.add_argument("--max-samples", type=int, help="evaluate a reproducible random subset of this many samples")
    add_device_argument(p)
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.set_defaults(func=run)


def recorded_data(card: Any) -> dict[str, Any]:
    """The ``data`` section of the recipe a poster-fer training run recorded in the checkpoint's card (or {})."""
    from poster_fer.card import thaw

    recipe = thaw(card.recipe) if isinstance(card.recipe, Mapping) else {}
    data = recipe.get("data") if isinstance(recipe.get("data"), dict) else {}
    return data


def _dataset_choice(args: argparse.Namespace, card: Any) -> tuple[str, str, dict[str, Any]]:
    """(kind, root, options): the command line first, else what the checkpoint's training recorded.

    Options include the loader options and held-out validation split of that training (so ``--split val``
    is the split the checkpoint was selected on) unless another layout was asked for.
    """

    data = recorded_data(card)
    kind = args.dataset or data.get("kind")
    if not kind:
        raise UserError("the checkpoint does not record its dataset kind: pass --dataset (rafdb, fer2013, ferplus, "
                        "affectnet7, affectnet8, affectnet, folder, csv)")
    root = args.data or data.get("root")
    if not root:
        raise UserError("the checkpoint does not record its data root: pass --data PATH")
    same = kind == data.get("kind")
    options = dict(data.get("options") or {}) if same else {}
    fraction = args.val_fraction if args.val_fraction is not None else (data.get("val_fraction") if same else None)
    seed = args.val_seed if args.val_seed is not None else (data.get("val_seed") if same else None)
    options.update(val_fraction=fraction, val_seed=int(seed or 0))
    return str(kind), str(root), options


def run(args: argparse.Namespace) -> int:
    import sys
    check_operating_point(args)  # an unknown point is refused before PyTorch or the weights load

    from poster_fer.data import build_dataset
    from poster_fer.devices import DeviceError, resolve_device
    from poster_fer.evaluation.class_match import ClassMismatchError
    from poster_fer.evaluation.evaluate import EvalOptions, evaluate_dataset

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be positive, got {args.batch_size}")
    if args.max_samples is not None and args.max_samples < 1:
        raise UserError(f"--max-samples must be positive, got {args.max_samples}")
    if args.temperature is not None and not args.temperature > 0:
        raise UserError(f"--temperature must be positive, got {args.temperature}")
    try:
        device = resolve_device(args.device)
    except DeviceError as e:  # no CUDA, or not a device name
        raise UserError(f"--device: {e}") from None
    model = load_weights(args, device)
    kind, root, options = _dataset_choice(args, model.card)
    options["on_error"] = args.on_error
    if args.label_mode:
        if kind != "ferplus":
            raise UserError(f"--label-mode applies to the ferplus dataset, not {kind}")
        options["label_mode"] = args.label_mode
    try:
        dataset = build_dataset(kind, root, args.split, **options)
    except ValueError as e:  # DatasetError is a ValueError too and reads well as it is
        raise UserError(str(e)) from None
    print(f"data: {dataset.report.summary()}", file=sys.stderr)
    provenance = {
        "command": command_line(args, "eval"),
        "dataset": {"kind": kind, "root": str(Path(root).expanduser().resolve()), "split": args.split,
                    "options": {k: v for k, v in options.items() if k != "on_error"}},
    }
    try:
        temperature = args.temperature
        if args.fit_temperature_on:
            temperature = _fit_temperature(args, model, kind, root, options, device, provenance)
        options = EvalOptions(
            classes_by_position=args.classes_by_position, batch_size=args.batch_size,
            tta=None if args.tta == "none" else args.tta, device=device, max_samples=args.max_samples,
            tsne=args.tsne, tsne_max_points=args.tsne_max_points, num_workers=args.workers,
            provenance=provenance, checkpoint=args.weights, temperature=temperature)
        metrics = evaluate_dataset(model, dataset, args.out, options)
    except ClassMismatchError as e:
        raise UserError(f"{args.weights} vs {root}: {e}") from None
    print(f"accuracy {100 * metrics['accuracy']:.2f}% · mean class accuracy "
          f"{100 * metrics['mean_class_accuracy']:.2f}% · macro F1 {100 * metrics['macro_f1']:.2f}% "
          f"· ECE {100 * metrics['ece']:.2f}% -> {100 * metrics['ece_calibrated']:.2f}% at T = "
          f"{metrics['temperature']:.4g} on {metrics['num_samples']} samples -> {args.out}")
    return 0


def _fit_temperature(args: argparse.Namespace, model: Any, kind: str, root: str, options: dict[str, Any],
                     device: Any, provenance: dict[str, Any]) -> float:
    """Fit the temperature on ``--fit-temperature-on`` and record where it came from in ``provenance``."""
    import sys

    from poster_fer.data import build_dataset
    from poster_fer.evaluation.class_match import ClassMismatchError
    from poster_fer.evaluation.evaluate import fit_dataset_temperature

    split = args.fit_temperature_on
    if split == args.split:
        print(f"warning: fitting the temperature on the evaluated split ({split}) makes its ECE optimistic",
              file=sys.stderr)
    try:
        fit_data = build_dataset(kind, root, split, **options)
    except ValueError as e:
        raise UserError(f"--fit-temperature-on {split}: {e}") from None
    try:
        temperature, used = fit_dataset_temperature(
            model, fit_data, classes_by_position=args.classes_by_position, batch_size=args.batch_size,
            device=device, max_samples=args.max_samples, num_workers=args.workers)
    except ClassMismatchError:
        raise
    except ValueError as e:  # a split the temperature cannot be fitted on (see fit_temperature)
        raise UserError(f"--fit-temperature-on {split}: {e}") from None
    print(f"temperature {temperature:.4g} fitted on {used} {split} samples", file=sys.stderr)
    provenance["calibration"] = {"fitted_on": split, "fit_samples": used, "temperature": temperature}
    return temperature
