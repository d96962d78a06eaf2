"""``poster-fer info NAME|MODEL_DIR``: parameters and forward FLOPs of a model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="parameters and FLOPs of a registered model or a saved one",
                       description="Print parameter counts (total, trainable, frozen) and forward FLOPs per image "
                       "at the model's input size, measured with torch.utils.flop_counter.")
    p.add_argument("model", nargs="?", help="registered name (see --list) or a saved model directory")
    p.add_argument("--list", action="store_true", help="list registered models")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides (YAML values)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..cli import UserError
    from ..models import describe_model, list_models

    if args.list or not args.model:
        names = list_models()
        if args.json:
            print(json.dumps({n: describe_model(n) for n in names}, indent=2))
        else:
            width = max(map(len, names))
            for n in names:
                print(f"{n:<{width}}  {describe_model(n)}")
        return 0
    from .. import create_model, load_model
    from ..models.stats import model_stats
    from .common import parse_overrides

    if Path(args.model).exists():
        model = load_model(args.model)
    elif args.model in list_models():
        try:
            model = create_model(args.model, **parse_overrides(args.set))
        except (TypeError, ValueError) as e:
            raise UserError(str(e)) from None
    else:
        raise UserError(f"{args.model!r} is neither a registered model nor a saved model path "
                        f"(registered: {', '.join(list_models())})")
    stats = model_stats(model)
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        print(f"model            {stats['model']}")
        print(f"input            3x{stats['input_size']}x{stats['input_size']}, {stats['num_classes']} classes")
        print(f"parameters       {stats['params_total']:,} total, {stats['params_trainable']:,} trainable, "
              f"{stats['params_frozen']:,} frozen")
        print(f"forward          {stats['gflops']:.2f} GFLOPs per image")
    return 0
