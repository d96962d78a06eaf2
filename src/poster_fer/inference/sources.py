"""What ``poster-fer predict`` reads: image files, folders of them, video files and webcams.

Files are classified by extension; directories are walked recursively in sorted order, and files in them
that are neither images nor videos are counted (and reported) rather than silently passed over. Videos are
read with OpenCV; a file whose decoder stops before the frame count its header announces is flagged as ended
early, so truncated uploads do not pass as short clips.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..faces.io import DEFAULT_MAX_DECODED_BYTES, ImageLoadError, check_decoded_size

__all__ = ["IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS", "CameraError", "Source", "VideoError", "VideoReader",
           "camera_problem", "collect_sources"]

IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".dib", ".gif", ".webp", ".tif", ".tiff",
    ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".jp2", ".ico",
})
VIDEO_EXTENSIONS = frozenset({
    ".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".wmv", ".flv", ".mpg", ".mpeg", ".3gp", ".ts", ".mts",
    ".m2ts", ".ogv", ".mjpeg", ".mjpg",
})


class VideoError(ValueError):
    """A video (or webcam) cannot be opened or read; the message names it and the problem."""


class CameraError(VideoError):
    """A camera cannot be opened. A setup problem rather than a bad input: the message says what to check."""


#: Where Linux (V4L2) puts cameras; OpenCV's camera index N is ``/dev/videoN``.
VIDEO_DEVICE_DIR = Path("/dev")


def _video_devices(root: Path) -> list[int]:
    """Indices of the ``video<N>`` device nodes under ``root``, sorted."""
    try:
        names = os.listdir(root)
    except OSError:
        return []
    return sorted(int(m.group(1)) for n in names if (m := re.fullmatch(r"video(\d+)", n)))


def camera_problem(index: int, root: Path | None = None) -> str | None:
    """Why camera ``index`` cannot work, when that shows without opening it; None when it may.

    On Linux the device nodes tell the three usual causes apart: no camera at all (none attached, or a
    container started without ``--device``), another index, or missing permissions. Elsewhere (macOS, Windows)
    there is nothing to look at before opening, so None. ``root`` replaces ``/dev`` (tests).
    """
    if root is None:
        if not sys.platform.startswith("linux"):
            return None
        root = VIDEO_DEVICE_DIR
    name = f"webcam:{index}"
    found = _video_devices(root)
    if not found:
        return (f"{name}: no camera found: there are no video devices ({root / 'video*'}) on this machine (none "
                f"attached, or a container or VM started without access to one, e.g. docker run --device "
                f"/dev/video0)")
    device = root / f"video{index}"
    if index not in found:
        listed = ", ".join(map(str, found))
        return (f"{name}: no camera {index}: {device} does not exist; video devices here: {listed} "
                f"(try --webcam {found[0]})")
    if not os.access(device, os.R_OK | os.W_OK):
        return (f"{name}: permission denied on {device}: add your user to its group (usually 'video': "
                f"sudo usermod -aG video $USER, then log in again)")
    return None


def _camera_hint(index: int) -> str:
    """What to check when a camera that seemed present does not open."""
    if sys.platform.startswith("linux"):
        return (f"/dev/video{index} exists but did not open: another program may be using it, or it is not a "
                f"capture device (many cameras add a metadata-only node: try the next or previous index)")
    if sys.platform == "darwin":
        return ("no camera at that index, or camera access is not allowed for this terminal (System Settings > "
                "Privacy & Security > Camera)")
    return "no camera at that index, another program is using it, or camera access is turned off in the settings"


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    """Silence OpenCV's own log lines (``[ WARN:0] ... can't open camera by index``) for the block: the
    :class:`CameraError` raised afterwards says the same once, with what to do."""
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging is None:  # an OpenCV build without the logging module: nothing to silence with
        yield
        return
    previous = logging.getLogLevel()
    logging.setLogLevel(logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        logging.setLogLevel(previous)


@dataclass
class Source:
    """One input: ``kind`` is "image", "video" or "webcam"; ``rel`` is its name below ``--out``."""

    kind: str
    name: str
    path: Path | None = None
    rel: Path = field(default_factory=lambda: Path("input"))
    index: int | None = None  # webcam index


def _kind(path: Path) -> str | None:
    ext = path.suffix.lower()
    if ext in IMAGE_EXTENSIONS:
        return "image"
    if ext in VIDEO_EXTENSIONS:
        return "video"
    return None


def collect_sources(
    paths: Sequence[str | os.PathLike[str]], webcam: int | None = None
) -> tuple[list[Source], list[Path]]:
    """Expand the command-line inputs into sources, in order; also return directory files that were skipped.

    A file named explicitly is a video if its extension says so and an image otherwise (so an unsupported
    or missing file becomes an image that fails to load, with the reason). Hidden files and folders inside
    directories are ignored.
    """
    sources: list[Source] = []
    skipped: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            base = p.resolve().name or "root"
            for f in _walk(p):
                kind = _kind(f)
                if kind is None:
                    skipped.append(f)
                    continue
                sources.append(Source(kind, str(f), f, Path(base) / f.relative_to(p)))
        else:
            kind = "video" if _kind(p) == "video" else "image"
            sources.append(Source(kind, str(p), p, Path(p.name)))
    if webcam is not None:
        sources.append(Source("webcam", f"webcam:{webcam}", None, Path(f"webcam{webcam}"), index=int(webcam)))
    return sources, skipped


def _walk(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


class VideoReader:
    """Frames of a video file or webcam as RGB uint8 arrays, every ``every``-th one, with their indices.

    A camera (``source`` an int) that cannot be opened raises :class:`CameraError` saying why when it can tell
    (:func:`camera_problem`); OpenCV's own warnings are silenced while it tries.

    ``frame_count`` is what the container announces (None for webcams and streams that do not say);
    after iterating, ``frames_read`` is how many frames were decoded and :attr:`ended_early` whether that
    fell short of the announcement.
    """

    def __init__(self, source: str | os.PathLike[str] | int, every: int = 1, max_frames: int | None = None,
                 max_pixels: int | None = None, max_bytes: int | None = DEFAULT_MAX_DECODED_BYTES,
                 start: int = 0, stop: int | None = None) -> None:
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        if start < 0 or (stop is not None and stop < start):
            raise ValueError(f"bad frame range [{start}, {stop})")
        # A frame range [start, stop) reads one segment of a file (the Ray engine spreads a long video that way);
        # indices stay those of the whole video, and `every` counts from its first frame.
        self.start, self.stop = int(start), stop
        # FFmpeg prints its own decoder complaints straight to stderr; the per-file error below replaces them.
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
        self.name = f"webcam:{source}" if isinstance(source, int) else str(source)
        if not isinstance(source, int) and not Path(source).is_file():
            raise VideoError(f"{self.name}: no such file")
        self.every = int(every)
        self.max_frames = max_frames
        if isinstance(source, int):
            problem = camera_problem(source)
            if problem:
                raise CameraError(problem)
            with _quiet_opencv():
                self._cap = cv2.VideoCapture(source)
                opened = self._cap.isOpened()
            if not opened:
                raise CameraError(f"{self.name}: cannot open the camera ({_camera_hint(source)})")
        else:
            self._cap = cv2.VideoCapture(str(source))
            if not self._cap.isOpened():
                raise VideoError(f"{self.name}: cannot open it as a video (unsupported format, damaged or truncated "
                                 f"file)")
        self.fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0) or None
        count = self._cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.frame_count = int(count) if count and 0 < count < 1e9 else None
        self.width = int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        try:  # the same pixel limit and byte budget as images, from the container's header
            check_decoded_size(f"{self.name}: frames", "RGB", self.width, self.height, max_pixels, max_bytes)
        except ImageLoadError as err:
            self.close()
            raise VideoError(str(err)) from None
        self.frames_read = 0
        self._stopped_by_limit = False

    @property
    def expected_frames(self) -> int | None:
        """Frames the caller will receive (after ``every`` and ``max_frames``), when known (whole videos)."""
        n = self.frame_count
        if n is None:
            return self.max_frames
        if self.max_frames is not None:
            n = min(n, self.max_frames * self.every)
        return (n + self.every - 1) // self.every

    @property
    def ended_early(self) -> bool:
        """Decoding stopped clearly before the announced frame count (truncated or damaged file)."""
        if self.frame_count is None or self._stopped_by_limit:
            return False
        tolerance = max(1, round(0.01 * self.frame_count))  # some containers only estimate the count
        return self.frames_read < self.frame_count - tolerance

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(frame index, rgb)``; the index counts every decoded frame, kept or not."""
        kept = 0
        if self.start:
            # OpenCV's FFmpeg reader seeks to the key frame before and decodes forward to the exact frame
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, self.start)
            self.frames_read = self.start
        try:
            while True:
                if (self.max_frames is not None and kept >= self.max_frames) or (
                        self.stop is not None and self.frames_read >= self.stop):
                    self._stopped_by_limit = True
                    return
                keep = self.frames_read % self.every == 0
                if keep:
                    ok, bgr = self._cap.read()
                else:
                    ok, bgr = self._cap.grab(), None
                if not ok:
                    return
                index = self.frames_read
                self.frames_read += 1
                if keep and bgr is not None:
                    kept += 1
                    yield index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        finally:
            self.close()

    def close(self) -> None:
        self._cap.release()
