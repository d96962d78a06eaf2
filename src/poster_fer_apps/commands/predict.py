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
from typing import Any, TextIO

from poster_fer.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    from poster_fer.constants import DEFAULT_MODEL  # torch- and OpenCV-free, so --help stays fast
    from poster_fer.options import count_arg

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
    _add_output_arguments(p)
    _add_archive_arguments(p.add_argument_group("archives (docs/bulk.md)"))
    _add_face_arguments(p.add_argument_group("faces"))
    _add_video_arguments(p.add_argument_group("video"))
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _add_output_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="write annotated images/videos (box, label, probability bars) here")
    p.add_argument("--draw", choices=("auto", "label", "bars", "none"), default="auto",
                   help="what --out draws per face: label (box + caption), bars (also a probability panel where "
                   "it covers no other face), none (boxes only), auto (default: bars up to 4 faces, else label)")
    p.add_argument("--save-crops", action="store_true", help="also save each aligned crop under DIR/crops")
    p.add_argument("--output", type=Path, default=None, metavar="FILE",
                   help="records to FILE instead of stdout, in the format its extension names: .jsonl (JSON lines), "
                   ".json (one JSON array), .csv or .parquet (typed columns; pip install 'poster-fer[parquet]'); "
                   "with --engine ray a directory of Parquet parts")
    p.add_argument("--format", choices=("jsonl", "json", "csv", "parquet"), default=None,
                   help="record format: jsonl (default on stdout), json, csv or parquet; with --output it must agree "
                   "with the file's extension, and is needed only for other extensions")


def _add_archive_arguments(bulk: argparse._ArgumentGroup) -> None:
    from poster_fer.options import count_arg

    bulk.add_argument("--resume", action="store_true",
                      help="with --output: skip the inputs the output already holds whole (after a crash, kill or "
                      "Ctrl-C) and add the rest; .jsonl, .csv, .parquet and Ray output directories")
    bulk.add_argument("--from-list", type=Path, default=None, metavar="FILE",
                      help="also read input paths from FILE: one per line, or a column of a .csv / .parquet file")
    bulk.add_argument("--list-column", default=None, metavar="NAME",
                      help="the column --from-list reads from a .csv or .parquet list (default: path)")
    bulk.add_argument("--engine", choices=("local", "ray"), default="local",
                      help="local: this process (default); ray: Ray Data on every core of this machine, or on the "
                      "cluster at --address (pip install 'poster-fer[ray]'), Parquet parts into --output DIR")
    bulk.add_argument("--address", default=None, metavar="ADDR",
                      help="--engine ray: join the running cluster at ADDR ('auto', or ray://HOST:10001) instead of "
                      "starting Ray on this machine")
    bulk.add_argument("--actors", type=count_arg("--actors"), default=None, metavar="N",
                      help="--engine ray: classify actors, each holding the model (default: one per 4 CPUs, or one "
                      "per GPU with --backend torch)")
    bulk.add_argument("--detect-actors", type=count_arg("--detect-actors"), default=None, metavar="N",
                      help="--engine ray: at most N decode/detect/align actors (default: the CPUs left)")
    bulk.add_argument("--segment-frames", type=count_arg("--segment-frames", minimum=0), default=1500, metavar="N",
                      help="--engine ray: cut videos into segments of N frames so one video spreads over the "
                      "cluster; tracks restart at each segment (default 1500; 0: whole videos)")


def _add_face_arguments(det: argparse._ArgumentGroup) -> None:
    from poster_fer.constants import DEFAULT_MAX_PIXELS
    from poster_fer.options import arg, check_detect_size, check_limit, count_arg, probability_arg

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
    det.add_argument("--no-whole-image", action="store_true",
                     help="never classify a face-sized image (up to 256 px, a pre-cropped face) whole when the "
                     "detector finds no face in it (default: do, and mark the record detection=whole_image)")
    det.add_argument("--require-face", action="store_true",
                     help="count images without a face as failures (exit status 1)")


def _add_video_arguments(vid: argparse._ArgumentGroup) -> None:
    from poster_fer.options import count_arg, probability_arg

    vid.add_argument("--every", type=count_arg("--every"), default=1, metavar="N",
                     help="process every Nth frame (default 1)")
    vid.add_argument("--max-frames", type=count_arg("--max-frames"), default=None, metavar="N",
                     help="stop each video after N frames")
    vid.add_argument("--webcam", type=count_arg("--webcam", minimum=0), default=None, metavar="INDEX",
                     help="read camera INDEX until Ctrl-C (or --max-frames)")
    vid.add_argument("--ema", type=probability_arg("--ema", high_open=False), default=0.5, metavar="ALPHA",
                     help="weight of the newest frame in the per-track moving average (1 = no smoothing)")


def run(args: argparse.Namespace) -> int:
    from poster_fer.inference import collect_sources
    from poster_fer.inference.job import JobOptions, JobStats

    fmt = _check_arguments(args)
    options = JobOptions(out=args.out, save_crops=args.save_crops, detect=not args.no_detect, every=args.every,
                         max_frames=args.max_frames, ema=args.ema, progress=False if args.no_progress else None,
                         draw=args.draw)
    sources, skipped = collect_sources(args.paths, args.webcam)
    if not sources:
        raise UserError(f"no images or videos found in {', '.join(args.paths)}"
                        + (f" ({len(skipped)} other files skipped)" if skipped else ""))
    rec = _load_recognizer(args)
    if args.engine == "ray":
        return _run_ray(args, rec, sources, skipped)
    stats = JobStats()
    if args.output is not None and fmt != "json":  # resumable: a journal (.jsonl, .csv) or parts (.parquet)
        return _run_resumable(args, rec, fmt, sources, skipped, options, stats)
    if _write_records(args, rec, fmt, sources, options, stats):
        return 0  # the reader of stdout went away
    return _finish(args, stats, skipped)


def _check_arguments(args: argparse.Namespace) -> str:
    """Refuse what cannot work before the model loads (seconds of waiting for a typo); the record format."""
    from poster_fer.inference.sources import camera_problem

    from .common import check_operating_point, output_dir, output_file

    if args.from_list is not None:
        args.paths = [*args.paths, *_read_list(args.from_list, args.list_column)]
    if not args.paths and args.webcam is None:
        raise UserError("give at least one PATH, --from-list FILE or --webcam INDEX")
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
    check_operating_point(args)
    fmt = "parquet" if args.engine == "ray" and args.output is not None and args.format is None and \
        args.output.suffix.lower() not in (".jsonl", ".json", ".csv") else record_format(args.output, args.format)
    _check_bulk(args, fmt)
    return fmt


def _load_recognizer(args: argparse.Namespace) -> Any:
    from poster_fer.inference import InferenceError, Recognizer

    from .common import official_options

    try:
        return Recognizer.from_checkpoint(
            args.weights, device=args.device, detector=None if args.no_detect else args.detector,
            detector_model=args.detector_model, backend=args.backend, official=official_options(args),
            batch_size=args.batch_size, operating_point=args.operating_point,
            max_faces=args.max_faces, detect_size=args.detect_size, score_threshold=args.threshold,
            max_pixels=args.max_pixels, whole_image_fallback=not args.no_whole_image)
    except (InferenceError, ValueError) as err:
        raise UserError(str(err)) from None


def _write_records(args: argparse.Namespace, rec: Any, fmt: str, sources: list[Any], options: Any,
                   stats: Any) -> bool:
    """Label everything into stdout or a .json file; True when stdout's reader went away (stop quietly)."""
    from poster_fer.inference import RecordWriter
    from poster_fer.inference.job import run_job
    from poster_fer.inference.sources import CameraError

    out_stream: TextIO = sys.stdout if args.output is None else open(args.output, "w", encoding="utf-8", newline="")
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
        return True
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
    return False


def _finish(args: argparse.Namespace, stats: Any, skipped: list[Path]) -> int:
    report = stats.report(skipped, list_no_face=args.require_face)
    print("poster-fer predict: " + "\n".join(report), file=sys.stderr)
    failed = bool(stats.failures) or (args.require_face and bool(stats.no_face))
    return 1 if failed else 0


def _read_list(path: Path, column: str | None) -> list[str]:
    from poster_fer.bulk import read_list

    try:
        return read_list(path, column)
    except FileNotFoundError:
        raise UserError(f"--from-list {path}: no such file") from None
    except (ImportError, ValueError, OSError, UnicodeDecodeError) as err:
        raise UserError(f"--from-list {path}: {err}") from None


def _check_bulk(args: argparse.Namespace, fmt: str) -> None:
    """Refuse option combinations the archive paths cannot honour, before anything loads."""
    from poster_fer._lazy import module_available

    if args.resume and args.output is None:
        raise UserError("--resume needs --output FILE (stdout cannot be resumed)")
    if args.resume and fmt == "json":
        raise UserError(f"--resume: {args.output} is one JSON array, which cannot be appended to; write JSON lines "
                        "(.jsonl), CSV or Parquet")
    if fmt == "parquet" and not module_available("pyarrow"):
        raise UserError("Parquet output needs pyarrow: pip install 'poster-fer[parquet]'")
    if args.engine != "ray":
        if args.address is not None:
            raise UserError("--address applies to --engine ray")
        return
    if not module_available("ray") or not module_available("pyarrow"):
        raise UserError("--engine ray needs Ray and pyarrow: pip install 'poster-fer[ray]'")
    if args.output is None or fmt in ("jsonl", "json", "csv"):
        raise UserError("--engine ray writes Parquet parts: give --output DIR (a directory)")
    for flag, value in (("--webcam", args.webcam), ("--out", args.out), ("--save-crops", args.save_crops or None)):
        if value is not None:
            raise UserError(f"{flag} runs in the single process; drop --engine ray")


def _run_resumable(args: argparse.Namespace, rec: Any, fmt: str, sources: list[Any], skipped: list[Path],
                   options: Any, stats: Any) -> int:
    """``--output`` as .jsonl / .csv / .parquet: committed input by input, so ``--resume`` can carry on."""
    from poster_fer.bulk import open_output, run_metadata
    from poster_fer.bulk.parquet import OutputMismatch
    from poster_fer.inference.job import run_job

    try:
        sink = open_output(args.output, fmt, rec.classes,
                           run_metadata(rec, args.weights, args.operating_point, "local"), args.resume)
    except (OutputMismatch, ValueError) as err:
        raise UserError(str(err)) from None
    except OSError as err:
        raise UserError(f"--output {args.output}: cannot write the records ({err.strerror or err})") from None
    done = sink.done_sources()
    todo = [s for s in sources if s.name not in done]
    if args.resume:
        print(f"poster-fer predict: resuming {args.output}: {len(sources) - len(todo)} of {len(sources)} inputs "
              f"already complete, {len(todo)} to go", file=sys.stderr)
    try:
        run_job(rec, todo, sink, options, stats)
    finally:
        try:
            sink.close()
        except OSError as err:
            raise UserError(f"--output {args.output}: cannot write the records ({err.strerror or err})") from None
    return _finish(args, stats, skipped)


def _run_ray(args: argparse.Namespace, rec: Any, sources: list[Any], skipped: list[Path]) -> int:
    """``--engine ray``: the same pipeline on Ray Data (poster_fer.bulk.ray_engine), Parquet parts in --output."""
    from poster_fer.bulk import run_metadata
    from poster_fer.bulk.parquet import OutputMismatch
    from poster_fer.bulk.ray_engine import RayOptions, RayPlan, run_ray
    from poster_fer.inference.job import JobOptions

    from .common import official_options

    kwargs = {"path": args.weights, "backend": "onnxruntime" if args.backend in (None, "auto") else args.backend,
              "device": args.device, "official": official_options(args), "batch_size": args.batch_size,
              "operating_point": args.operating_point, "max_faces": args.max_faces, "detect_size": args.detect_size,
              "score_threshold": args.threshold, "max_pixels": args.max_pixels,
              "detector": None if args.no_detect else args.detector, "detector_model": args.detector_model,
              "whole_image_fallback": not args.no_whole_image}
    job = JobOptions(detect=not args.no_detect, every=args.every, max_frames=args.max_frames, ema=args.ema,
                     progress=False if args.no_progress else None)
    opts = RayOptions(address=args.address, actors=args.actors, detect_actors=args.detect_actors,
                      segment_frames=args.segment_frames)
    meta = run_metadata(rec, args.weights, args.operating_point, "ray")
    plan = RayPlan(kwargs, job, rec.classes, meta, opts, resume=args.resume)
    try:
        res = run_ray(sources, args.output, plan)
    except (OutputMismatch, ValueError) as err:
        raise UserError(str(err)) from None
    rows = ", ".join(f"{k} {res.rows[k]}" for k in sorted(res.rows)) or "none"
    lines = [f"ray: {res.inputs} inputs ({res.items} items incl. video segments) written to {args.output} in "
             f"{res.seconds:.1f} s by {res.detect_actors} detect and {res.actors} classify actors; "
             f"{res.skipped} already complete; rows by status: {rows}"]
    lines += [f"  failed: {reason}" for _, reason in res.failures[:20]]
    if skipped:
        lines.append(f"  skipped {len(skipped)} files in directories that are neither images nor videos")
    print("poster-fer predict: " + "\n".join(lines), file=sys.stderr)
    return 1 if res.failures else 0


def record_format(output: Path | None, fmt: str | None) -> str:
    """The record format: ``--output``'s extension decides (.jsonl, .json, .csv); ``--format`` may repeat it,
    or name the format of a file whose extension says nothing, but never contradict it (a results.csv full of
    JSON lines is worse than an error). Without ``--output``: ``--format``, else JSON lines."""
    from poster_fer.inference.records import EXTENSION_FORMATS, format_for_path

    if output is None:
        return fmt or "jsonl"
    by_name = "parquet" if output.suffix.lower() == ".parquet" else format_for_path(output)
    accepted = ", ".join([*EXTENSION_FORMATS, ".parquet"])
    if by_name is None and fmt is None:
        ext = f"extension {output.suffix!r}" if output.suffix else "no extension"
        raise UserError(f"--output {output}: {ext} does not say which record format to write; name the file with "
                        f"one of {accepted}, or give --format jsonl|json|csv|parquet")
    if by_name is not None and fmt is not None and fmt != by_name:
        raise UserError(f"--output {output} names a .{output.suffix.lower().lstrip('.')} file but --format is "
                        f"{fmt}; drop --format (the extension decides) or name the file *.{fmt}")
    return by_name if by_name is not None else str(fmt)
