"""``poster-fer convert OFFICIAL.pth OUT_DIR --model NAME``: official checkpoint -> poster-fer format."""

from __future__ import annotations

import argparse

from poster_fer.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert an official POSTER / POSTER++ checkpoint to poster-fer format",
                       description="Load an official checkpoint safely (no pickled code runs), map its keys onto "
                       "a registered model, drop dead modules, and write model.safetensors + meta.json.")
    p.add_argument("checkpoint", help="official .pth / .pth.tar file")
    p.add_argument("out_dir", help="output directory")
    p.add_argument("--model", required=True,
                   help="architecture (poster_v1, poster_v1_affectnet, poster_v2) or the official weights' record "
                   "(poster_v2.rafdb_official; poster-fer info --list), which gives the class order")
    p.add_argument("--num-classes", type=int, default=None, help="default: read from the checkpoint's head")
    p.add_argument("--classes", nargs="+", default=None,
                   help="class names in the head's order (default: from the official record of --model; needed "
                   "when two records fit, or none)")
    p.add_argument("--channel-order", choices=("RGB", "BGR"), default=None,
                   help="channel order the weights expect (default: BGR for poster_v1, the official RAF-DB "
                   "pipeline; RGB otherwise)")
    p.add_argument("--non-strict", action="store_true", help="report unexpected/missing keys instead of failing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from poster_fer import load_official, save_model
    from poster_fer.models import list_models

    if args.model.split(".", 1)[0] not in list_models():
        raise UserError(f"unknown model {args.model!r} (registered: {', '.join(list_models())})")
    model = load_official(args.checkpoint, model=args.model, num_classes=args.num_classes,
                          strict=not args.non_strict, classes=args.classes, channel_order=args.channel_order)
    out = save_model(model, args.out_dir)
    report = model.conversion_report
    print(f"{args.checkpoint}: {report.summary()}")
    if report.dropped:
        print(f"dropped (never run by the official forward pass): {len(report.dropped)} keys, e.g. "
              f"{', '.join(report.dropped[:3])}")
    print(f"wrote {out} ({model.card.preprocessing['channel_order']} input, classes: "
          f"{', '.join(model.card.classes)})")
    return 0
