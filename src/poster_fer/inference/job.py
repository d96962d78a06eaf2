"""Labelling many inputs at once: images, videos and webcams to records, annotated files and crops.

Why here and not in the command: ``poster-fer predict`` only parses its arguments; a script or a notebook that
labels a folder gets the same records, the same per-input error handling (a bad file is reported and the run
goes on, never silently lost) and the same counts by calling :func:`run_job`::

    rec = Recognizer.from_checkpoint(None)
    sources, skipped = collect_sources(["photos/"])
    stats = run_job(rec, sources, RecordWriter(sys.stdout, "jsonl", rec.classes), JobOptions(out=Path("out")))
    print("\\n".join(stats.report(skipped)))
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..options import check_count, check_probability
from .annotate import check_draw, draw_predictions
from .records import RecordWriter, error_record, face_record, no_face_record
from .sources import CameraError, Source, VideoError, VideoReader
from .summary import VideoTimeline, summary_line
from .tracking import IoUTracker
from .video_out import AnnotatedVideo

__all__ = ["JobOptions", "JobStats", "run_job"]

MAX_LISTED = 20  # failures (and faceless inputs) named one by one in the report; the rest are counted
ANNOTATED_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass
class JobOptions:
    """What to do with each input besides writing its records."""

    out: Path | None = None  # annotated images/videos (and crops) go here
    save_crops: bool = False  # also save every aligned crop under ``out/crops``
    detect: bool = True  # False: every input is already an aligned face crop
    every: int = 1  # videos: process every Nth frame
    max_frames: int | None = None  # videos: stop after this many frames
    ema: float = 0.5  # videos: weight of the newest frame in each track's moving average
    progress: bool | None = None  # None: a progress bar only when stderr is a terminal
    draw: str = "auto"  # annotated copies: auto, label, bars or none (see inference.annotate.DRAW_MODES)

    def __post_init__(self) -> None:
        self.every = check_count("every", self.every)
        self.max_frames = check_count("max_frames", self.max_frames, optional=True)
        self.ema = check_probability("ema", self.ema, high_open=False)
        self.draw = check_draw(self.draw)
        if self.save_crops and self.out is None:
            raise ValueError("save_crops needs an output folder")


@dataclass
class JobStats:
    """Counts of one job, and every input that failed or had no face, by name."""

    images: int = 0
    videos: int = 0
    cameras: int = 0  # webcams read (counted once opened; one that cannot be opened raises CameraError)
    frames: int = 0
    faces: int = 0
    dropped: int = 0  # detections thrown out as impossible faces (non-finite, empty or off-image boxes)
    no_face: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    summaries: list[dict[str, Any]] = field(default_factory=list)  # per video, inference.summary's dictionary

    def fail(self, name: str, reason: str) -> None:
        self.failures.append((name, reason))

    def report(self, skipped: list[Path] | None = None, list_no_face: bool = False) -> list[str]:
        """The summary a person reads after the run: one count line, then what failed (and was skipped)."""
        streams = [_plural(n, word) for n, word in ((self.videos, "video"), (self.cameras, "camera")) if n]
        parts = [_plural(self.images, "image")] if self.images or not streams else []
        if streams:
            parts.append(f"{', '.join(streams)} ({self.frames} frames)")
        line = f"processed {', '.join(parts)}; {_plural(self.faces, 'face')}"
        if self.no_face:
            line += f"; {_plural(len(self.no_face), 'input')} without a face"
        if self.dropped:
            line += f"; {_plural(self.dropped, 'invalid detection')} dropped"
        lines = [line + f"; {len(self.failures)} failed"]
        lines += [f"  failed: {reason if name in reason else f'{name}: {reason}'}"
                  for name, reason in self.failures[:MAX_LISTED]]
        if len(self.failures) > MAX_LISTED:
            lines.append(f"  ... and {len(self.failures) - MAX_LISTED} more (see the records with status 'error')")
        if list_no_face:
            lines += [f"  no face: {name}" for name in self.no_face[:MAX_LISTED]]
        if skipped:
            eg = ", ".join(str(p) for p in skipped[:3])
            lines.append(f"  skipped {_plural(len(skipped), 'file')} in directories that are neither images nor "
                         f"videos (e.g. {eg})")
        lines += [f"  {summary_line(s)}" for s in self.summaries]  # what each video amounts to, last
        return lines


def run_job(rec: Any, sources: list[Source], writer: RecordWriter, options: JobOptions | None = None,
            stats: JobStats | None = None) -> JobStats:
    """Label every source with ``rec`` (a :class:`~poster_fer.inference.Recognizer`), writing one record per face
    (or per faceless / failed input) to ``writer``. Consecutive images are batched together; each video runs
    with its own tracker. ``stats`` may be passed in so a caller that is interrupted still holds the counts.
    A webcam that cannot be opened raises :class:`~poster_fer.inference.sources.CameraError` (a setup problem,
    not a failed input: ``poster-fer predict`` exits 2 on it)."""
    job = _Job(rec, writer, options or JobOptions(), stats or JobStats())
    for kind, group in itertools.groupby(sources, key=lambda s: s.kind):
        if kind == "image":
            job.images(list(group))
        else:
            for src in group:
                job.video(src)
    return job.stats


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def _reason(err: BaseException, name: str) -> str:
    """One-line reason that names the input exactly once."""
    msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return msg if name in msg else f"{name}: {msg}"


class _Job:
    """The recognizer, the writers and the counters shared by every input of one run."""

    def __init__(self, rec: Any, writer: RecordWriter, options: JobOptions, stats: JobStats) -> None:
        self.rec, self.writer, self.opt, self.stats = rec, writer, options, stats
        self.out = options.out
        self._taken: set[Path] = set()
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)

    def _progress(self, total: int | None, unit: str, desc: str) -> Any:
        from tqdm import tqdm

        disable = None if self.opt.progress is None else not self.opt.progress
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

    def _not_the_input(self, path: Path, src: Source, tag: str = "_annotated") -> Path:
        """Never overwrite the input file itself (``--out`` pointed at the input folder)."""
        if src.path is not None and path.resolve() == Path(src.path).resolve():
            path = path.with_name(f"{path.stem}{tag}{path.suffix}")
        return self._unique(path)

    @staticmethod
    def _save_rgb(path: Path, rgb: Any) -> None:
        import cv2

        if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
            raise OSError(f"cannot write {path}")

    def _save_crop(self, face: Any, rel: Path, suffix: str) -> str | None:
        if not self.opt.save_crops or face.crop is None:
            return None
        assert self.out is not None
        path = self._unique(self.out / "crops" / rel.parent / f"{rel.stem}_{suffix}.png")
        self._save_rgb(path, face.crop)
        return str(path)

    def images(self, sources: list[Source]) -> None:
        bar = self._progress(len(sources) if len(sources) > 1 else None, "img", "images")
        with bar:
            for pred in self.rec.iter_predict(((src, src.path) for src in sources), detect=self.opt.detect,
                                              return_crops=self.opt.save_crops):
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
                    crop = self._save_crop(face, src.rel, f"face{i}")
                    self.writer.write(face_record(src.name, i, face, crop=crop))
                    self.stats.faces += 1
                if self.out is not None:
                    rel = src.rel
                    suffix = rel.suffix.lower() if rel.suffix.lower() in ANNOTATED_SUFFIXES else ".png"
                    try:
                        self._save_rgb(self._not_the_input(self.out / rel.with_suffix(suffix), src),
                                       draw_predictions(pred.image, pred.faces, self.rec.classes,
                                                        draw=self.opt.draw))
                    except OSError as err:
                        self.stats.fail(src.name, f"annotated image not written ({err})")

    def _count_stream(self, src: Source) -> None:
        if src.kind == "webcam":
            self.stats.cameras += 1
        else:
            self.stats.videos += 1

    def video(self, src: Source) -> None:
        opt = self.opt
        try:
            reader = VideoReader(src.index if src.kind == "webcam" else src.path, every=opt.every,
                                 max_frames=opt.max_frames, max_pixels=self.rec.max_pixels)
        except CameraError:  # no camera: the command cannot do what was asked, so no record and no count
            raise
        except VideoError as err:
            self._count_stream(src)
            self.stats.fail(src.name, str(err))
            self.writer.write(error_record(src.name, str(err)))
            return
        self._count_stream(src)
        tracker = IoUTracker(alpha=opt.ema, max_age=max(10, 3 * opt.every))
        sink = None
        if self.out is not None:  # H.264 with the source's sound where PyAV is installed (inference.video_out)
            sink = AnnotatedVideo(self._not_the_input(self.out / src.rel.with_suffix(".mp4"), src), reader.fps,
                                  opt.every, audio_from=src.path)
        timeline = VideoTimeline(src.name, self.rec.classes, fps=reader.fps, every=opt.every,
                                 table=None if sink is None else sink.path.with_suffix(".frames.csv"))

        def write(record: dict[str, Any]) -> None:  # this video's records also feed its summary and table
            self.writer.write(record)
            timeline.add(record)

        fps = reader.fps
        frames_seen = 0
        bar = self._progress(reader.expected_frames, "frame", Path(src.name).name)
        try:
            with bar:
                for pred in self.rec.iter_predict(reader, detect=opt.detect, return_crops=opt.save_crops):
                    bar.update(1)
                    idx = pred.key
                    t = idx / fps if fps else None
                    frames_seen += 1
                    if pred.error is not None:  # a frame the pipeline rejected: report it, keep going
                        reason = _reason(pred.error, src.name)
                        self.stats.fail(f"{src.name} frame {idx}", reason)
                        write(error_record(src.name, reason, frame=idx, time=t))
                        continue
                    self.stats.dropped += pred.dropped
                    smoothed = tracker.update(idx, [f.box for f in pred.faces],
                                              [list(f.probabilities.values()) for f in pred.faces])
                    if not pred.faces:
                        write(no_face_record(src.name, frame=idx, time=t, dropped=pred.dropped))
                    for i, (face, (tid, probs)) in enumerate(zip(pred.faces, smoothed, strict=True)):
                        scores = dict(zip(self.rec.classes, (float(p) for p in probs), strict=True))
                        crop = self._save_crop(face, src.rel, f"f{idx:06d}_t{tid}")
                        write(face_record(src.name, i, face, frame=idx, time=t, track=tid, scores=scores,
                                          crop=crop))
                        self.stats.faces += 1
                        face.probabilities, face.label = scores, max(scores, key=scores.__getitem__)
                    if sink is not None:
                        sink.write(draw_predictions(pred.image, pred.faces, self.rec.classes,
                                                    [tid for tid, _ in smoothed], draw=opt.draw))
        except KeyboardInterrupt:  # Ctrl-C ends a webcam session normally; anywhere else it stops the run
            if src.kind != "webcam":
                raise
        finally:
            if sink is not None:
                sink.close()
            timeline.close()
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
            write(error_record(src.name, reason, frame=reader.frames_read))
        elif frames_seen and not tracker.total_tracks:
            self.stats.no_face.append(src.name)
        if frames_seen:
            self._summarize(src, timeline, sink)

    def _summarize(self, src: Source, timeline: VideoTimeline, sink: AnnotatedVideo | None) -> None:
        """Keep the video's summary for the report; with ``--out`` write it and its timeline beside the video."""
        summary = timeline.summary()
        self.stats.summaries.append(summary)
        if timeline.error:
            self.stats.fail(src.name, timeline.error)
        if sink is not None:
            try:
                timeline.save(sink.path, summary)
            except OSError as err:
                self.stats.fail(src.name, f"summary not written ({err.strerror or err})")
