"""``poster-fer predict PATH... [--weights CKPT]``: label every face in images, folders, videos or a webcam.

Each input is handled on its own: a file that cannot be read, a truncated video or an image without a face
is reported (as a record with ``status`` "error" / "no_face" and in the summary on stderr) and the run goes
on. Exit status: 0 when every input was processed, 1 when any failed, 2 for a problem with the command itself
(bad weights, missing detector model, nothing to process, a ``--webcam`` that cannot be opened). The work itself
is the library's :func:`poster_fer.inference.job.run_job`; this module only turns arguments into its options.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import TextIO


def register(sub: argparse._SubParsersAction) -> None:
    from ..constants import DEFAULT_MAX_PIXELS, DEFAULT_MODEL  # torch- and OpenCV-free, so --help stays fast
    from ..options import arg, check_detect_size, check_limit, count_arg, probability_arg
    from .common import add_backend_argument, add_device_argument, add_weights_arguments

    p = sub.add_parser(
        "predict", help=f"detect faces in images/videos/webcam and predict their expressions (default model: "
        f"{DEFAULT_MODEL})",
        # The usage line is the first line of --help: it names the model used when --weights is not given.
        usage=f"%(prog)s PATH... [--weights CKPT] [options]   (default model: {DEFAULT_MODEL}, shipped; "
        "no download)",
        description=f"Detect faces, align each to the crop geometry the checkpoint was trained on, and predict "
        f"its expression. Without --weights the default model ({DEFAULT_MODEL}, 8 FER+ classes, in the package) "
        "and the bundled YuNet detector are used. Writes one JSON line (or CSV row) per face to stdout; inputs "
        "without a face or that fail get a record with status 'no_face' / 'error'. Exit status 0: all inputs "
        "processed; 1: some failed; 2: usage or setup error.")
    p.add_argument("paths", nargs="*", metavar="PATH", help="image or video files, or directories (recursive)")
    add_weights_arguments(p, onnx=True)
    add_backend_argument(p)
    add_device_argument(p)
    p.add_argument("--batch-size", type=count_arg("--batch-size"), default=32,
                   help="faces per forward pass (default 32)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="write annotated images/videos (box, label, probability bars) here")
    p.add_argument("--draw", choices=("auto", "label", "bars", "none"), default="auto",
                   help="what --out draws per face: label (box + caption), bars (also a probability panel where "
                   "it covers no other face), none (boxes only), auto (default: bars up to 4 faces, else label)")
    p.add_argument("--save-crops", action="store_true", help="also save each aligned crop under DIR/crops")
    p.add_argument("--output", type=Path, default=None, metavar="FILE",
                   help="records to FILE instead of stdout, in the format its extension names: .jsonl (JSON lines), "
                   ".json (one JSON array) or .csv")
    p.add_argument("--format", choices=("jsonl", "json", "csv"), default=None,
                   help="record format: jsonl (default on stdout), json or csv; with --output it must agree with the "
                   "file's extension, and is needed only for other extensions")
    det = p.add_argument_group("faces")
    det.add_argument("--detector", choices=("yunet", "haar"), default="yunet",
                     help="yunet (default; boxes + 5 landmarks) or haar (weaker fallback, no download)")
    det.add_argument("--detector-model", default=None, metavar="PATH",
                     help="YuNet .onnx file (default: the bundled one, no download; 'zoo': the OpenCV Zoo "
                     "file, downloaded once into the per-user cache)")
    det.add_argument("--threshold", type=probability_arg("--threshold"), default=0.6,
                     help="detector score threshold (default 0.6)")
    det.add_argument("--no-detect", action="store_true",
                     help="inputs are already aligned face crops: classify each whole image")
    det.add_argument("--max-faces", type=count_arg("--max-faces"), default=None,
                     help="at most this many faces per image/frame")
    det.add_argument("--detect-size", type=arg(check_detect_size), default=1280, metavar="PX",
                     help="longest side the detector runs at (default 1280; 0 = full resolution)")
    det.add_argument("--max-pixels", type=arg(check_limit, "--max-pixels"), default=DEFAULT_MAX_PIXELS, metavar="N",
                     help="refuse images larger than N pixels (default 50,000,000; 0 = no limit)")
    det.add_argument("--require-face", action="store_true",
                     help="count images without a face as failures (exit status 1)")
    vid = p.add_argument_group("video")
    vid.add_argument("--every", type=count_arg("--every"), default=1, metavar="N",
                     help="process every Nth frame (default 1)")
    vid.add_argument("--max-frames", type=count_arg("--max-frames"), default=None, metavar="N",
                     help="stop each video after N frames")
    vid.add_argument("--webcam", type=count_arg("--webcam", minimum=0), default=None, metavar="INDEX",
                     help="read camera INDEX until Ctrl-C (or --max-frames)")
    vid.add_argument("--ema", type=probability_arg("--ema", high_open=False), default=0.5, metavar="ALPHA",
                     help="weight of the newest frame in the per-track moving average (1 = no smoothing)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..cli import UserError
    from ..inference import InferenceError, Recognizer, RecordWriter, collect_sources
    from ..inference.job import JobOptions, JobStats, run_job
    from ..inference.sources import CameraError, camera_problem
    from .common import output_dir, output_file

    if not args.paths and args.webcam is None:
        raise UserError("give at least one PATH or --webcam INDEX")
    if args.webcam is not None:  # no camera: say why now, before seconds of model loading
        problem = camera_problem(args.webcam)
        if problem:
            raise UserError(problem)
    if args.save_crops and args.out is None:
        raise UserError("--save-crops needs --out DIR")
    if args.out is not None:
        output_dir(args.out, "--out")
    if args.output is not None:
        output_file(args.output, "--output")
    fmt = record_format(args.output, args.format)
    options = JobOptions(out=args.out, save_crops=args.save_crops, detect=not args.no_detect, every=args.every,
                         max_frames=args.max_frames, ema=args.ema, progress=False if args.no_progress else None,
                         draw=args.draw)
    sources, skipped = collect_sources(args.paths, args.webcam)
    if not sources:
        raise UserError(f"no images or videos found in {', '.join(args.paths)}"
                        + (f" ({len(skipped)} other files skipped)" if skipped else ""))
    try:
        rec = Recognizer.from_checkpoint(
            args.weights, device=args.device, detector=None if args.no_detect else args.detector,
            detector_model=args.detector_model, backend=args.backend, model=args.model,
            num_classes=args.num_classes, channel_order=args.channel_order, batch_size=args.batch_size,
            operating_point=args.operating_point,
            max_faces=args.max_faces, detect_size=args.detect_size, score_threshold=args.threshold,
            max_pixels=args.max_pixels)
    except (InferenceError, ValueError) as err:
        raise UserError(str(err)) from None

    stats = JobStats()
    out_stream: TextIO = sys.stdout
    if args.output is not None:
        out_stream = open(args.output, "w", encoding="utf-8", newline="")
    try:
        writer = RecordWriter(out_stream, fmt, rec.classes)  # in the try: the CSV header can meet a closed pipe
        try:
            run_job(rec, sources, writer, options, stats)
        finally:  # also after Ctrl-C: a .json file still ends its array
            with contextlib.suppress(BrokenPipeError):
                writer.close()
    except BrokenPipeError:  # the reader went away (`... | head`): stop quietly, as Unix tools do
        with contextlib.suppress(OSError, ValueError):  # keep Python's exit-time flush from failing again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except CameraError as err:  # a camera that looked present but did not open (busy, not a capture node)
        raise UserError(str(err)) from None
    except OSError as err:
        if out_stream is sys.stdout:
            raise
        raise UserError(f"--output {args.output}: cannot write the records ({err.strerror or err})") from None
    finally:
        if out_stream is not sys.stdout:
            try:
                out_stream.close()
            except OSError as err:  # buffered records flushed at close: a full disk shows here
                raise UserError(f"--output {args.output}: cannot write the records ({err.strerror or err})") from None
    report = stats.report(skipped, list_no_face=args.require_face)
    print("poster-fer predict: " + "\n".join(report), file=sys.stderr)
    failed = bool(stats.failures) or (args.require_face and bool(stats.no_face))
    return 1 if failed else 0


def record_format(output: Path | None, fmt: str | None) -> str:
    """The record format: ``--output``'s extension decides (.jsonl, .json, .csv); ``--format`` may repeat it,
    or name the format of a file whose extension says nothing, but never contradict it (a results.csv full of
    JSON lines is worse than an error). Without ``--output``: ``--format``, else JSON lines."""
    from ..cli import UserError
    from ..inference.records import EXTENSION_FORMATS, format_for_path

    if output is None:
        return fmt or "jsonl"
    by_name = format_for_path(output)
    accepted = ", ".join(EXTENSION_FORMATS)
    if by_name is None and fmt is None:
        ext = f"extension {output.suffix!r}" if output.suffix else "no extension"
        raise UserError(f"--output {output}: {ext} does not say which record format to write; name the file with "
                        f"one of {accepted}, or give --format jsonl|json|csv")
    if by_name is not None and fmt is not None and fmt != by_name:
        raise UserError(f"--output {output} names a .{output.suffix.lower().lstrip('.')} file but --format is "
                        f"{fmt}; drop --format (the extension decides) or name the file *.{fmt}")
    return by_name if by_name is not None else str(fmt)
