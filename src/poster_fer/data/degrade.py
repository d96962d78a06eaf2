"""Image degradations of the kind real face photos carry: blur, JPEG and video compression, low resolution,
lighting. One definition, used twice: the robustness benchmark applies each at a fixed strength to measure a
model, and the training app's degradation augmentation (``poster_fer_train.augment.Degrade``) draws strengths at
random to train one. Sharing the functions keeps "what was trained for" and "what was measured" the same thing.

Every function takes and returns a uint8 array, ``(H, W)`` grey or ``(H, W, 3)``, of the same shape. OpenCV does
the pixel work (tens of microseconds on a 48 px face); video compression uses PyAV's bundled FFmpeg (libx264),
imported only when called (the ``[video]`` extra).
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import cv2
import numpy as np

__all__ = ["adjust_brightness", "adjust_contrast", "adjust_gamma", "gaussian_blur", "h264", "jpeg",
           "low_resolution"]


def _check(img: np.ndarray) -> np.ndarray:
    if img.dtype != np.uint8 or img.ndim not in (2, 3):
        raise ValueError(f"expected a uint8 (H, W) or (H, W, 3) image, got {img.dtype} {img.shape}")
    return img


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with standard deviation ``sigma`` pixels (kernel out to 3 sigma); sigma <= 0 is a copy."""
    _check(img)
    if sigma <= 0:
        return img.copy()
    k = 2 * int(np.ceil(3 * sigma)) + 1
    return cv2.GaussianBlur(img, (k, k), sigmaX=float(sigma), sigmaY=float(sigma), borderType=cv2.BORDER_REFLECT)


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """Encode as JPEG at ``quality`` (1-100, libjpeg's scale with 4:2:0 chroma for colour) and decode again."""
    _check(img)
    bgr = img if img.ndim == 2 else img[:, :, ::-1]
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(bgr), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    flag = cv2.IMREAD_GRAYSCALE if img.ndim == 2 else cv2.IMREAD_COLOR
    out = cv2.imdecode(buf, flag)
    return out if img.ndim == 2 else np.ascontiguousarray(out[:, :, ::-1])


def low_resolution(img: np.ndarray, side: int) -> np.ndarray:
    """The face as a camera ``side`` pixels across would have taken it: area-averaged down to ``side`` (longer
    side), then bilinear back up to the original size, as the aligner enlarges a small face."""
    _check(img)
    h, w = img.shape[:2]
    scale = float(side) / max(h, w)
    if scale >= 1:
        return img.copy()
    small = cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def adjust_brightness(img: np.ndarray, factor: float) -> np.ndarray:
    """Pixel values times ``factor``, clipped to 0-255 (what over- or under-exposure does; PIL's Brightness)."""
    _check(img)
    return np.clip(img.astype(np.float32) * float(factor) + 0.5, 0, 255).astype(np.uint8)


def adjust_contrast(img: np.ndarray, factor: float) -> np.ndarray:
    """Contrast about the image's mean grey level times ``factor`` (< 1 flatter, > 1 harsher), clipped."""
    _check(img)
    x = img.astype(np.float32)
    mean = float(x.mean())
    return np.clip((x - mean) * float(factor) + mean + 0.5, 0, 255).astype(np.uint8)


def adjust_gamma(img: np.ndarray, gamma: float) -> np.ndarray:
    """``255 * (v / 255) ** gamma``: gamma > 1 darkens the mid-tones (shadows), < 1 lifts them."""
    _check(img)
    lut = np.round(255.0 * (np.arange(256) / 255.0) ** float(gamma)).astype(np.uint8)
    return lut[img]


def _even(n: int) -> int:
    return max(16, n + (n % 2))


def h264(frames: Sequence[np.ndarray], crf: int, preset: str = "veryfast") -> list[np.ndarray]:
    """Compress ``frames`` (all one shape) as one H.264 stream (libx264, yuv420p, constant rate factor ``crf``:
    23 is x264's default, 35 is a low-bitrate stream, 51 the worst) and decode them again, so each face carries
    real video artefacts: 4:2:0 chroma, deblocked macroblocks, quantised DCT. Frames smaller than 16 px or of odd
    size are edge-padded for the encoder and cropped back. Frames are independent pictures, so the stream is
    intra-only (keyint 1): no motion from one face to the next."""
    import av  # the [video] extra: PyAV's bundled FFmpeg with libx264

    if not frames:
        return []
    h, w = frames[0].shape[:2]
    ph, pw = _even(h), _even(w)
    grey = frames[0].ndim == 2
    stream_buf: list[np.ndarray] = []
    codec = av.CodecContext.create("libx264", "w")
    codec.width, codec.height, codec.pix_fmt = pw, ph, "yuv420p"
    codec.time_base = Fraction(1, 25)
    codec.options = {"crf": str(int(crf)), "preset": preset, "x264-params": "keyint=1:bframes=0"}
    decoder = av.CodecContext.create("h264", "r")
    for i, f in enumerate(frames):
        _check(f)
        rgb = np.repeat(f[:, :, None], 3, axis=2) if grey else f
        rgb = np.pad(rgb, ((0, ph - h), (0, pw - w), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        for packet in codec.encode(frame):
            stream_buf.extend(_decode(decoder, packet, grey, h, w))
    for packet in codec.encode(None):
        stream_buf.extend(_decode(decoder, packet, grey, h, w))
    stream_buf.extend(_decode(decoder, None, grey, h, w))
    if len(stream_buf) != len(frames):
        raise RuntimeError(f"H.264 round trip returned {len(stream_buf)} frames for {len(frames)}")
    return stream_buf


def _decode(decoder, packet, grey: bool, h: int, w: int) -> list[np.ndarray]:  # noqa: ANN001 (PyAV types)
    out = []
    for frame in decoder.decode(packet):
        arr = frame.to_ndarray(format="gray" if grey else "rgb24")
        out.append(np.ascontiguousarray(arr[:h, :w]))
    return out
