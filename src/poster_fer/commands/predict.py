"""``poster-fer predict PATH... [--weights CKPT]``: label every face in images, folders, videos or a webcam.

Each input is handled on its own: a file that cannot be read, a truncated video or an image without a face
is reported (as a record with ``status`` "error" / "no_face" and in the summary on stderr) and the run goes
on. Exit status: 0 when every input was processed, 1 when any failed, 2 for a problem with the command itself
(bad weights, missing detector model, nothing to process).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

_MAX_LISTED_FAILURES = 20


def register(sub: argparse._SubParsersAction) -> None:
    from ..hub import DEFAULT_MODEL

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
    p.add_argument("--weights", default=None, metavar="CKPT",
                   help=f"poster-fer model directory / .safetensors, official .pth (with --model), or .onnx "
                   f"(default: the shipped {DEFAULT_MODEL})")
    p.add_argument("--model", default=None, help="registered variant of an official .pth (default poster_v1)")
    p.add_argument("--num-classes", type=int, default=None, help="official .pth: classes in its head")
    p.add_argument("--channel-order", choices=("RGB", "BGR"), default=None,
                   help="official .pth: channel order its weights expect (default: BGR for poster_v1, else RGB)")
    p.add_argument("--backend", choices=("torch", "onnxruntime"), default=None,
                   help="default: onnxruntime for .onnx files, torch otherwise")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    p.add_argument("--batch-size", type=int, default=32, help="faces per forward pass (default 32)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="write annotated images/videos (box, label, probability bars) here")
    p.add_argument("--save-crops", action="store_true", help="also save each aligned crop under DIR/crops")
    p.add_argument("--output", type=Path, default=None, metavar="FILE", help="records to FILE instead of stdout")
    p.add_argument("--format", choices=("jsonl", "csv"), default="jsonl", help="record format (default jsonl)")
    det = p.add_argument_group("faces")
    det.add_argument("--detector", choices=("yunet", "haar"), default="yunet",
                     help="yunet (default; boxes + 5 landmarks) or haar (weaker fallback, no download)")
    det.add_argument("--detector-model", default=None, metavar="PATH",
                     help="YuNet .onnx file (default: the bundled one, no download; 'zoo': the OpenCV Zoo "
                     "file, downloaded once into the per-user cache)")
    det.add_argument("--threshold", type=float, default=0.6, help="detector score threshold (default 0.6)")
    det.add_argument("--no-detect", action="store_true",
                     help="inputs are already aligned face crops: classify each whole image")
    det.add_argument("--max-faces", type=int, default=None, help="at most this many faces per image/frame")
    det.add_argument("--detect-size", type=int, default=None, metavar="PX",
                     help="longest side the detector runs at (default 1280; 0 = full resolution)")
    det.add_argument("--max-pixels", type=int, default=None, metavar="N",
                     help="refuse images larger than N pixels (default 50,000,000; 0 = no limit)")
    det.add_argument("--require-face", action="store_true",
                     help="count images without a face as failures (exit status 1)")
    vid = p.add_argument_group("video")
    vid.add_argument("--every", type=int, default=1, metavar="N", help="process every Nth frame (default 1)")
    vid.add_argument("--max-frames", type=int, default=None, metavar="N", help="stop each video after N frames")
    vid.add_argument("--webcam", type=int, default=None, metavar="INDEX",
                     help="read camera INDEX until Ctrl-C (or --max-frames)")
    vid.add_argument("--ema", type=float, default=0.5, metavar="ALPHA",
                     help="weight of the newest frame in the per-track moving average (1 = no smoothing)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


@dataclass
class _Stats:
    images: int = 0
    videos: int = 0
    frames: int = 0
    faces: int = 0
    dropped: int = 0  # detections thrown out as impossible faces (non-finite, empty or off-image boxes)
    no_face: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)

    def fail(self, name: str, reason: str) -> None:
        self.failures.append((name, reason))


def run(args: argparse.Namespace) -> int:
    from ..cli import UserError
    from ..faces import DEFAULT_MAX_PIXELS
    from ..inference import InferenceError, Recognizer, collect_sources

    if not args.paths and args.webcam is None:
        raise UserError("give at least one PATH or --webcam INDEX")
    for name in ("batch_size", "every"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if args.save_crops and args.out is None:
        raise UserError("--save-crops needs --out DIR")
    if not 0.0 < args.ema <= 1.0:
        raise UserError("--ema must be in (0, 1]")
    sources, skipped = collect_sources(args.paths, args.webcam)
    if not sources:
        raise UserError(f"no images or videos found in {', '.join(args.paths)}"
                        + (f" ({len(skipped)} other files skipped)" if skipped else ""))
    detect_size = 1280 if args.detect_size is None else args.detect_size
    try:
        rec = Recognizer.from_checkpoint(
            args.weights, device=args.device, detector=None if args.no_detect else args.detector,
            detector_model=args.detector_model, backend=args.backend or "torch", model=args.model,
            num_classes=args.num_classes, channel_order=args.channel_order, batch_size=args.batch_size,
            max_faces=args.max_faces, detect_size=detect_size, score_threshold=args.threshold,
            max_pixels=DEFAULT_MAX_PIXELS if args.max_pixels is None else (args.max_pixels or None))
    except (InferenceError, ValueError) as err:
        raise UserError(str(err)) from None

    stats = _Stats()
    out_stream: TextIO = sys.stdout
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        out_stream = open(args.output, "w", encoding="utf-8", newline="")
    try:
        job = _Job(args, rec, out_stream, stats)
        for kind, group in itertools.groupby(sources, key=lambda s: s.kind):
            if kind == "image":
                job.images(list(group))
            else:
                for src in group:
                    job.video(src)
    except BrokenPipeError:  # the reader went away (`... | head`): stop quietly, as Unix tools do
        with contextlib.suppress(OSError, ValueError):  # keep Python's exit-time flush from failing again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        if out_stream is not sys.stdout:
            out_stream.close()
    _summary(stats, skipped, args)
    failed = bool(stats.failures) or (args.require_face and bool(stats.no_face))
    return 1 if failed else 0


class _Job:
    """One predict run: the recognizer, the writers and the counters shared by every input."""

    def __init__(self, args: argparse.Namespace, rec: Any, stream: TextIO, stats: _Stats) -> None:
        from ..inference import RecordWriter

        self.args, self.rec, self.stats = args, rec, stats
        self.writer = RecordWriter(stream, args.format, rec.classes)
        self.out: Path | None = args.out
        self._taken: set[Path] = set()
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)

    # -- helpers ---------------------------------------------------------------------------------------

    def _progress(self, total: int | None, unit: str, desc: str) -> Any:
        from tqdm import tqdm

        disable = True if self.args.no_progress else None  # None: only on a terminal
        return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, disable=disable, leave=False,
                    dynamic_ncols=True)

    def _unique(self, path: Path) -> Path:
        """``path``, or ``stem_2.ext``, ``stem_3.ext``... when an earlier input already wrote there."""
        candidate, n = path, 1
        while candidate in self._taken:
            n += 1
            candidate = path.with_name(f"{path.stem}_{n}{path.suffix}")
        self._taken.add(candidate)
        candidate.parent.mkdir(parents=True, exist_ok=True)
        return candidate

    def _save_rgb(self, path: Path, rgb: Any) -> None:
        import cv2

        if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
            raise OSError(f"cannot write {path}")

    def _crop_path(self, rel: Path, suffix: str) -> Path:
        assert self.out is not None
        return self._unique(self.out / "crops" / rel.parent / f"{rel.stem}_{suffix}.png")

    # -- images ---------------------------------------------------------------------------------------

    def images(self, sources: list[Any]) -> None:
        from ..inference import draw_predictions, error_record, face_record, no_face_record

        items = ((src, src.path) for src in sources)
        bar = self._progress(len(sources) if len(sources) > 1 else None, "img", "images")
        with bar:
            for pred in self.rec.iter_predict(items, detect=not self.args.no_detect,
                                              return_crops=self.args.save_crops):
                bar.update(1)
                src = pred.key
                self.stats.images += 1
                if pred.error is not None:
                    reason = _reason(pred.error, src.name)
                    self.stats.fail(src.name, reason)
                    self.writer.write(error_record(src.name, reason))
                    continue
                self.stats.dropped += pred.dropped
                if not pred.faces:
                    self.stats.no_face.append(src.name)
                    self.writer.write(no_face_record(src.name, dropped=pred.dropped))
                for i, face in enumerate(pred.faces):
                    crop = None
                    if self.args.save_crops and face.crop is not None:
                        cp = self._crop_path(src.rel, f"face{i}")
                        self._save_rgb(cp, face.crop)
                        crop = str(cp)
                    self.writer.write(face_record(src.name, i, face, crop=crop))
                    self.stats.faces += 1
                if self.out is not None:
                    try:
                        self._save_rgb(self._annotated_path(src),
                                       draw_predictions(pred.image, pred.faces, self.rec.classes))
                    except OSError as err:
                        self.stats.fail(src.name, f"annotated image not written ({err})")

    def _annotated_path(self, src: Any) -> Path:
        """``DIR/<name>`` keeping the image format when cv2 can write it; never the input file itself."""
        assert self.out is not None
        rel = src.rel
        suffix = rel.suffix.lower() if rel.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp", ".webp",
                                                              ".tif", ".tiff") else ".png"
        path = self.out / rel.with_suffix(suffix)
        if src.path is not None and path.resolve() == Path(src.path).resolve():
            path = path.with_name(f"{path.stem}_annotated{path.suffix}")
        return self._unique(path)

    # -- videos ---------------------------------------------------------------------------------------

    def video(self, src: Any) -> None:
        from ..inference import (
            IoUTracker,
            VideoError,
            VideoReader,
            draw_predictions,
            error_record,
            face_record,
            no_face_record,
        )

        args = self.args
        self.stats.videos += 1
        try:
            reader = VideoReader(src.index if src.kind == "webcam" else src.path, every=args.every,
                                 max_frames=args.max_frames, max_pixels=self.rec.max_pixels)
        except VideoError as err:
            self.stats.fail(src.name, str(err))
            self.writer.write(error_record(src.name, str(err)))
            return
        tracker = IoUTracker(alpha=args.ema, max_age=max(10, 3 * args.every))
        sink = None
        if self.out is not None:
            path = self.out / src.rel.with_suffix(".mp4")
            if src.path is not None and path.resolve() == Path(src.path).resolve():
                path = path.with_name(f"{path.stem}_annotated.mp4")
            sink = _VideoSink(self._unique(path), reader.fps, args.every)
        fps = reader.fps
        frames_seen = 0
        bar = self._progress(reader.expected_frames, "frame", Path(src.name).name)
        try:
            with bar:
                for pred in self.rec.iter_predict(reader, detect=not args.no_detect,
                                                  return_crops=args.save_crops):
                    bar.update(1)
                    idx = pred.key
                    t = idx / fps if fps else None
                    frames_seen += 1
                    if pred.error is not None:  # a frame the pipeline rejected: report it, keep going
                        reason = _reason(pred.error, src.name)
                        self.stats.fail(f"{src.name} frame {idx}", reason)
                        self.writer.write(error_record(src.name, reason, frame=idx, time=t))
                        continue
                    self.stats.dropped += pred.dropped
                    smoothed = tracker.update(idx, [f.box for f in pred.faces],
                                              [list(f.probabilities.values()) for f in pred.faces])
                    if not pred.faces:
                        self.writer.write(no_face_record(src.name, frame=idx, time=t, dropped=pred.dropped))
                    for i, (face, (tid, probs)) in enumerate(zip(pred.faces, smoothed, strict=True)):
                        scores = dict(zip(self.rec.classes, (float(p) for p in probs), strict=True))
                        crop = None
                        if args.save_crops and face.crop is not None:
                            cp = self._crop_path(src.rel, f"f{idx:06d}_t{tid}")
                            self._save_rgb(cp, face.crop)
                            crop = str(cp)
                        self.writer.write(face_record(src.name, i, face, frame=idx, time=t, track=tid,
                                                      scores=scores, crop=crop))
                        self.stats.faces += 1
                        face.probabilities, face.label = scores, max(scores, key=scores.__getitem__)
                    if sink is not None:
                        sink.write(draw_predictions(pred.image, pred.faces, self.rec.classes,
                                                    [tid for tid, _ in smoothed]))
        except KeyboardInterrupt:
            if src.kind != "webcam":
                raise
        finally:
            if sink is not None:
                sink.close()
        self.stats.frames += frames_seen
        if sink is not None and sink.error:
            self.stats.fail(src.name, sink.error)
        if frames_seen == 0:
            reason = f"{src.name}: no frame could be decoded"
            self.stats.fail(src.name, reason)
            self.writer.write(error_record(src.name, reason))
        elif reader.ended_early:
            reason = (f"{src.name}: video ended early: decoding stopped after {reader.frames_read} of the "
                      f"{reader.frame_count} frames its header announces (truncated or damaged file)")
            self.stats.fail(src.name, reason)
            self.writer.write(error_record(src.name, reason, frame=reader.frames_read))
        elif frames_seen and not tracker.total_tracks:
            self.stats.no_face.append(src.name)


class _VideoSink:
    """Annotated video writer, opened on the first frame (mp4v in .mp4, falling back to MJPG in .avi)."""

    def __init__(self, path: Path, fps: float | None, every: int) -> None:
        self.path, self.fps = path, (fps or 25.0) / every
        self._writer: Any = None
        self.error: str | None = None

    def write(self, rgb: Any) -> None:
        import cv2

        if self.error:
            return
        if self._writer is None:
            h, w = rgb.shape[:2]
            for fourcc, path in (("mp4v", self.path), ("MJPG", self.path.with_suffix(".avi"))):
                writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), self.fps, (w, h))
                if writer.isOpened():
                    self._writer, self.path = writer, path
                    break
            else:
                self.error = f"cannot open a video writer for {self.path} (no mp4v or MJPG encoder)"
                return
        self._writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()


def _reason(err: BaseException, name: str) -> str:
    """One-line reason that names the input exactly once."""
    msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return msg if name in msg else f"{name}: {msg}"


def _summary(stats: _Stats, skipped: list[Path], args: argparse.Namespace) -> None:
    parts = [f"{stats.images} image{'s' if stats.images != 1 else ''}"] if stats.images or not stats.videos else []
    if stats.videos:
        parts.append(f"{stats.videos} video{'s' if stats.videos != 1 else ''} ({stats.frames} frames)")
    line = f"poster-fer predict: processed {', '.join(parts)}; {stats.faces} face{'s' if stats.faces != 1 else ''}"
    if stats.no_face:
        line += f"; {len(stats.no_face)} input{'s' if len(stats.no_face) != 1 else ''} without a face"
    if stats.dropped:
        line += f"; {stats.dropped} invalid detection{'s' if stats.dropped != 1 else ''} dropped"
    line += f"; {len(stats.failures)} failed"
    print(line, file=sys.stderr)
    for name, reason in stats.failures[:_MAX_LISTED_FAILURES]:
        print(f"  failed: {reason if name in reason else f'{name}: {reason}'}", file=sys.stderr)
    if len(stats.failures) > _MAX_LISTED_FAILURES:
        print(f"  ... and {len(stats.failures) - _MAX_LISTED_FAILURES} more (see the records with status "
              "'error')", file=sys.stderr)
    if args.require_face:
        for name in stats.no_face[:_MAX_LISTED_FAILURES]:
            print(f"  no face: {name}", file=sys.stderr)
    if skipped:
        eg = ", ".join(str(p) for p in skipped[:3])
        print(f"  skipped {len(skipped)} file{'s' if len(skipped) != 1 else ''} in directories that are neither "
              f"images nor videos (e.g. {eg})", file=sys.stderr)
