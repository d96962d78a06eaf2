"""What a video amounts to: per video and per track, how long each expression lasted, and a timeline picture.

Why: per-frame records answer "what was this face doing at 12.3 s", but the usual question is "how much of the
time was this person smiling": what fer and py-feat users compute with pandas after the fact. Here it comes with
every video (``poster-fer predict clip.mp4 --out DIR``):

* ``DIR/<stem>.summary.json``: :func:`summarize_records`'s dictionary (below);
* ``DIR/<stem>.timeline.png``: per track, the probability of each class over time as stacked bands (one panel
  per track, the :data:`MAX_TIMELINE_TRACKS` longest tracks), in the annotated video's class colours;
  skipped, with one line on stderr, where matplotlib is not installed;
* ``DIR/<stem>.frames.csv``: the video's records as a table (the ``--format csv`` columns: frame, time in
  seconds, track, label, one ``p_<class>`` column per class, ...);
* one line per video at the end of the command's report on stderr.

Definitions (``<stem>`` is the annotated video's name without ``.mp4``):

* ``frames``: frames processed (with ``--every N``, every Nth); ``seconds``: ``frames`` x the time between two
  processed frames (``every / fps``), so the seconds a track was on screen, and for the video its length;
* ``shares``: fraction of a track's frames whose ``label`` was each class, every class listed. The label is the
  one in the records and drawn in the video, i.e. after the per-track moving average (``--ema``). For the whole
  video the unit is a face in a frame, so two faces in one frame count twice (a face-weighted time share);
* ``dominant``: the class with the largest share (ties broken by the mean probability); null without faces;
* ``mean_probabilities``: the mean over the same frames of each class's probability as the model gave it for
  that frame (``raw_scores``: calibrated by the model's stored temperature, before the smoothing, which only
  lags). Where the model is calibrated this is an estimate of the share that does not count a 51/49 frame as
  a whole frame of one class.

The summary's keys: ``source``, ``classes``, ``fps``, ``every``, ``frame_interval`` (seconds between two processed
frames; null when the video gives no frame rate), ``frames``, ``seconds``, ``frames_with_face``, ``frames_failed``,
``face_frames``, ``dominant``, ``shares``, ``mean_probabilities`` and ``tracks``: one entry per track, longest
first, with ``track``, ``frames``, ``seconds``, ``first_frame``, ``last_frame``, ``start``, ``end`` (seconds),
``dominant``, ``shares`` and ``mean_probabilities``.
"""

from __future__ import annotations

import json
import math
import sys
from array import array
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from .records import RecordWriter

__all__ = ["MAX_TIMELINE_TRACKS", "VideoTimeline", "plot_timeline", "summarize_records", "summary_line"]

#: Panels in the timeline picture: the longest tracks (short ones are mostly passers-by and false detections).
MAX_TIMELINE_TRACKS = 6

_warned: set[str] = set()


class VideoTimeline:
    """One video's records, collected as they are written (compactly: a few numbers per face and frame).

    ``add(record)`` takes every record of the video in order (face, no-face and error records, as
    :mod:`~poster_fer.inference.records` makes them); :meth:`summary` gives the numbers; :meth:`save` writes the
    summary JSON and the timeline picture. With ``table`` the records also go, as they come, to that CSV file
    (a problem writing it ends the table and is kept in ``error``, never the labelling).
    """

    def __init__(self, source: str, classes: Sequence[str], fps: float | None = None, every: int | None = None,
                 table: Path | None = None) -> None:
        self.source, self.classes = source, list(classes)
        self.fps = float(fps) if fps and fps > 0 and math.isfinite(fps) else None
        self.every = every
        self.table, self.error = table, None
        self._table_stream: TextIO | None = None
        self._table_writer: RecordWriter | None = None
        self._frames: set[int] = set()  # processed frames (ok or no face)
        self._failed: set[int] = set()
        self._face_frames: set[int] = set()
        self._frame = array("q")  # per face record
        self._time = array("d")
        self._track = array("q")
        self._label = array("h")
        self._smooth = array("f")  # len(classes) per face record
        self._raw = array("f")
        self._times: dict[int, float] = {}  # frame -> seconds, from the records

    # -- collecting -------------------------------------------------------------------------------------------

    def add(self, record: Mapping[str, Any]) -> None:
        """Take one record of this video."""
        self._tabulate(record)
        frame, status = record.get("frame"), record.get("status")
        if frame is None:
            return
        frame = int(frame)
        if record.get("time") is not None:
            self._times[frame] = float(record["time"])
        if status == "error":
            self._failed.add(frame)
            return
        self._frames.add(frame)
        if status != "ok":
            return
        scores = record.get("scores") or {}
        raw = record.get("raw_scores") or scores
        self._face_frames.add(frame)
        self._frame.append(frame)
        self._time.append(float("nan") if record.get("time") is None else float(record["time"]))
        self._track.append(-1 if record.get("track") is None else int(record["track"]))
        label = record.get("label")
        self._label.append(self.classes.index(label) if label in self.classes else -1)
        self._smooth.extend(float(scores.get(c, 0.0)) for c in self.classes)
        self._raw.extend(float(raw.get(c, 0.0)) for c in self.classes)

    def _tabulate(self, record: Mapping[str, Any]) -> None:
        if self.table is None or self.error:
            return
        try:
            if self._table_writer is None:
                self._table_stream = open(self.table, "w", encoding="utf-8", newline="")  # noqa: SIM115
                self._table_writer = RecordWriter(self._table_stream, "csv", self.classes, flush=False)
            self._table_writer.write(record)
        except OSError as err:
            self.error = f"{self.table} not written ({err.strerror or err})"
            self.close()

    def close(self) -> None:
        """Finish the CSV table (idempotent)."""
        stream, self._table_stream, self._table_writer = self._table_stream, None, None
        if stream is not None:
            try:
                stream.close()
            except OSError as err:
                self.error = self.error or f"{self.table} not written ({err.strerror or err})"

    # -- numbers ----------------------------------------------------------------------------------------------

    @property
    def frame_step(self) -> int:
        """Frames between two processed frames: ``every`` when given, else the commonest gap in the records."""
        if self.every:
            return int(self.every)
        seen = sorted(self._frames | self._failed)
        gaps = Counter(b - a for a, b in zip(seen, seen[1:], strict=False) if b > a)
        return gaps.most_common(1)[0][0] if gaps else 1

    @property
    def frame_rate(self) -> float | None:
        """Frames per second of the source: ``fps`` when given, else read off the records' times."""
        if self.fps:
            return self.fps
        rates = [f / t for f, t in self._times.items() if f > 0 and t > 0]
        return float(np.median(rates)) if rates else None

    @property
    def frame_interval(self) -> float | None:
        """Seconds between two processed frames (None when the frame rate is unknown)."""
        rate = self.frame_rate
        return self.frame_step / rate if rate else None

    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        k = len(self.classes)

        def view(buf: array, dtype: Any) -> np.ndarray:  # a copy: a live view would stop the array growing
            return np.frombuffer(buf, dtype).copy() if len(buf) else np.zeros(0, dtype)

        return (view(self._frame, np.int64), view(self._time, np.float64), view(self._track, np.int64),
                view(self._label, np.int16), view(self._smooth, np.float32).reshape(-1, k).astype(np.float64),
                view(self._raw, np.float32).reshape(-1, k).astype(np.float64))

    def _group(self, labels: np.ndarray, raw: np.ndarray, n_frames: int) -> dict[str, Any]:
        interval = self.frame_interval
        counts = np.bincount(labels[labels >= 0], minlength=len(self.classes)).astype(np.float64)
        total = counts.sum()
        shares = counts / total if total else counts
        means = raw.mean(axis=0) if len(raw) else np.zeros(len(self.classes))
        dominant = None
        if total:  # the largest share, ties broken by the mean probability, then by class order
            dominant = self.classes[max(range(len(self.classes)), key=lambda i: (shares[i], means[i], -i))]
        return {"frames": n_frames, "seconds": None if interval is None else round(n_frames * interval, 3),
                "dominant": dominant,
                "shares": {c: round(float(s), 4) for c, s in zip(self.classes, shares, strict=True)},
                "mean_probabilities": {c: round(float(m), 4) for c, m in zip(self.classes, means, strict=True)}}

    def summary(self) -> dict[str, Any]:
        """Per video and per track: frames, seconds, shares, dominant class, mean probabilities (module doc)."""
        frames, _, tracks, labels, _, raw = self._arrays()
        interval = self.frame_interval
        video = self._group(labels, raw, len(self._frames))
        out: dict[str, Any] = {
            "source": self.source, "classes": self.classes,
            "fps": None if self.frame_rate is None else round(self.frame_rate, 4), "every": self.frame_step,
            "frame_interval": None if interval is None else round(interval, 6),
            "frames": video.pop("frames"), "seconds": video.pop("seconds"),
            "frames_with_face": len(self._face_frames), "frames_failed": len(self._failed),
            "face_frames": len(labels), **video, "tracks": []}
        for tid in self._track_order(tracks):
            sel = tracks == tid
            entry = self._group(labels[sel], raw[sel], int(sel.sum()))
            first, last = int(frames[sel].min()), int(frames[sel].max())
            rate = self.frame_rate
            span = {"first_frame": first, "last_frame": last,
                    "start": None if rate is None else round(first / rate, 3),
                    "end": None if rate is None or interval is None else round(last / rate + interval, 3)}
            out["tracks"].append({"track": None if tid < 0 else int(tid), **entry, **span})
        return out

    @staticmethod
    def _track_order(tracks: np.ndarray) -> list[int]:
        """Track ids, longest first (then by id)."""
        ids, counts = np.unique(tracks, return_counts=True)
        return [int(t) for t, _ in sorted(zip(ids, counts, strict=True), key=lambda tc: (-tc[1], tc[0]))]

    # -- files ------------------------------------------------------------------------------------------------

    def save(self, video_path: Path, summary: Mapping[str, Any] | None = None) -> list[Path]:
        """Write ``<stem>.summary.json`` and ``<stem>.timeline.png`` beside ``video_path``; return the paths written.

        The picture is skipped (one line on stderr, once) without matplotlib, and when no face was found.
        """
        summary = self.summary() if summary is None else summary
        written = [Path(video_path).with_suffix(".summary.json")]
        written[0].write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        if summary["face_frames"]:
            png = Path(video_path).with_suffix(".timeline.png")
            if plot_timeline(self, png, summary):
                written.append(png)
        return written

    def track_series(self, track: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(frames, x, probabilities)`` of one track (smoothed, as in the records), x in seconds when the frame
        rate is known, else in frames."""
        frames, _, tracks, _, smooth, _ = self._arrays()
        sel = tracks == track
        order = np.argsort(frames[sel], kind="stable")
        f = frames[sel][order]
        rate = self.frame_rate
        x = f / rate if rate else f.astype(np.float64)
        return f, x, smooth[sel][order]


def summarize_records(records: Iterable[Mapping[str, Any]], classes: Sequence[str], fps: float | None = None,
                      every: int | None = None, source: str | None = None) -> dict[str, Any]:
    """The summary (see the module doc) of one video's records, e.g. read back from a ``.jsonl`` file.

    ``fps`` and ``every`` are read off the records' frames and times when not given.
    """
    records = list(records)
    if source is None:
        source = next((str(r["source"]) for r in records if r.get("source") is not None), "")
    timeline = VideoTimeline(source, classes, fps=fps, every=every)
    for r in records:
        timeline.add(r)
    return timeline.summary()


def summary_line(summary: Mapping[str, Any], top: int = 4) -> str:
    """One line for a person: ``clip.mp4: happiness 62%, neutral 31%, ... (dominant happiness; 12.4 s, 2 tracks)``."""
    seconds = summary.get("seconds")
    length = f"{summary['frames']} frames" if seconds is None else f"{seconds:.1f} s"
    if not summary.get("face_frames"):
        return f"{summary['source']}: no face found ({length})"
    ranked = sorted(((s, c) for c, s in summary["shares"].items() if s > 0), reverse=True)
    parts = [f"{c} {_pct(s)}" for s, c in ranked[:top]]
    if len(ranked) > top:
        parts.append(f"other {_pct(sum(s for s, _ in ranked[top:]))}")
    n = len(summary["tracks"])
    return (f"{summary['source']}: {', '.join(parts)} (dominant {summary['dominant']}; {length}, "
            f"{n} track{'s' if n != 1 else ''})")


def _pct(share: float) -> str:
    return f"{100 * share:.0f}%" if share >= 0.01 or share == 0 else "<1%"


def _matplotlib() -> tuple[Any, Any, Any] | None:
    """matplotlib's (FigureCanvasAgg, Figure, Patch); None, saying so on stderr once per run, when it is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError:
        if "matplotlib" not in _warned:
            _warned.add("matplotlib")
            print("poster-fer: matplotlib is not installed: no timeline pictures (pip install matplotlib, or "
                  "poster-fer[analysis])", file=sys.stderr)
        return None
    return FigureCanvasAgg, Figure, Patch


def plot_timeline(timeline: VideoTimeline, path: Path, summary: Mapping[str, Any] | None = None) -> bool:
    """Draw the expression-over-time picture (module doc) to ``path``; False (one line on stderr, once per run)
    when matplotlib is missing. Uses matplotlib's object API (no pyplot): no GUI backend, no global state."""
    mpl = _matplotlib()
    if mpl is None:
        return False
    canvas, figure, patch = mpl
    from .annotate import class_colour

    summary = timeline.summary() if summary is None else summary
    tracks = [t for t in summary["tracks"] if t["frames"]][:MAX_TIMELINE_TRACKS]
    tracks.sort(key=lambda t: (t["first_frame"], t["track"] if t["track"] is not None else -1))
    rate = timeline.frame_rate
    step = timeline.frame_interval if rate else float(timeline.frame_step)
    colours = [tuple(v / 255 for v in class_colour(i)) for i in range(len(timeline.classes))]
    first, last = (min(timeline._frames), max(timeline._frames)) if timeline._frames else (0, 0)
    x_range = (first / rate if rate else first, (last / rate if rate else last) + step)

    fig = figure(figsize=(9, 0.75 + 1.25 * len(tracks)), dpi=100)
    canvas(fig)
    axes = fig.subplots(len(tracks), 1, sharex=True, squeeze=False)[:, 0]
    for ax, track in zip(axes, tracks, strict=True):
        _draw_track(ax, timeline, track, colours, step, x_range)
    axes[-1].set_xlabel("seconds" if rate else "frame", fontsize=8)
    shown = len(tracks)
    more = len(summary["tracks"]) - shown
    title = f"{Path(str(summary['source'])).name}: expression probabilities over time"
    if more > 0:
        title += f" (the {shown} longest of {len(summary['tracks'])} tracks)"
    fig.suptitle(title, fontsize=9, x=0.01, ha="left")
    fig.legend(handles=[patch(color=c, label=n) for c, n in zip(colours, timeline.classes, strict=True)],
               loc="upper right", ncol=min(len(colours), 8), fontsize=7, frameon=False, handlelength=1,
               columnspacing=0.8, bbox_to_anchor=(0.995, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()), h_pad=0.6)
    fig.savefig(path, format="png")
    return True


def _draw_track(ax: Any, timeline: VideoTimeline, track: Mapping[str, Any], colours: list[tuple[float, ...]],
                step: float, x_range: tuple[float, float]) -> None:
    """One track's panel: its class probabilities stacked over time, titled with its dominant expression."""
    tid = -1 if track["track"] is None else track["track"]
    frames, x, probs = timeline.track_series(tid)
    xs, ys = _stepped(frames, x, probs, timeline.frame_step, step)
    cum = np.nancumsum(ys, axis=1)
    cum[np.isnan(ys).any(axis=1)] = np.nan
    lower = np.zeros(len(xs))
    lower[np.isnan(cum[:, 0])] = np.nan
    for k, colour in enumerate(colours):
        ax.fill_between(xs, lower, cum[:, k], step="post", color=colour, linewidth=0)
        lower = cum[:, k]
    ax.set_ylim(0, 1)
    ax.set_xlim(*x_range)
    ax.set_yticks([0, 0.5, 1])
    ax.tick_params(labelsize=7)
    name = "face" if track["track"] is None else f"track {track['track']}"
    share = track["shares"].get(track["dominant"], 0.0)
    length = f"{track['seconds']:.1f} s" if track["seconds"] is not None else f"{track['frames']} frames"
    ax.set_title(f"{name}: {track['dominant']} {_pct(share)} of {length}", fontsize=8, loc="left", pad=2)


def _stepped(frames: np.ndarray, x: np.ndarray, probs: np.ndarray, gap: int,
             step: float) -> tuple[np.ndarray, np.ndarray]:
    """Points for a ``step="post"`` band: each frame holds its value for one frame interval; a run of frames
    ends with a closing point, and a NaN row breaks the band where the track was not seen."""
    xs: list[float] = []
    ys: list[np.ndarray] = []
    nan = np.full(probs.shape[1], np.nan)
    for i, (f, xv, p) in enumerate(zip(frames, x, probs, strict=True)):
        xs.append(float(xv))
        ys.append(p)
        last = i == len(frames) - 1
        if last or frames[i + 1] - f > gap:
            xs.append(float(xv) + step)
            ys.append(p)
            if not last:
                xs.append(float(xv) + step)
                ys.append(nan)
    return np.asarray(xs), np.vstack(ys)
