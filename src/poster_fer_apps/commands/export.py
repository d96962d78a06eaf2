"""``poster-fer export --weights CKPT --format onnx --out FILE``: a verified ONNX file for PyTorch-free inference;
``poster-fer export --format web DIR``: a static folder that labels photos inside the browser (docs/browser.md)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from poster_fer.errors import UserError

from .common import add_weights_arguments, check_operating_point, load_weights


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a model to ONNX (checked against PyTorch in ONNX Runtime), or as a "
                       "static in-browser folder (--format web)",
                       description="Export a poster-fer model (or an official checkpoint) to ONNX with a dynamic "
                       "batch axis and the model's metadata (classes, preprocessing) embedded; the file is run in "
                       "ONNX Runtime against PyTorch before it is kept, and rejected above --tolerance. "
                       "--format web DIR writes a folder (page, pipeline, onnxruntime-web, model.onnx, detector, "
                       "model.json) that labels photos inside the visitor's browser, offline, from any static host; "
                       "it needs no PyTorch (the weights' ONNX file is used).")
    add_weights_arguments(p)
    p.add_argument("--format", default="onnx", choices=("onnx", "web"), help="export format (default: onnx)")
    p.add_argument("target", nargs="?", default=None, metavar="OUT",
                   help="the output: a .onnx file, or with --format web a folder (same as --out)")
    p.add_argument("--out", default=None, help="output file (.onnx), or with --format web a folder")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: 17)")
    p.add_argument("--batch-size-check", action=argparse.BooleanOptionalAction, default=True,
                   help="also run a batch size other than the traced one through the file (default: on)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest accepted relative error (default 1e-4)")
    p.add_argument("--no-optimize", action="store_true",
                   help="export the eager graph instead of the exact fast paths (BN folding etc.)")
    p.add_argument("--storage", choices=("float32", "float16"), default="float32",
                   help="float16: store each weight that float16 holds exactly as float16, with a cast in the graph "
                   "(about half the size for a model saved in float16; outputs unchanged); default float32")
    p.add_argument("--json", action="store_true", help="print the export report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_operating_point(args)  # an unknown point is refused before PyTorch or the weights load
    if args.target is not None and args.out is not None and args.target != args.out:
        raise UserError(f"two outputs given ({args.target} and --out {args.out}); give one")
    args.out = args.out or args.target
    if args.out is None:
        raise UserError("give the output: export [--format onnx] FILE.onnx, or export --format web DIR")
    if args.format == "web":
        return _run_web(args)
    try:
        from poster_fer.export import DEFAULT_OPSET, ExportError, export_onnx
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise UserError(f"ONNX export needs onnx and onnxruntime ({err}); pip install 'poster-fer[onnx]'") from None
    model = load_weights(args)
    weights = args.weights
    out = Path(args.out)
    if out.suffix.lower() != ".onnx":
        raise UserError(f"{out}: the output file should end in .onnx")
    try:
        report = export_onnx(model, out, opset=args.opset or DEFAULT_OPSET,
                             check_batch_sizes=(3,) if args.batch_size_check else (),
                             tolerance=args.tolerance, optimize=not args.no_optimize, storage=args.storage,
                             metadata={"provenance": {**model.card.provenance_record(),
                                                      "exported_from": str(weights)}})
    except ExportError as err:
        raise UserError(str(err)) from None
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        checks = ", ".join(f"batch {c['batch']}: {c['rel_error']:.1e}" for c in report["checks"])
        print(f"wrote {report['path']} ({report['bytes'] / 2**20:.1f} MiB, opset {report['opset']}, dynamic batch); "
              f"ONNX Runtime vs PyTorch relative error {checks} (tolerance {report['tolerance']:g})")
    return 0


def _run_web(args: argparse.Namespace) -> int:
    """The static in-browser folder: the ONNX file the weights already carry, no PyTorch and no re-export."""
    from poster_fer.web import WebExportError, export_web

    try:
        out = export_web(args.out, args.weights, args.operating_point)
    except WebExportError as err:
        raise UserError(str(err)) from None
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out}/ ({size / 2**20:.1f} MiB): open it from any static host, e.g. "
          f"`python -m http.server -d {out}` and http://127.0.0.1:8000/ (docs/browser.md)")
    return 0
