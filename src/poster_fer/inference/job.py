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
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..options import check_count, check_probability
from .annotate import check_draw, draw_predictions
from .records import RecordWriter, VideoPosition, error_record, face_record, no_face_record
from .sources import CameraError, Source, VideoError, VideoReader
from .summary import VideoTimeline, summary_line
from .tracking import IoUTracker
from .video_out import AnnotatedVideo

__all__ = ["JobOptions", "JobStats", "frame_records", "image_records", "new_tracker", "reason_for", "run_job",
           "video_end_record"]

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
    rows: Counter = field(default_factory=Counter)  # records written, by status ("ok", "no_face", "error")
    inputs_done: int = 0  # inputs whose records are all written (what --resume skips next time)

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
        if self.rows:
            lines.append("  rows by status: " + ", ".join(f"{k} {self.rows[k]}" for k in sorted(self.rows)))
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
    After the last record of each input the writer's ``end_input(source, segment)`` is called: a resumable
    writer (:mod:`poster_fer.bulk`) commits the input there, so an interrupted run resumes after it.
    A webcam that cannot be opened raises :class:`~poster_fer.inference.sources.CameraError` (a setup problem,
    not a failed input: ``poster-fer predict`` exits 2 on it)."""
    job = _Job(rec, writer, options or JobOptions(), stats or JobStats())
    with job.overall(len(sources)):
        for kind, group in itertools.groupby(sources, key=lambda s: s.kind):
            if kind == "image":
                job.images(list(group))
            else:
                for src in group:
                    job.video(src)
    return job.stats


def new_tracker(ema: float, every: int) -> IoUTracker:
    """The tracker one video (or one segment of it) runs with: faces kept across short misses."""
    return IoUTracker(alpha=ema, max_age=max(10, 3 * every))


def frame_records(source: str, pred: Any, tracker: IoUTracker, classes: list[str], fps: float | None,
                  crop_for: Any = None) -> tuple[list[dict[str, Any]], list[int]]:
    """The records of one video frame (``pred`` an :class:`~poster_fer.inference.ImagePrediction` keyed by the
    frame index) and the track id of each face. Each face takes its track's smoothed probabilities (also on
    ``pred.faces``, for drawing). One function for the single process and the Ray engine, so both write the same
    rows. ``crop_for(face, suffix)`` saves a crop and returns its path (or None)."""
    idx = pred.key
    t = idx / fps if fps else None
    if pred.error is not None:  # a frame the pipeline rejected: reported, the video goes on
        return [error_record(source, reason_for(pred.error, source), frame=idx, time=t)], []
    smoothed = tracker.update(idx, [f.box for f in pred.faces], [list(f.probabilities.values()) for f in pred.faces])
    if not pred.faces:
        return [no_face_record(source, frame=idx, time=t, dropped=pred.dropped)], []
    records = []
    for i, (face, (tid, probs)) in enumerate(zip(pred.faces, smoothed, strict=True)):
        scores = dict(zip(classes, (float(p) for p in probs), strict=True))
        crop = crop_for(face, f"f{idx:06d}_t{tid}") if crop_for is not None else None
        records.append(face_record(source, i, face, VideoPosition(idx, t, tid), scores=scores, crop=crop))
        face.probabilities, face.label = scores, max(scores, key=scores.__getitem__)
    return records, [tid for tid, _ in smoothed]


def video_end_record(source: str, frames_seen: int, ended_early: bool, frames_read: int,
                     frame_count: int | None) -> dict[str, Any] | None:
    """The error record a video ends with when nothing decoded or decoding stopped short, else None."""
    if frames_seen == 0:
        return error_record(source, f"{source}: no frame could be decoded")
    if ended_early:
        return error_record(source, f"{source}: video ended early: decoding stopped after {frames_read} of the "
                            f"{frame_count} frames its header announces (truncated or damaged file)",
                            frame=frames_read)
    return None


def image_records(source: str, pred: Any, crop_for: Any = None) -> list[dict[str, Any]]:
    """The records of one image's prediction: its faces, or one no-face or error record."""
    if pred.error is not None:
        return [error_record(source, reason_for(pred.error, source))]
    if not pred.faces:
        return [no_face_record(source, dropped=pred.dropped)]
    return [face_record(source, i, face, crop=crop_for(face, f"face{i}") if crop_for is not None else None)
            for i, face in enumerate(pred.faces)]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def reason_for(err: BaseException, name: str) -> str:
    """One-line reason that names the input exactly once."""
    msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return msg if name in msg else f"{name}: {msg}"


class _Job:
    """The recognizer, the writers and the counters shared by every input of one run."""

    def __init__(self, rec: Any, writer: RecordWriter, options: JobOptions, stats: JobStats) -> None:
        self.rec, self.writer, self.opt, self.stats = rec, writer, options, stats
        self.out = options.out
        self._taken: set[Path] = set()
        self._bar: Any = None
        self._start = time.monotonic()
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)

    def _progress(self, total: int | None, unit: str, desc: str, position: int = 0) -> Any:
        from tqdm import tqdm

        disable = None if self.opt.progress is None else not self.opt.progress
        return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, disable=disable, leave=False,
                    dynamic_ncols=True, position=position)

    def overall(self, total: int) -> Any:
        """The run's bar: inputs done of ``total`` with inputs/s and the ETA (tqdm's), and faces/s."""
        self._bar = self._progress(total if total > 1 else None, "input", "inputs")
        return self._bar

    def _emit(self, record: dict[str, Any]) -> None:
        self.writer.write(record)
        self.stats.rows[record["status"]] += 1
        if record["status"] == "ok":
            self.stats.faces += 1

    def _end(self, src: Source) -> None:
        """Every record of ``src`` is written: let the writer commit it, and count it."""
        end_input = getattr(self.writer, "end_input", None)
        if end_input is not None:
            end_input(src.name, 0 if src.kind != "image" else None)
        self.stats.inputs_done += 1
        if self._bar is not None:
            self._bar.update(1)
            elapsed = max(time.monotonic() - self._start, 1e-9)
            self._bar.set_postfix_str(f"{self.stats.faces / elapsed:.1f} faces/s", refresh=False)

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

    def _crop_saver(self, rel: Path) -> Any:
        """``crop_for(face, suffix)`` for :func:`frame_records` / :func:`image_records`, or None."""
        if not self.opt.save_crops:
            return None

        def save(face: Any, suffix: str) -> str | None:
            if face.crop is None:
                return None
            assert self.out is not None
            path = self._unique(self.out / "crops" / rel.parent / f"{rel.stem}_{suffix}.png")
            self._save_rgb(path, face.crop)
            return str(path)

        return save

    def images(self, sources: list[Source]) -> None:
        for pred in self.rec.iter_predict(((src, src.path) for src in sources), detect=self.opt.detect,
                                          return_crops=self.opt.save_crops):
            src = pred.key
            self.stats.images += 1
            if pred.error is not None:
                self.stats.fail(src.name, reason_for(pred.error, src.name))
            else:
                self.stats.dropped += pred.dropped
                if not pred.faces:
                    self.stats.no_face.append(src.name)
            for record in image_records(src.name, pred, self._crop_saver(src.rel)):
                self._emit(record)
            if pred.error is None and self.out is not None:
                rel = src.rel
                suffix = rel.suffix.lower() if rel.suffix.lower() in ANNOTATED_SUFFIXES else ".png"
                try:
                    self._save_rgb(self._not_the_input(self.out / rel.with_suffix(suffix), src),
                                   draw_predictions(pred.image, pred.faces, self.rec.classes, draw=self.opt.draw))
                except OSError as err:
                    self.stats.fail(src.name, f"annotated image not written ({err})")
            self._end(src)

    def _count_stream(self, src: Source) -> None:
        if src.kind == "webcam":
            self.stats.cameras += 1
        else:
            self.stats.videos += 1

    def _open_video(self, src: Source) -> VideoReader | None:
        """The reader of ``src``; None (the failure counted and recorded, the input ended) when it cannot open."""
        try:
            return VideoReader(src.index if src.kind == "webcam" else src.path, every=self.opt.every,
                               max_frames=self.opt.max_frames, max_pixels=self.rec.max_pixels)
        except CameraError:  # no camera: the command cannot do what was asked, so no record and no count
            raise
        except VideoError as err:
            self._count_stream(src)
            self.stats.fail(src.name, str(err))
            self._emit(error_record(src.name, str(err)))
            self._end(src)
            return None

    def video(self, src: Source) -> None:
        opt = self.opt
        reader = self._open_video(src)
        if reader is None:
            return
        self._count_stream(src)
        tracker = new_tracker(opt.ema, opt.every)
        sink = None
        if self.out is not None:  # H.264 with the source's sound where PyAV is installed (inference.video_out)
            sink = AnnotatedVideo(self._not_the_input(self.out / src.rel.with_suffix(".mp4"), src), reader.fps,
                                  opt.every, audio_from=src.path)
        timeline = VideoTimeline(src.name, self.rec.classes, fps=reader.fps, every=opt.every,
                                 table=None if sink is None else sink.path.with_suffix(".frames.csv"))

        def write(record: dict[str, Any]) -> None:  # this video's records also feed its summary and table
            self._emit(record)
            timeline.add(record)

        frames_seen = 0
        bar = self._progress(reader.expected_frames, "frame", Path(src.name).name, position=1)
        crop_for = self._crop_saver(src.rel)
        try:
            with bar:
                for pred in self.rec.iter_predict(reader, detect=opt.detect, return_crops=opt.save_crops):
                    bar.update(1)
                    frames_seen += 1
                    if pred.error is None:
                        self.stats.dropped += pred.dropped
                    records, tracks = frame_records(src.name, pred, tracker, self.rec.classes, reader.fps, crop_for)
                    for record in records:
                        if record["status"] == "error":
                            self.stats.fail(f"{src.name} frame {pred.key}", record["error"])
                        write(record)
                    if sink is not None and pred.error is None:
                        sink.write(draw_predictions(pred.image, pred.faces, self.rec.classes, tracks, draw=opt.draw))
        except KeyboardInterrupt:  # Ctrl-C ends a webcam session normally; anywhere else it stops the run
            if src.kind != "webcam":
                raise
        finally:
            if sink is not None:
                sink.close()
            timeline.close()
        self._video_done(src, reader, frames_seen, tracker.total_tracks, timeline, sink, write)

    def _video_done(self, src: Source, reader: VideoReader, frames_seen: int, tracks: int,
                    timeline: VideoTimeline, sink: AnnotatedVideo | None, write: Any) -> None:
        """After the last frame: count the frames, record how the video ended (``write`` also feeds the timeline),
        keep its summary and commit the input."""
        self.stats.frames += frames_seen
        if sink is not None and sink.error:
            self.stats.fail(src.name, sink.error)
        end = video_end_record(src.name, frames_seen, reader.ended_early, reader.frames_read, reader.frame_count)
        if end is not None:
            self.stats.fail(src.name, end["error"])
            (self._emit if frames_seen == 0 else write)(end)
        elif frames_seen and not tracks:
            self.stats.no_face.append(src.name)
        if frames_seen:
            self._summarize(src, timeline, sink)
        self._end(src)

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
