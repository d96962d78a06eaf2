"""Robust image loading: any common file or array in, upright RGB uint8 ``(h, w, 3)`` out.

Everything downstream (detection, alignment, the model) assumes one pixel format, so the odd cases are
normalised here once: EXIF orientation, grey and palette images, alpha, 16-bit and CMYK files. Files that
cannot be used raise :class:`ImageLoadError` with the file name and the reason, so the command line can
print one clear line instead of a decoder traceback.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..constants import DEFAULT_MAX_PIXELS  # defined there so the command line's help needs no numpy / Pillow
from ..errors import ImageLoadError

__all__ = ["CHANNEL_ORDERS", "DEFAULT_MAX_DECODED_BYTES", "DEFAULT_MAX_PIXELS", "ImageLoadError", "check_channels",
           "check_decoded_size", "decoded_bytes", "load_image", "to_rgb_array"]

log = logging.getLogger(__name__)

#: 256 MiB: the most memory one decoded image may take (as Pillow holds it, or as a video frame), checked from the
#: header before decoding. The pixel limit alone does not bound bytes (a 16-bit or alpha image holds more per
#: pixel) and can be switched off; this budget stays. A 50-megapixel RGB photo (200 MB in Pillow) fits.
DEFAULT_MAX_DECODED_BYTES = 256 * 2**20

# Pillow's storage per pixel: one byte for 1-bit/grey/palette, two for 16-bit grey, four for every other mode
# (multi-band 8-bit images are stored as 4 bytes a pixel; I and F are 32-bit).
_ONE_BYTE = {"1", "L", "P"}
_TWO_BYTES = {"I;16", "I;16L", "I;16B", "I;16N"}
# Pixels converted at a time, so alpha compositing and 16-bit scaling never hold a float copy of a whole image.
_CHUNK_PIXELS = 1 << 20

_WHITE = (255, 255, 255)


def decoded_bytes(mode: str, width: int, height: int) -> int:
    """Bytes a ``mode`` image of ``width`` x ``height`` takes once decoded (Pillow's storage)."""
    per = 1 if mode in _ONE_BYTE else 2 if mode in _TWO_BYTES else 4
    return int(width) * int(height) * per




def check_decoded_size(name: str, mode: str, width: int, height: int, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                       max_bytes: int | None = DEFAULT_MAX_DECODED_BYTES) -> None:
    """Refuse (:class:`ImageLoadError` naming ``name``) an image whose header promises more pixels or bytes than
    allowed, before anything is decoded."""
    if max_pixels is not None and width * height > max_pixels:
        raise ImageLoadError(f"{name}: image is {width}x{height} = {width * height} pixels, above the limit of "
                             f"{max_pixels} pixels (raise max_pixels if the file is trusted)")
    need = decoded_bytes(mode, width, height)
    if max_bytes is not None and need > max_bytes:
        raise ImageLoadError(f"{name}: a {width}x{height} {mode} image takes {need / 2**20:.0f} MiB decoded, above "
                             f"the budget of {max_bytes / 2**20:.0f} MiB")


#: Channel orders a numpy array input may be in: ``"rgb"`` (Pillow, matplotlib, imageio) or ``"bgr"`` (OpenCV).
CHANNEL_ORDERS = ("rgb", "bgr")


def check_channels(channels: str) -> str:
    """``channels`` in lower case, or ValueError naming the option.

    Why an option and not a guess: an OpenCV frame and an RGB photo have the same shape and dtype, and no
    statistic of the pixels tells them apart reliably, so the caller says which one it has.
    """
    value = channels.lower() if isinstance(channels, str) else channels
    if value not in CHANNEL_ORDERS:
        raise ValueError(f"channels must be 'rgb' or 'bgr' (the channel order of numpy array images; OpenCV's "
                         f"cv2.imread and VideoCapture give 'bgr'), got {channels!r}")
    return value


def load_image(
    path: str | os.PathLike[str],
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = _WHITE,
    max_bytes: int | None = DEFAULT_MAX_DECODED_BYTES,
) -> np.ndarray:
    """Read an image file as upright RGB uint8 ``(h, w, 3)``.

    The pixel count and the decoded size in bytes (``max_bytes``) are checked from the header before decoding,
    so an oversized file is refused without allocating it. Transparent images are composited on ``background``
    (white by default), because a face on black looks unlike anything the model was trained on.
    ``max_pixels=None`` disables the pixel check (the byte budget and Pillow's bomb limit still apply).
    """
    p = Path(path)
    if not p.exists():
        raise ImageLoadError(f"{p}: no such file")
    if not p.is_file():
        raise ImageLoadError(f"{p}: not a regular file")
    try:
        with Image.open(p) as im:
            w, h = im.size
            check_decoded_size(str(p), im.mode, w, h, max_pixels, max_bytes)
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
    channels: str = "rgb",
) -> np.ndarray:
    """Normalise an in-memory image (PIL image or array) to RGB uint8 ``(h, w, 3)`` for the Python API.

    Arrays are read in channel-last layout: grey ``(h, w)`` or ``(h, w, 1)``, colour ``(h, w, 3)`` or with
    alpha ``(h, w, 4)``. Their channel order is ``channels``: ``"rgb"`` (the default: RGB / RGBA) or ``"bgr"``
    for OpenCV arrays (BGR / BGRA, as ``cv2.imread`` and ``cv2.VideoCapture`` give them); the order cannot be
    detected from the pixels, so an OpenCV array passed with the default gets red and blue swapped. Grey arrays
    and PIL images (which know their mode) ignore ``channels``; a value other than these two raises ValueError.
    uint8 is used as is, uint16 is scaled by 1/257, floats are read as ``[0, 1]`` when their maximum is at most 1
    and as ``[0, 255]`` otherwise. PIL images get their EXIF orientation applied unless ``apply_exif`` is false.
    """
    bgr = check_channels(channels) == "bgr"
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
    if bgr and arr8.shape[-1] == 3:
        arr8 = arr8[..., ::-1]
    elif bgr and arr8.shape[-1] == 4:  # BGRA -> RGBA: alpha stays last
        arr8 = arr8[..., [2, 1, 0, 3]]
    if arr8.shape[-1] == 1:
        arr8 = np.repeat(arr8, 3, axis=-1)
    elif arr8.shape[-1] == 4:
        arr8 = _composite(arr8[..., :3], arr8[..., 3], background)
    return np.ascontiguousarray(arr8)


def _upright(im: Image.Image, path: Path | None) -> Image.Image:
    """Apply the EXIF orientation; a malformed EXIF block only costs the rotation, not the image."""
    try:
        if im.getexif().get(0x0112, 1) in (None, 1):  # upright already: Pillow would still copy the whole image
            return im
        out = ImageOps.exif_transpose(im)
    except Exception as err:  # broken EXIF is common in the wild and not worth refusing the image for
        log.warning("%s: ignoring unreadable EXIF orientation (%s)", path or "image", err)
        return im
    return im if out is None else out


def _pil_to_rgb(im: Image.Image, background: tuple[int, int, int]) -> np.ndarray:
    mode = im.mode
    if mode == "RGB":
        return _rows_to_rgb(im, lambda band: band)
    if mode in ("L", "1"):
        return np.repeat(np.asarray(im.convert("L"), dtype=np.uint8)[:, :, None], 3, axis=-1)
    if mode.startswith("I;16") or mode in ("I", "F"):
        return to_rgb_array(_wide_to_uint8(im), background)
    if (mode == "P" and "transparency" in im.info) or mode in ("PA", "LA", "La", "RGBA", "RGBa"):
        rgba = im if mode == "RGBA" else im.convert("RGBA")
        return _rows_to_rgb(rgba, lambda band: _composite(band[..., :3], band[..., 3], background))
    # P without transparency, CMYK, YCbCr, HSV, ...: Pillow knows the conversion (CMYK is the naive
    # formula; Adobe's inverted CMYK JPEGs are already un-inverted by Pillow's decoder).
    try:
        rgb = im.convert("RGB")
    except ValueError as err:
        raise ValueError(f"unsupported image mode {mode!r}") from err
    return _rows_to_rgb(rgb, lambda band: band)


def _rows_to_rgb(im: Image.Image, convert: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``convert`` applied to bands of rows of ``im``, written into one RGB uint8 array.

    Why bands: turning a whole Pillow image into an array first makes two more full copies (Pillow's packed
    bytes, then the array); a band at a time keeps the extra memory to one band however large the photo."""
    w, h = im.size
    out = np.empty((h, w, 3), dtype=np.uint8)
    rows = max(1, _CHUNK_PIXELS // max(1, w))
    for y in range(0, h, rows):
        band = np.asarray(im.crop((0, y, w, min(h, y + rows))), dtype=np.uint8)
        out[y:y + band.shape[0]] = convert(band)
    return out


def _wide_to_uint8(im: Image.Image) -> np.ndarray:
    """16-bit, 32-bit integer and float single-channel images to uint8 grey.

    16-bit data spans 0..65535 whatever the picture, so it is scaled by 255/65535 rather than stretched
    to its own min/max (stretching would brighten dark photos). Mode ``I`` is what older Pillow used for
    16-bit PNGs, so values inside 0..65535 get the same treatment; anything wider, and floats outside
    ``[0, 1]``, are stretched to their range since no standard scale exists.
    """
    arr = np.asarray(im)
    if im.mode.startswith("I;16"):
        return _scale_u16(arr)
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
    """0..65535 to 0..255 as ``rint(a / 257)``, in integers and chunks (no float copy of the whole image).

    ``(a + 128) // 257`` equals the rounded quotient exactly: 257 is odd, so no value sits on a tie."""
    out = np.empty(a.shape, dtype=np.uint8)
    flat_in, flat_out = a.reshape(-1), out.reshape(-1)
    for i in range(0, flat_in.size, _CHUNK_PIXELS):
        part = np.clip(flat_in[i:i + _CHUNK_PIXELS], 0, 65535).astype(np.uint32)
        flat_out[i:i + _CHUNK_PIXELS] = (part + 128) // 257
    return out


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if arr.dtype == np.uint16:
        return _scale_u16(arr)
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
            return _scale_u16(arr)
        raise ValueError(f"integer image values {lo}..{hi} fit neither 8 nor 16 bits")
    raise ValueError(f"unsupported image dtype {arr.dtype}")


def _composite(rgb: np.ndarray, alpha: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """Alpha-blend onto a flat colour; dropping alpha instead would expose arbitrary hidden RGB values."""
    out = np.empty(rgb.shape, dtype=np.uint8)
    bg = np.asarray(background, dtype=np.float32).reshape(1, 1, 3)
    rows = max(1, _CHUNK_PIXELS // max(1, rgb.shape[1]))  # a float copy of a whole 49 MP image is 2 GB
    for y in range(0, rgb.shape[0], rows):
        a = alpha[y:y + rows].astype(np.float32)[..., None] / 255.0
        blend = rgb[y:y + rows].astype(np.float32) * a + bg * (1.0 - a)
        out[y:y + rows] = np.clip(np.rint(blend), 0, 255)
    return out
