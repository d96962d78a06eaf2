"""Fetch the pinned onnxruntime-web files the in-browser page needs, and check them against their recorded sha256.

Why a script and not a CDN: the exported page (``poster-fer export --format web``) must work offline and load
nothing from another origin, so the runtime ships inside the package, at one pinned version, with its hashes
recorded in ``src/poster_fer/web/runtime/runtime.json``. Only the WASM CPU path is kept (``ort.wasm.min.mjs``, its
Emscripten glue and the SIMD WebAssembly binary): the WebGPU/WebNN builds would add tens of megabytes.

Usage::

    python scripts/fetch_onnxruntime_web.py            # download the pinned tarball, verify, extract the files
    python scripts/fetch_onnxruntime_web.py --check    # verify the files already in place (no network)
    python scripts/fetch_onnxruntime_web.py --tarball onnxruntime-web-1.31.1.tgz   # use a tarball you have
    python scripts/fetch_onnxruntime_web.py --pin 1.32.0   # maintainers: move the pin, record the new hashes

The tarball comes from ``npm pack onnxruntime-web@VERSION`` when npm is installed, else straight from the
registry URL recorded in runtime.json. Its sha256 must match the record before anything is extracted.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

RUNTIME = Path(__file__).resolve().parents[1] / "src" / "poster_fer" / "web" / "runtime"
RECORD = RUNTIME / "runtime.json"
PACKAGE = "onnxruntime-web"
#: The files of the WASM CPU path, by their path inside the npm tarball.
WANTED = ("package/dist/ort.wasm.min.mjs", "package/dist/ort-wasm-simd-threaded.mjs",
          "package/dist/ort-wasm-simd-threaded.wasm")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tarball_url(version: str) -> str:
    return f"https://registry.npmjs.org/{PACKAGE}/-/{PACKAGE}-{version}.tgz"


def download(version: str) -> bytes:
    """The npm tarball of ``version``: ``npm pack`` when npm is there (it honours the user's registry settings),
    else a plain HTTPS download from the public registry."""
    npm = shutil.which("npm")
    if npm:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([npm, "pack", f"{PACKAGE}@{version}", "--silent"], cwd=tmp, check=True,
                           stdout=subprocess.DEVNULL)
            (tgz,) = Path(tmp).glob("*.tgz")
            return tgz.read_bytes()
    with urllib.request.urlopen(tarball_url(version), timeout=120) as response:  # noqa: S310 (fixed https URL)
        return response.read()


def extract(tarball: bytes) -> dict[str, bytes]:
    """The wanted files of the tarball, by their file name."""
    out: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tar:
        for member in WANTED:
            handle = tar.extractfile(member)
            if handle is None:
                raise SystemExit(f"{member} is missing from the {PACKAGE} tarball")
            out[Path(member).name] = handle.read()
    return out


def check_in_place(record: dict) -> list[str]:
    """Problems with the files now in the runtime folder (empty: all present with the recorded sha256)."""
    problems = []
    for name, entry in record["files"].items():
        path = RUNTIME / name
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif sha256(path.read_bytes()) != entry["sha256"]:
            problems.append(f"{path}: sha256 differs from runtime.json")
    return problems


def fetch(record: dict, tarball: bytes) -> None:
    """Verify the tarball and each file against the record, then write the files."""
    digest = sha256(tarball)
    if digest != record["tarball_sha256"]:
        raise SystemExit(f"{PACKAGE} {record['version']} tarball sha256 {digest} differs from runtime.json "
                         f"({record['tarball_sha256']}); refusing to extract it")
    files = extract(tarball)
    for name, data in files.items():
        if sha256(data) != record["files"][name]["sha256"]:
            raise SystemExit(f"{name}: sha256 differs from runtime.json; refusing to write it")
    for name, data in files.items():
        (RUNTIME / name).write_bytes(data)
        print(f"wrote {RUNTIME / name} ({len(data)} bytes, sha256 verified)")


def pin(version: str, tarball: bytes, record: dict) -> dict:
    """A new record for ``version`` (maintainers only: read the new release's licence before shipping it)."""
    files = extract(tarball)
    meta = json.loads(tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz").extractfile("package/package.json")
                      .read())
    if meta.get("license") != "MIT":
        raise SystemExit(f"{PACKAGE} {version} declares licence {meta.get('license')!r}, not MIT: check it first")
    return {**record, "version": version, "tarball": tarball_url(version), "tarball_sha256": sha256(tarball),
            "files": {name: {"source": f"package/dist/{name}", "bytes": len(data), "sha256": sha256(data)}
                      for name, data in files.items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="only verify the files in place (no network)")
    p.add_argument("--tarball", type=Path, help="an onnxruntime-web .tgz already downloaded")
    p.add_argument("--pin", metavar="VERSION", help="move the pin to VERSION and record its hashes")
    args = p.parse_args(argv)
    record = json.loads(RECORD.read_text())
    if args.check:
        problems = check_in_place(record)
        print("\n".join(problems) or f"{PACKAGE} {record['version']}: all {len(record['files'])} files verified")
        return 1 if problems else 0
    version = args.pin or record["version"]
    tarball = args.tarball.read_bytes() if args.tarball else download(version)
    if args.pin:
        record = pin(version, tarball, record)
        RECORD.write_text(json.dumps(record, indent=1) + "\n")
        print(f"pinned {PACKAGE} {version} in {RECORD}")
    fetch(record, tarball)
    return 0


if __name__ == "__main__":
    sys.exit(main())
