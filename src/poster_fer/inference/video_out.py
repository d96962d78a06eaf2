"""Annotated videos that play everywhere: H.264 in MP4 (yuv420p, moov atom first) with the source's audio.

Why this module: OpenCV's ``VideoWriter`` in the ``opencv-python`` wheels only has MPEG-4 Part 2 ("mp4v", fourcc
FMP4) for ``.mp4``, never writes audio, and puts the index at the end of the file. Browsers (Chromium, Firefox,
Safari) do not decode MPEG-4 Part 2, so such a file cannot be opened in a web page or a chat; Chromium plays its
audio track only, or refuses the file outright (``DEMUXER_ERROR_NO_SUPPORTED_STREAMS``) when there is none.

So the annotated video is written with PyAV (``pip install av``; 14 or later, for
``OutputContainer.add_stream_from_template``), whose PyPI wheels bundle FFmpeg built with libx264:

* video: H.264 from **libx264** (CRF 20, preset veryfast: sharp captions at a modest size, encoding far
  cheaper than the model's work per frame), pixel format yuv420p (the only 4:2:0 layout every browser and
  phone decodes), ``movflags=+faststart`` so the ``moov`` index sits before the media data and playback can
  start before the whole file has arrived. Where an FFmpeg build has no libx264 (e.g. an LGPL build of PyAV
  from another channel) the next H.264 encoder found is used: libopenh264, then the platform ones
  (h264_videotoolbox on macOS, h264_mf on Windows), at a bit rate in proportion to the frame size;
* odd frame sizes: yuv420p stores colour at half resolution, so H.264 needs even width and height. Frames are
  **padded** by one row/column repeating the edge pixels (never cropped: a crop would cut the annotation at
  the border); the padded line is invisible;
* audio: the source's first audio stream is **copied** packet for packet when it is AAC or MP3 (the audio
  codecs every browser plays in MP4), otherwise (PCM from .mov/.avi, Opus/Vorbis from .webm/.mkv, AC-3, ...)
  it is **re-encoded to AAC** with FFmpeg's native encoder. Audio is shifted so it starts with the source's
  first video frame, cut at the end of the written video (``--max-frames``) and interleaved with the video as
  it is written, so players do not need to jump around the file. A source whose audio cannot be read gets a
  video without sound and one line on stderr saying so;
* frame rate: the source's, divided by ``--every`` (every Nth frame is kept), so the duration is the source's.

Why PyAV rather than imageio-ffmpeg: imageio-ffmpeg pipes raw frames into an ``ffmpeg`` executable it ships,
which can encode H.264 too, but the audio then has to be muxed by a second ffmpeg run over a temporary file,
and failures come back as an exit code plus ffmpeg's log. PyAV encodes in-process (no subprocess, no temporary
file), copies the audio packets directly, and raises Python exceptions that can be turned into one-line
messages.

Without PyAV the previous writer is used (OpenCV, mp4v in .mp4, MJPG .avi where even that is missing), with one
warning per run that browsers will not play the result and that ``pip install av`` fixes it.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["AUDIO_COPY_CODECS", "H264_ENCODERS", "AnnotatedVideo", "have_pyav", "pad_to_even"]

#: H.264 encoders tried in order (the first that exists in the FFmpeg build and opens is used).
H264_ENCODERS = ("libx264", "libopenh264", "h264_videotoolbox", "h264_mf")
#: Source audio codecs copied as they are into the MP4; anything else is re-encoded to AAC.
AUDIO_COPY_CODECS = frozenset({"aac", "mp3"})
X264_OPTIONS = {"crf": "20", "preset": "veryfast"}
DEFAULT_FPS = 25.0  # when the source does not say (some webcams, raw streams)

_warned: set[str] = set()  # one warning of each kind per process


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        print(message, file=sys.stderr)


def have_pyav() -> bool:
    """Whether PyAV can be imported (then annotated videos are H.264 with audio)."""
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def pad_to_even(rgb: np.ndarray) -> np.ndarray:
    """``rgb`` with its last row and/or column repeated when its height/width is odd (yuv420p needs even sizes)."""
    h, w = rgb.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return rgb
    return np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _rate(fps: float | None, every: int) -> Fraction:
    """Output frame rate as an exact fraction (29.97 stays 30000/1001), ``every``-th frames kept."""
    base = Fraction(fps if fps and fps > 0 else DEFAULT_FPS).limit_denominator(1001)
    return base / max(1, int(every))


class AnnotatedVideo:
    """Writer for one annotated video, opened on the first frame (its size is known only then).

    ``write(rgb)`` takes RGB uint8 frames; ``close()`` finishes the file (always call it, also after an
    interruption: it writes the index). ``audio_from`` is the source file whose audio is carried over. ``path`` is
    the file written (``.avi`` in the MJPG fallback), ``encoder`` the video encoder used (``libx264``, or ``mp4v``
    / ``MJPG`` without PyAV), ``audio`` after closing what happened to the sound (``"copied aac"``,
    ``"aac from pcm_s16le"``, or None for none), and ``error`` why the video is missing or incomplete.
    """

    def __init__(self, path: Path, fps: float | None, every: int = 1, audio_from: Path | None = None) -> None:
        self.path = Path(path)
        self.rate = _rate(fps, every)
        self.audio_from = audio_from
        self.encoder: str | None = None
        self.audio: str | None = None
        self.error: str | None = None
        self.frames = 0
        self._size: tuple[int, int] | None = None  # (w, h) of the first frame; later frames are resized to it
        self._impl: _PyAVWriter | _OpenCVWriter | None = None

    def write(self, rgb: np.ndarray) -> None:
        """Append one RGB frame."""
        if self.error:
            return
        if self._impl is None:
            self._open(rgb)
            if self._impl is None:
                return
        if (rgb.shape[1], rgb.shape[0]) != self._size:  # a camera that changed resolution mid-stream
            import cv2

            rgb = cv2.resize(rgb, self._size, interpolation=cv2.INTER_AREA)
        try:
            self._impl.write(rgb)
        except Exception as err:  # noqa: BLE001 - an encoder failure mid-file: report it, keep labelling
            self.error = f"annotated video {self.path} not finished: {_one_line(err)}"
            self._abandon()
            return
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder, carry over the remaining audio and write the index."""
        impl, self._impl = self._impl, None
        if impl is None:
            return
        try:
            impl.close()
        except Exception as err:  # noqa: BLE001
            self.error = self.error or f"annotated video {self.path} not finished: {_one_line(err)}"
        self.audio = impl.audio_note

    def _open(self, rgb: np.ndarray) -> None:
        h, w = rgb.shape[:2]
        self._size = (w, h)
        if have_pyav():
            problems = []
            for name in H264_ENCODERS:
                try:
                    self._impl = _PyAVWriter(self.path, self.rate, name, w, h, self.audio_from)
                except _NoEncoder:
                    continue
                except OSError as err:  # the file itself cannot be written: no other encoder helps
                    self.error = f"cannot write {self.path} ({err.strerror or err})"
                    return
                except Exception as err:  # noqa: BLE001 - this encoder did not open here: try the next one
                    problems.append(f"{name}: {_one_line(err)}")
                    self.path.unlink(missing_ok=True)
                    continue
                self.encoder = name
                return
            why = "; ".join(problems) if problems else "this FFmpeg build has no H.264 encoder"
            _warn_once("no-h264", f"poster-fer: warning: PyAV could not encode H.264 ({why}); annotated videos are "
                       f"written with OpenCV (mp4v) instead, which browsers do not play")
        else:
            _warn_once("no-pyav", "poster-fer: warning: PyAV is not installed, so annotated videos are MPEG-4 Part "
                       "2 (mp4v) without sound, which browsers do not play; pip install av (or poster-fer[video]) "
                       "to write H.264 with the source's audio")
        fallback = _OpenCVWriter(self.path, float(self.rate), w, h)
        if fallback.error:
            self.error = fallback.error
            return
        self._impl, self.encoder, self.path = fallback, fallback.fourcc, fallback.path

    def _abandon(self) -> None:
        impl, self._impl = self._impl, None
        if impl is not None:
            with contextlib.suppress(Exception):  # already reporting the first failure
                impl.close()


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


class _NoEncoder(Exception):
    """The FFmpeg build lacks this encoder (the next one is tried quietly)."""


class _PyAVWriter:
    """H.264 (and audio) into MP4 through PyAV. The encoder is opened here, so one that cannot work here (a
    hardware encoder without its hardware) fails at once and the next is tried."""

    def __init__(self, path: Path, rate: Fraction, encoder: str, w: int, h: int, audio_from: Path | None) -> None:
        import av

        try:
            av.codec.Codec(encoder, "w")
        except Exception as err:  # noqa: BLE001 - UnknownCodecError: not in this build
            raise _NoEncoder(encoder) from err
        self.audio_note: str | None = None
        self._rate, self._count = rate, 0
        self._container = av.open(str(path), "w", format="mp4", container_options={"movflags": "+faststart"})
        try:
            options = dict(X264_OPTIONS) if encoder == "libx264" else {}
            stream = self._container.add_stream(encoder, rate=rate, options=options)
            stream.width, stream.height, stream.pix_fmt = w + w % 2, h + h % 2, "yuv420p"
            if encoder != "libx264":  # no CRF there: about 0.15 bit per pixel, near what x264's CRF 20 spends
                stream.bit_rate = max(400_000, int(0.15 * stream.width * stream.height * float(rate)))
            stream.codec_context.open()
            self._video = stream
            self._audio = _AudioCopier(self._container, audio_from) if audio_from is not None else None
        except BaseException:
            self._container.close()
            raise

    def write(self, rgb: np.ndarray) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pad_to_even(rgb)), format="rgb24")
        frame.pts = self._count
        self._container.mux(self._video.encode(frame))
        self._count += 1
        if self._audio is not None:  # audio up to the end of this frame: interleaved, never past the last frame
            self._audio.until(float(self._count / self._rate))

    def close(self) -> None:
        try:
            self._container.mux(self._video.encode(None))
            if self._audio is not None:
                self._audio.until(float(self._count / self._rate), final=True)
                self.audio_note = self._audio.note
        finally:
            self._container.close()


class _AudioCopier:
    """The source's first audio stream, copied (AAC, MP3) or re-encoded to AAC, aligned to the first video frame.

    Packets are read from the source only up to a given time, so audio and video are interleaved in the output.
    A problem with the source's audio ends the audio (one line on stderr), never the video.
    """

    def __init__(self, out: Any, source: Path) -> None:
        import av

        self.note: str | None = None
        self.copy = False
        self._out_container, self._source = out, source
        self._src: Any = None
        try:
            src = av.open(str(source))
        except Exception:  # noqa: BLE001 - OpenCV read it but FFmpeg cannot: simply no audio
            return
        if not src.streams.audio:
            src.close()
            return
        self._src = src
        ain = src.streams.audio[0]
        video = src.streams.video[0] if src.streams.video else None
        # output time 0 is the source's first video frame (where OpenCV's frame index starts)
        self._offset = float(video.start_time * video.time_base) if video and video.start_time is not None else 0.0
        name = ain.codec_context.name
        self.copy = name in AUDIO_COPY_CODECS
        try:
            if self.copy:
                self._out = out.add_stream_from_template(ain)
                self.note = f"copied {name}"
            else:
                channels = getattr(ain.codec_context, "channels", 0) or 2
                self._out = out.add_stream("aac", rate=ain.codec_context.sample_rate or 48_000,
                                           layout="mono" if channels == 1 else "stereo")
                self._out.bit_rate = 96_000 if channels == 1 else 128_000
                self.note = f"aac from {name}"
        except Exception as err:  # noqa: BLE001 - an odd audio track costs the sound, not the video
            _warn_once(f"audio:{source}", f"poster-fer: {source}: the annotated video has no sound ({name} audio: "
                       f"{_one_line(err)})")
            self.note = None
            self._close()
            return
        self._packets: Iterator[Any] = src.demux(ain)
        self._pending: Any = None

    def until(self, end: float, final: bool = False) -> None:
        """Mux the source's audio up to ``end`` seconds of output time; ``final``: then flush, drop the rest of
        the source's audio (beyond the written video) and close the source."""
        if self._src is None:
            return
        try:
            if self._mux_until(end) or final:
                if not self.copy:
                    self._out_container.mux(self._out.encode(None))
                self._close()
        except Exception as err:  # noqa: BLE001 - a damaged audio track: keep the video, say so once
            _warn_once(f"audio:{self._source}", f"poster-fer: {self._source}: the annotated video's sound stops "
                       f"early ({_one_line(err)})")
            self.note = f"{self.note}, cut short"
            self._close()

    def _mux_until(self, end: float) -> bool:
        """Mux packets that start before ``end``; True when the source's audio is exhausted."""
        while True:
            pkt, self._pending = self._pending or next(self._packets, None), None
            if pkt is None:
                return True
            if pkt.size == 0 or pkt.pts is None:  # the demuxer's flush packet, or one without a time
                continue
            t = float(pkt.pts * pkt.time_base) - self._offset
            if t >= end:
                self._pending = pkt
                return False
            if t + float((pkt.duration or 0) * pkt.time_base) <= 0:  # before the first video frame
                continue
            if self.copy:
                shift = round(self._offset / pkt.time_base)
                pkt.pts -= shift
                if pkt.dts is not None:
                    pkt.dts -= shift
                pkt.stream = self._out
                self._out_container.mux(pkt)
            else:
                for frame in pkt.decode():
                    frame.pts = None  # the AAC encoder numbers its (resampled, re-framed) frames itself
                    self._out_container.mux(self._out.encode(frame))

    def _close(self) -> None:
        if self._src is not None:
            self._src.close()
            self._src = None


class _OpenCVWriter:
    """The fallback without PyAV: OpenCV's mp4v in .mp4, else MJPG in .avi (no audio, not playable in browsers)."""

    audio_note = None

    def __init__(self, path: Path, fps: float, w: int, h: int) -> None:
        import cv2

        self.error: str | None = None
        self.path, self.fourcc = path, ""
        self._writer: Any = None
        for fourcc, candidate in (("mp4v", path), ("MJPG", path.with_suffix(".avi"))):
            writer = cv2.VideoWriter(str(candidate), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
            if writer.isOpened():
                self._writer, self.path, self.fourcc = writer, candidate, fourcc
                return
        self.error = f"cannot open a video writer for {path} (no PyAV, and OpenCV has no mp4v or MJPG encoder)"

    def write(self, rgb: np.ndarray) -> None:
        import cv2

        self._writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        self._writer.release()
