"""``poster-fer info NAME|MODEL_DIR``: parameters and forward FLOPs of a model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from poster_fer.errors import UserError


def print_list(as_json: bool) -> int:
    """Architectures and weight sets, marked by where their weights are; torch-free (the light runtime lists them
    too, in a tenth of a second)."""
    from poster_fer.architectures import describe_architecture, list_architectures
    from poster_fer.constants import DEFAULT_MODEL
    from poster_fer.weights.records import get_weights, list_weights

    names = list_architectures()
    weights = {n: get_weights(n) for n in list_weights()}
    by_arch: dict[str, list[str]] = {}
    for n, r in weights.items():
        by_arch.setdefault(r.architecture, []).append(n)
    if as_json:
        print(json.dumps({"architectures": {n: {"description": describe_architecture(n),
                                                "weights": by_arch.get(n, []),
                                                "shipped_weights": [w for w in by_arch.get(n, [])
                                                                    if weights[w].shipped]}
                                            for n in names},
                          "weights": {n: {"shipped": r.shipped, "default": n == DEFAULT_MODEL,
                                          "description": r.description} for n, r in weights.items()}},
                         indent=2))
        return 0
    width = max(map(len, names))
    print("architectures (poster_fer.create_model(NAME)): * = weights ship in the package, "
          "+ = records of the authors' checkpoints only (download them yourself)")
    for n in names:
        kinds = {weights[w].shipped for w in by_arch.get(n, [])}
        mark = "*" if True in kinds else "+" if kinds else " "
        print(f"{mark} {n:<{width}}  {describe_architecture(n)}")
    width = max(map(len, weights))
    print("\nweights (create_model(NAME, pretrained=True), --weights NAME, --init NAME; "
          "download: poster_fer.load_official(FILE, model=NAME)):")
    for n, r in weights.items():
        where = "shipped" if r.shipped else "download"
        acc = (r.metrics.get("test") or {}).get("accuracy")
        score = f", FER+ test {acc * 100:.2f}%" if acc is not None else ""
        default = " (the default)" if n == DEFAULT_MODEL else ""
        print(f"  {n:<{width}}  [{where}{score}]{default} {r.description}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="parameters and FLOPs of a registered model or a saved one",
                       description="Print parameter counts (total, trainable, frozen) and forward FLOPs per image "
                       "at the model's input size, measured with torch.utils.flop_counter.")
    p.add_argument("model", nargs="?", help="architecture or weights name (see --list), or a saved model directory")
    p.add_argument("--list", action="store_true", help="list the architectures and the weights (which ship, which "
                   "are records of the authors' downloadable checkpoints)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides (YAML values)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.list or not args.model:
        return print_list(args.json)
    model = _build(args)
    from poster_fer.models.stats import model_stats

    stats = model_stats(model)
    if model.card.classes:
        stats["operating_points"] = _points_with_scores(model.card)
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        print(f"model            {stats['model']}")
        print(f"input            3x{stats['input_size']}x{stats['input_size']}, {stats['num_classes']} classes")
        print(f"parameters       {stats['params_total']:,} total, {stats['params_trainable']:,} trainable, "
              f"{stats['params_frozen']:,} frozen")
        print(f"forward          {stats['gflops']:.2f} GFLOPs per image")
        for name, point in (stats.get("operating_points") or {}).items():
            print(f"operating point  {name}: {_describe_point(point)}")
    return 0


def _build(args: argparse.Namespace) -> Any:
    """The model ``info NAME`` describes: a saved folder, shipped weights, or an architecture with overrides.
    The name is checked against the torch-free tables first, so a typo is reported before PyTorch loads."""
    from poster_fer import create_model, load_model
    from poster_fer.architectures import list_architectures
    from poster_fer.weights.records import get_weights

    from .common import parse_overrides

    if Path(args.model).exists():
        return load_model(args.model)
    if "." in args.model and args.model.split(".")[0] in list_architectures():
        try:
            record = get_weights(args.model)
        except KeyError as e:
            raise UserError(str(e.args[0])) from None
        if record.shipped:
            return create_model(args.model, pretrained=True)
        return create_model(record.architecture, num_classes=record.num_classes)
    if args.model in list_architectures():
        try:
            return create_model(args.model, **parse_overrides(args.set))
        except (TypeError, ValueError) as e:
            raise UserError(str(e)) from None
    raise UserError(f"{args.model!r} is neither a registered model, known weights nor a saved model path "
                    f"(see poster-fer info --list)")


def _points_with_scores(card: Any) -> dict:
    """The card's operating points; the default one with the scores of the card's own metrics."""
    from poster_fer.card import thaw
    from poster_fer.evaluation.operating import called_as
    from poster_fer.probabilities import DEFAULT_POINT, operating_points

    points = operating_points(card)
    scores = {}
    classes = list(card.classes)
    for split, m in thaw(card.metrics).items():
        if isinstance(m, dict) and "accuracy" in m:
            scores[split] = {k: m.get(k) for k in ("accuracy", "mean_class_accuracy")}
            if m.get("confusion") and "neutral" in classes:
                scores[split]["neutral_overprediction"] = called_as(m["confusion"], classes)["rate"]
    points[DEFAULT_POINT] = {**points[DEFAULT_POINT], **scores}
    return points


def _describe_point(point: dict) -> str:
    """One line: the calibration and, when recorded, what the point scores (``--operating-point NAME``)."""
    parts = [f"temperature {point.get('temperature') or 1.0:.3f}",
             "class-prior correction" if point.get("logit_bias") else "no logit bias"]
    for split in ("val", "test"):
        m = point.get(split) or {}
        if "accuracy" in m:
            parts.append(f"{split} accuracy {m['accuracy'] * 100:.2f}% / mean class "
                         f"{m.get('mean_class_accuracy', float('nan')) * 100:.2f}%"
                         + (f" / neutral over-prediction {m['neutral_overprediction'] * 100:.2f}%"
                            if m.get("neutral_overprediction") is not None else ""))
    return "; ".join(parts) + (f" ({point['description']})" if point.get("description") else "")
