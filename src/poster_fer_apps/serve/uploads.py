"""From request bytes to an RGB array, in memory, refusing every kind of bad upload with a clear 4xx.

Why here and not in Starlette's form parser: that parser spools uploads over 1 MB to temporary files on disk
and only learns the size after reading; this module reads the body into memory while counting (413 as soon
as the limit is crossed), parses multipart from memory, recognises the format from the bytes themselves
(not from the name or the declared type), and lets Pillow decode only that one format after checking the
pixel count in the header.
"""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from poster_fer.faces.io import DEFAULT_MAX_DECODED_BYTES, ImageLoadError, check_decoded_size, to_rgb_array

from .errors import ApiError

__all__ = [
    "SUPPORTED_FORMATS",
    "DecodedImage",
    "Upload",
    "decode_image",
    "options_from",
    "parse_body",
    "read_body",
    "sniff_format",
]

#: Pillow format name -> media type, for the formats the service decodes.
SUPPORTED_FORMATS: dict[str, str] = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp",
                                     "BMP": "image/bmp"}
_RAW_TYPES = {"image/jpeg", "image/jpg", "image/pjpeg", "image/png", "image/webp", "image/bmp", "image/x-bmp",
              "image/x-ms-bmp", "application/octet-stream"}
_SUPPORTED_TEXT = "JPEG, PNG, WebP or BMP"
FILE_FIELD = "file"
MAX_PARTS = 8
MAX_FIELD_BYTES = 1024
MAX_BOUNDARY = 70


@dataclass(frozen=True)
class Upload:
    """The image bytes of a request and the text fields that came with it (multipart only)."""

    data: bytes
    fields: dict[str, str]


@dataclass(frozen=True)
class DecodedImage:
    """An upload as the pipeline needs it: upright RGB uint8 plus what it was."""

    rgb: np.ndarray
    format: str


async def read_body(chunks: AsyncIterator[bytes], declared_length: str | None, limit: int,
                    timeout_s: float) -> bytes:
    """The whole body, refused with 413 as soon as it is known to exceed ``limit`` (declared or counted)."""
    if declared_length is not None:
        try:
            length = int(declared_length)
        except ValueError:
            raise ApiError(400, "bad_request", f"Content-Length {declared_length!r} is not a number") from None
        if length > limit:
            raise ApiError(413, "body_too_large", f"the body is {length} bytes, over the limit of {limit} bytes")
    buf = bytearray()

    async def collect() -> None:
        async for chunk in chunks:
            buf.extend(chunk)
            if len(buf) > limit:
                raise ApiError(413, "body_too_large", f"the body is over the limit of {limit} bytes")

    try:
        await asyncio.wait_for(collect(), timeout_s)
    except asyncio.TimeoutError:
        raise ApiError(408, "body_timeout", f"the body did not arrive within {timeout_s:g} s") from None
    return bytes(buf)


def parse_body(body: bytes, content_type: str | None) -> Upload:
    """Split a raw image body or a ``multipart/form-data`` body into the image bytes and the text fields."""
    media, params = _media_type(content_type)
    if media == "multipart/form-data":
        return _parse_multipart(body, params.get("boundary"))
    # `curl --data-binary @photo.jpg` labels the bytes as a url-encoded form unless told otherwise: take them
    # when they are an image we decode, refuse real forms (no field of one could name anything useful here)
    curl_default = media == "application/x-www-form-urlencoded" and sniff_format(body) in SUPPORTED_FORMATS
    if media and media not in _RAW_TYPES and not curl_default:
        raise ApiError(415, "unsupported_type", f"Content-Type {media!r} is not accepted; send the image as "
                       f"{_SUPPORTED_TEXT} (raw body, or multipart/form-data with a field named '{FILE_FIELD}')")
    if not body:
        raise ApiError(400, "empty_body", "the request body is empty; send a JPEG, PNG, WebP or BMP image")
    return Upload(body, {})


def _media_type(content_type: str | None) -> tuple[str, dict[str, str]]:
    if not content_type:
        return "", {}
    head, *rest = content_type.split(";")
    params: dict[str, str] = {}
    for item in rest:
        key, sep, value = item.partition("=")
        if sep:
            params[key.strip().lower()] = value.strip().strip('"')
    return head.strip().lower(), params


def _parse_multipart(body: bytes, boundary: str | None) -> Upload:
    if not boundary:
        raise ApiError(400, "bad_multipart", "multipart/form-data without a boundary parameter")
    if len(boundary) > MAX_BOUNDARY or not boundary.isascii():  # RFC 2046: 1 to 70 ASCII characters
        raise ApiError(400, "bad_multipart", f"the multipart boundary must be 1 to {MAX_BOUNDARY} ASCII characters "
                       f"(got {len(boundary)})")
    if not body:
        raise ApiError(400, "empty_body", "the request body is empty; send the image in a form field named "
                       f"'{FILE_FIELD}'")
    return _upload_of(_split_parts(body, boundary))


class _PartCollector:
    """python-multipart's callbacks, collecting each part's headers and bytes (at most MAX_PARTS parts)."""

    def __init__(self) -> None:
        self.parts: list[dict] = []
        self.part: dict = {}
        self.field = bytearray()
        self.value = bytearray()

    def callbacks(self) -> dict[str, Any]:
        return {"on_part_begin": self.begin, "on_header_field": self.header_field,
                "on_header_value": self.header_value, "on_header_end": self.header_end,
                "on_part_data": self.data, "on_part_end": self.end}

    def begin(self) -> None:
        if len(self.parts) >= MAX_PARTS:
            raise ApiError(400, "bad_multipart", f"more than {MAX_PARTS} form fields")
        self.part = {"headers": {}, "data": bytearray()}
        self.field, self.value = bytearray(), bytearray()

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self.field += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self.value += data[start:end]

    def header_end(self) -> None:
        self.part["headers"][bytes(self.field).decode("latin-1").lower()] = bytes(self.value)
        self.field, self.value = bytearray(), bytearray()

    def data(self, data: bytes, start: int, end: int) -> None:
        self.part["data"] += data[start:end]

    def end(self) -> None:
        self.parts.append(self.part)


def _split_parts(body: bytes, boundary: str) -> list[dict]:
    """The body's parts (headers by lower-case name, data), or a 400 naming what is malformed."""
    from python_multipart.multipart import MultipartParseError, MultipartParser

    collector = _PartCollector()
    parser = MultipartParser(boundary, collector.callbacks())
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as err:
        raise ApiError(400, "bad_multipart", f"malformed multipart body ({err})") from None
    if not collector.parts:
        raise ApiError(400, "bad_multipart", "the multipart body has no parts (is the boundary right?)")
    return collector.parts


def _upload_of(parts: list[dict]) -> Upload:
    """The image (the one ``file`` field) and the text fields; any other file field is refused."""
    from python_multipart.multipart import parse_options_header

    image: bytes | None = None
    fields: dict[str, str] = {}
    names: list[str] = []
    for number, part in enumerate(parts, 1):
        disposition = part["headers"].get("content-disposition")
        if not disposition:
            raise ApiError(400, "bad_multipart", f"form part {number} has no Content-Disposition header, so it has "
                           f"no field name; send the image as {FILE_FIELD}=@photo.jpg")
        _, opts = parse_options_header(disposition)
        name = opts.get(b"name", b"").decode("utf-8", "replace")
        names.append(name)
        if name == FILE_FIELD:
            if image is not None:
                raise ApiError(400, "bad_field", f"more than one '{FILE_FIELD}' field; send one image per request")
            image = bytes(part["data"])
        elif b"filename" in opts:
            raise ApiError(400, "bad_field", f"file field {name!r} is not accepted; send the image in a field "
                           f"named '{FILE_FIELD}'")
        else:
            if len(part["data"]) > MAX_FIELD_BYTES:
                raise ApiError(400, "bad_field", f"form field {name!r} is longer than {MAX_FIELD_BYTES} bytes")
            fields[name] = bytes(part["data"]).decode("utf-8", "replace")
    if image is None:
        raise ApiError(400, "bad_field", f"no form field named '{FILE_FIELD}' (got {', '.join(map(repr, names))}); "
                       f"send the image as {FILE_FIELD}=@photo.jpg")
    if not image:
        raise ApiError(400, "empty_body", f"the '{FILE_FIELD}' field is empty")
    return Upload(image, fields)


def sniff_format(data: bytes) -> str | None:
    """The image format the bytes start with (Pillow's name), also for formats the service refuses."""
    head = data[:32]
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head.startswith(b"BM"):
        return "BMP"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"hevc", b"mif1", b"msf1", b"avif", b"avis"):
        return "HEIF/AVIF"
    if head.startswith(b"\x00\x00\x01\x00"):
        return "ICO"
    if head.startswith(b"%PDF"):
        return "PDF"
    if head.startswith(b"8BPS"):
        return "PSD"
    if head.startswith(b"\xff\x0a") or head.startswith(b"\x00\x00\x00\x0cJXL "):
        return "JPEG XL"
    if head.startswith(b"\x00\x00\x00\x0cjP  ") or head.startswith(b"\xff\x4f\xff\x51"):
        return "JPEG 2000"
    stripped = head.lstrip()
    if stripped.startswith(b"<svg") or stripped.startswith(b"<?xml"):
        return "SVG"
    return None


def decode_image(data: bytes, max_pixels: int, max_bytes: int | None = DEFAULT_MAX_DECODED_BYTES) -> DecodedImage:
    """Decode an upload to upright RGB; refuse unsupported formats (415), bombs (413: over ``max_pixels`` or
    ``max_bytes`` decoded, from the header) and broken files (400)."""
    fmt = sniff_format(data)
    if fmt is None:
        raise ApiError(400, "not_an_image", f"the upload is not an image ({_describe(data)}); send {_SUPPORTED_TEXT}")
    if fmt not in SUPPORTED_FORMATS:
        raise ApiError(415, "unsupported_type", f"{fmt} images are not accepted; send {_SUPPORTED_TEXT}")
    try:
        im = Image.open(io.BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError as err:
        raise ApiError(413, "too_many_pixels", f"image refused as a decompression bomb ({err})") from None
    except Exception as err:  # Pillow raises many types for a broken header
        raise ApiError(400, "corrupt_image", f"cannot read the {fmt} header ({_reason(err)})") from None
    try:
        w, h = im.size
        if w * h > max_pixels:
            raise ApiError(413, "too_many_pixels", f"the image is {w}x{h} = {w * h} pixels, over the limit of "
                           f"{max_pixels} pixels")
        try:
            check_decoded_size("the image", im.mode, w, h, None, max_bytes)
        except ImageLoadError as err:
            raise ApiError(413, "too_many_bytes", str(err)) from None
        if w < 1 or h < 1:
            raise ApiError(400, "corrupt_image", f"the image has no pixels ({w}x{h})")
        try:
            im.load()
            rgb = to_rgb_array(im)
        except Exception as err:  # truncated data, bad chunks, unsupported modes
            raise ApiError(400, "corrupt_image", f"cannot decode the {fmt} image ({_reason(err)})") from None
    finally:
        im.close()
    return DecodedImage(rgb, fmt)


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    text = re.sub(r" at 0x[0-9a-fA-F]+", "", text)  # Pillow's reprs name memory addresses: nothing for a client
    return f"{type(err).__name__}: {text[:200]}" if text else type(err).__name__


def _describe(data: bytes) -> str:
    head = data[:64]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"{len(data)} bytes starting {head[:8].hex(' ')}"
    if text.isprintable() or all(c.isprintable() or c.isspace() for c in text):
        return f"{len(data)} bytes of text"
    return f"{len(data)} bytes starting {head[:8].hex(' ')}"


def options_from(query: Iterable[tuple[str, str]], fields: Iterable[tuple[str, str]], max_faces_limit: int,
                 can_detect: bool) -> tuple[int, bool]:
    """Validate the request options (query parameters or form fields): ``max_faces`` and ``detect``."""
    allowed = ("max_faces", "detect")
    merged: dict[str, str] = {}
    for source, where in ((query, "query parameter"), (fields, "form field")):
        for key, value in source:
            if key not in allowed:
                raise ApiError(422, "bad_option", f"unknown {where} {key!r}; the options are "
                               f"{', '.join(allowed)}")
            if key in merged and merged[key] != value:
                raise ApiError(422, "bad_option", f"{key!r} given twice with different values")
            merged[key] = value
    max_faces = max_faces_limit
    if "max_faces" in merged:
        raw = merged["max_faces"].strip()
        if not raw.isdigit() or len(raw) > 9 or not 1 <= int(raw) <= max_faces_limit:
            raise ApiError(422, "bad_option", f"max_faces must be a whole number from 1 to {max_faces_limit}, "
                           f"got {merged['max_faces'][:40]!r}")
        max_faces = int(raw)
    detect = True
    if "detect" in merged:
        raw = merged["detect"].strip().lower()
        if raw in ("true", "1", "yes", "on"):
            detect = True
        elif raw in ("false", "0", "no", "off"):
            detect = False
        else:
            raise ApiError(422, "bad_option", f"detect must be true or false, got {merged['detect'][:40]!r}")
    if detect and not can_detect:
        raise ApiError(422, "bad_option", "this server has no face detector; send detect=false with face crops")
    return max_faces, detect
