"""Finding the YuNet model file: the bundled copy, an explicit path, or the OpenCV Zoo's file (cache or download).

A YuNet export ships inside the package (``poster_fer/pretrained``, MIT, licence beside it) and is the default,
so face detection works offline right after installation and the default never downloads. Users who want the
Zoo's own ``face_detection_yunet_2023mar.onnx`` (or any other export) ask for it explicitly: by path, or with
the keyword ``"zoo"``, which takes it from the per-user cache and downloads it there on first use. The download
goes to a temporary file next to its destination and is renamed into place only after the sha256 matches, so
an interrupted or tampered download never leaves a file that a later run would trust.

The two files are different exports of the same detector and have different checksums: :data:`YUNET_SHA256`
pins the Zoo's download, :data:`BUNDLED_YUNET_SHA256` the bundled copy.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import DetectorError

__all__ = [
    "BUNDLED_YUNET_FILENAME",
    "BUNDLED_YUNET_SHA256",
    "YUNET_FILENAME",
    "YUNET_SHA256",
    "YUNET_URL",
    "DetectorError",
    "DetectorModelError",
    "YUNET_ZOO",
    "bundled_yunet_path",
    "default_cache_dir",
    "download_file",
    "resolve_yunet_model",
    "yunet_model_path",
]

log = logging.getLogger(__name__)

YUNET_FILENAME = "face_detection_yunet_2023mar.onnx"
YUNET_URL = (
    "https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/face_detection_yunet_2023mar.onnx"
)
YUNET_SHA256 = "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"

#: The YuNet export shipped as package data, and its sha256 (a different file from the Zoo's, see above).
BUNDLED_YUNET_FILENAME = "face_detection_yunet.onnx"
BUNDLED_YUNET_SHA256 = "ebafce4e3c118d6554634be5c27ab333b4c047a9a8c3faf1d7cf93101c22f0f0"
#: ``model_path`` keywords: the bundled file (also the default), or the Zoo's file from the cache / a download.
YUNET_BUNDLED = "bundled"
YUNET_ZOO = "zoo"

_CHUNK = 1 << 16




class DetectorModelError(DetectorError):
    """The detector model file is missing, could not be downloaded, failed its checksum, or cannot load."""


def default_cache_dir() -> Path:
    """Per-user cache: ``$POSTER_FER_CACHE`` if set, else ``~/.cache/poster-fer``."""
    env = os.environ.get("POSTER_FER_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "poster-fer"


def download_file(url: str, dest: str | os.PathLike[str], sha256: str, timeout: float = 30.0) -> Path:
    """Download ``url`` to ``dest``, which appears only once the content's sha256 equals ``sha256``.

    Raises :class:`DetectorModelError` on network errors, short reads (fewer bytes than the server's
    Content-Length) and checksum mismatches; in every failure case nothing is left at ``dest`` or beside it.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        received = 0
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    expected_len = resp.headers.get("Content-Length")
                    while chunk := resp.read(_CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
            except Exception as err:  # URLError, socket errors, http.client.IncompleteRead, bad URLs, ...
                raise DetectorModelError(f"download of {url} failed: {_reason(err)}") from err
        if expected_len is not None and expected_len.isdigit() and received != int(expected_len):
            raise DetectorModelError(
                f"download of {url} was cut short: got {received} of {expected_len} bytes"
            )
        actual = digest.hexdigest()
        if actual != sha256.lower():
            raise DetectorModelError(
                f"checksum mismatch for {url}: expected sha256 {sha256}, got {actual} ({received} bytes); "
                "the file was discarded"
            )
        os.replace(tmp, dest)
    except BaseException:  # including KeyboardInterrupt: never leave the partial file behind
        tmp.unlink(missing_ok=True)
        raise
    log.info("downloaded %s to %s", url, dest)
    return dest


def bundled_yunet_path() -> Path:
    """The YuNet file shipped in the package; a clear error if this installation lacks it."""
    path = Path(__file__).resolve().parent.parent / "pretrained" / BUNDLED_YUNET_FILENAME
    if not path.is_file():
        raise DetectorModelError(
            f"the bundled YuNet face detector model is missing from this installation ({path}); reinstall "
            f"poster-fer, pass a model file with --detector-model PATH, use --detector-model {YUNET_ZOO} to "
            "download the OpenCV Zoo's copy, or use --detector haar (weaker, no real landmarks)."
        )
    return path


def yunet_model_path(
    model_path: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> Path:
    """Choose the YuNet file: the bundled one unless the caller asked for another, so the default stays offline.

    ``"bundled"``, or ``None`` without ``cache_dir``: the bundled file. ``"zoo"``, or ``None`` with ``cache_dir``
    (an explicit request for a cache): the Zoo's file from the per-user cache (or ``cache_dir``), downloaded there
    when missing and ``download`` allows it, see :func:`resolve_yunet_model`. Anything else is a file path, used
    as is (the keywords are only recognised as ``str``: write ``./zoo`` or pass a ``Path`` for a file so named).
    """
    keyword = model_path if isinstance(model_path, str) else None
    if keyword == YUNET_BUNDLED or (model_path is None and cache_dir is None):
        return bundled_yunet_path()
    if keyword == YUNET_ZOO:
        model_path = None
    return resolve_yunet_model(model_path, cache_dir, download=download)


def resolve_yunet_model(
    model_path: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    url: str = YUNET_URL,
    sha256: str = YUNET_SHA256,
) -> Path:
    """Locate a non-bundled YuNet file: ``model_path`` if given, else the cache, else download it into the cache.

    An explicit path is used as is (any YuNet export OpenCV can read). A file already in the cache is
    trusted without re-hashing, so a user may drop a copy there by hand; files only get there from this
    module after passing the checksum.
    """
    if model_path is not None:
        path = Path(model_path).expanduser()
        if not path.is_file():
            raise DetectorModelError(f"YuNet model file not found: {path}")
        return path
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cached = cache / YUNET_FILENAME
    if cached.is_file():
        return cached
    help_text = (
        f"Download it from {url} (sha256 {sha256}) and place it at {cached}, "
        "pass its path with --detector-model PATH, leave --detector-model out to use the bundled copy, or use "
        "--detector haar (weaker, no real landmarks)."
    )
    if not download:
        raise DetectorModelError(f"YuNet face detector model not found at {cached}. {help_text}")
    log.info("YuNet model not cached; downloading %s", url)
    try:
        return download_file(url, cached, sha256)
    except DetectorModelError as err:
        raise DetectorModelError(f"YuNet face detector model is not available: {err}. {help_text}") from err
    except OSError as err:  # e.g. the cache directory cannot be created or written
        raise DetectorModelError(
            f"YuNet face detector model could not be stored in {cache}: {err}. {help_text}"
        ) from err


def _reason(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        return f"{err.reason} (offline?)"
    return f"{type(err).__name__}: {err}"
