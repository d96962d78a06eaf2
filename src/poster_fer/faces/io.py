"""Robust image loading: any common file or array in, upright RGB uint8 ``(h, w, 3)`` out.

Everything downstream (detection, alignment, the model) assumes one pixel format, so the odd cases are
normalised here once: EXIF orientation, grey and palette images, alpha, 16-bit and CMYK files. Files that
cannot be used raise :class:`ImageLoadError` with the file name and the reason, so the command line can
print one clear line instead of a decoder traceback.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

__all__ = ["DEFAULT_MAX_PIXELS", "ImageLoadError", "load_image", "to_rgb_array"]

log = logging.getLogger(__name__)

# 50 megapixels: larger than any camera photo a user is likely to feed in, small enough that one decoded
# image (150 MB as RGB) cannot exhaust memory. Pillow's own bomb guard only errors at about 179 MP.
DEFAULT_MAX_PIXELS = 50_000_000

_WHITE = (255, 255, 255)


class ImageLoadError(ValueError):
    """An image file could not be turned into an RGB array (unreadable, truncated, too large, unsupported)."""


def load_image(
    path: str | os.PathLike[str],
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = _WHITE,
) -> np.ndarray:
    """Read an image file as upright RGB uint8 ``(h, w, 3)``.

    The pixel count is checked from the header before decoding, so an oversized file is refused without
    allocating it. Transparent images are composited on ``background`` (white by default), because a
    face on black looks unlike anything the model was trained on. ``max_pixels=None`` disables the check
    (Pillow's decompression-bomb limit still applies).
    """
    p = Path(path)
    if not p.exists():
        raise ImageLoadError(f"{p}: no such file")
    if not p.is_file():
        raise ImageLoadError(f"{p}: not a regular file")
    try:
        with Image.open(p) as im:
            w, h = im.size
            if max_pixels is not None and w * h > max_pixels:
                raise ImageLoadError(
                    f"{p}: image is {w}x{h} = {w * h} pixels, above the limit of {max_pixels} pixels "
                    "(raise max_pixels if the file is trusted)"
                )
            im.load()
            return _pil_to_rgb(_upright(im, p), background)
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageLoadError(f"{p}: refused by Pillow's decompression-bomb limit ({err})") from err
    except Image.UnidentifiedImageError as err:
        raise ImageLoadError(f"{p}: not a recognised image format") from err
    except Exception as err:  # decoders raise OSError, ValueError, SyntaxError, struct.error, ...
        raise ImageLoadError(f"{p}: cannot decode image ({type(err).__name__}: {err})") from err


def to_rgb_array(
    image: Image.Image | np.ndarray,
    background: tuple[int, int, int] = _WHITE,
    apply_exif: bool = True,
) -> np.ndarray:
    """Normalise an in-memory image (PIL image or array) to RGB uint8 ``(h, w, 3)`` for the Python API.

    Arrays are taken as RGB(A) in channel-last layout: grey ``(h, w)`` or ``(h, w, 1)``, RGB ``(h, w, 3)``
    or RGBA ``(h, w, 4)``. OpenCV's BGR arrays must be flipped by the caller (``bgr[..., ::-1]``); the
    channel order cannot be guessed. uint8 is used as is, uint16 is scaled by 1/257, floats are read as
    ``[0, 1]`` when their maximum is at most 1 and as ``[0, 255]`` otherwise. PIL images get their EXIF
    orientation applied unless ``apply_exif`` is false.
    """
    if isinstance(image, Image.Image):
        im = _upright(image, None) if apply_exif else image
        return _pil_to_rgb(im, background)
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a PIL image or numpy array, got {type(image).__name__}")
    arr = image
    if arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4) and arr.shape[0] in (1, 3, 4):
        raise ValueError(f"array of shape {arr.shape} looks channel-first; pass it as (h, w, c)")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"expected an image array of shape (h, w), (h, w, 1|3|4); got {image.shape}")
    arr8 = _to_uint8(arr)
    if arr8.shape[-1] == 1:
        arr8 = np.repeat(arr8, 3, axis=-1)
    elif arr8.shape[-1] == 4:
        arr8 = _composite(arr8[..., :3], arr8[..., 3], background)
    return np.ascontiguousarray(arr8)


def _upright(im: Image.Image, path: Path | None) -> Image.Image:
    """Apply the EXIF orientation; a malformed EXIF block only costs the rotation, not the image."""
    try:
        out = ImageOps.exif_transpose(im)
    except Exception as err:  # broken EXIF is common in the wild and not worth refusing the image for
        log.warning("%s: ignoring unreadable EXIF orientation (%s)", path or "image", err)
        return im
    return im if out is None else out


def _pil_to_rgb(im: Image.Image, background: tuple[int, int, int]) -> np.ndarray:
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im, dtype=np.uint8).copy()
    if mode in ("L", "1"):
        return np.repeat(np.asarray(im.convert("L"), dtype=np.uint8)[:, :, None], 3, axis=-1)
    if mode.startswith("I;16") or mode in ("I", "F"):
        return to_rgb_array(_wide_to_uint8(im), background)
    if (mode == "P" and "transparency" in im.info) or mode in ("PA", "LA", "La", "RGBA", "RGBa"):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.uint8)
        return _composite(rgba[..., :3], rgba[..., 3], background)
    # P without transparency, CMYK, YCbCr, HSV, ...: Pillow knows the conversion (CMYK is the naive
    # formula; Adobe's inverted CMYK JPEGs are already un-inverted by Pillow's decoder).
    try:
        rgb = im.convert("RGB")
    except ValueError as err:
        raise ValueError(f"unsupported image mode {mode!r}") from err
    return np.asarray(rgb, dtype=np.uint8).copy()


def _wide_to_uint8(im: Image.Image) -> np.ndarray:
    """16-bit, 32-bit integer and float single-channel images to uint8 grey.

    16-bit data spans 0..65535 whatever the picture, so it is scaled by 255/65535 rather than stretched
    to its own min/max (stretching would brighten dark photos). Mode ``I`` is what older Pillow used for
    16-bit PNGs, so values inside 0..65535 get the same treatment; anything wider, and floats outside
    ``[0, 1]``, are stretched to their range since no standard scale exists.
    """
    arr = np.asarray(im)
    if im.mode.startswith("I;16"):
        return _scale_u16(arr.astype(np.float64))
    a = arr.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError("image contains NaN or infinite values")
    lo, hi = float(a.min()), float(a.max())
    if im.mode == "I" and lo >= 0 and hi <= 65535:
        return _scale_u16(a)
    if im.mode == "F" and lo >= 0 and hi <= 1:
        return np.rint(a * 255).astype(np.uint8)
    if hi == lo:
        return np.zeros(a.shape, dtype=np.uint8)
    return np.rint((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _scale_u16(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8)


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if arr.dtype == np.uint16:
        return _scale_u16(arr.astype(np.float64))
    if np.issubdtype(arr.dtype, np.floating):
        a = arr.astype(np.float64)
        if not np.isfinite(a).all():
            raise ValueError("image array contains NaN or infinite values")
        if a.size and a.max() <= 1.0:
            a = a * 255.0
        return np.clip(np.rint(a), 0, 255).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer):
        lo, hi = int(arr.min()), int(arr.max())
        if lo >= 0 and hi <= 255:
            return arr.astype(np.uint8)
        if lo >= 0 and hi <= 65535:
            return _scale_u16(arr.astype(np.float64))
        raise ValueError(f"integer image values {lo}..{hi} fit neither 8 nor 16 bits")
    raise ValueError(f"unsupported image dtype {arr.dtype}")


def _composite(rgb: np.ndarray, alpha: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """Alpha-blend onto a flat colour; dropping alpha instead would expose arbitrary hidden RGB values."""
    a = alpha.astype(np.float32)[..., None] / 255.0
    bg = np.asarray(background, dtype=np.float32).reshape(1, 1, 3)
    out = rgb.astype(np.float32) * a + bg * (1.0 - a)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
