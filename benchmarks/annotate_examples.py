"""The annotated pictures in docs/inference.md: what ``poster-fer predict --out`` draws on three kinds of photo.

Runs the real command (the shipped default model, the bundled YuNet) on

* ``group16``: a 1024 x 1024 photo of 16 faces, 4 x 4 tiles of 256 px alternating the sample portrait and the
  astronaut (``$POSTER_FER_SHARED/samples/astronaut.png``; without it, the portrait mirrored), drawn with
  ``--draw auto`` (16 faces: captions only);
* ``thumb160``: the sample portrait shrunk to 160 px wide (one face, ``auto`` = with panel where it fits);
* ``4000px``: the sample portrait enlarged to 4000 px high (one face of about 1200 px),

then fits each result inside ``--side`` x ``--side`` px (the thumbnail is shown at twice its size, nearest
neighbour, so its pixels stay visible) and stores it as a 64-colour PNG, so each stays well under 200 KB:

    python benchmarks/annotate_examples.py [--out-dir docs/images] [--side 800] [--draw auto]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from poster_fer.assets import shared_path
from poster_fer.faces import load_image
from poster_fer.samples import sample_path
from poster_fer_apps.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]


def group16(portrait: np.ndarray, other: np.ndarray | None) -> np.ndarray:
    """4 x 4 tiles of 256 px: the portrait and ``other`` (or the mirrored portrait) in a checkerboard."""
    side = min(portrait.shape[:2])
    a = cv2.resize(portrait[:side, :side], (256, 256), interpolation=cv2.INTER_AREA)
    if other is not None:
        side = min(other.shape[:2])
        b = cv2.resize(other[:side, :side], (256, 256), interpolation=cv2.INTER_AREA)
    else:
        b = a[:, ::-1]
    rows = [np.hstack([a if (r + c) % 2 == 0 else b for c in range(4)]) for r in range(4)]
    return np.ascontiguousarray(np.vstack(rows))


def inputs() -> dict[str, np.ndarray]:
    """The three input photos by name, RGB."""
    portrait = load_image(sample_path())
    astro_path = shared_path("samples", "astronaut.png")
    astro = load_image(astro_path)[20:276, 100:356] if astro_path.is_file() else None  # its face, as the bench
    h, w = portrait.shape[:2]
    return {
        "group16": group16(portrait[40:552], astro),  # square crop around the face
        "thumb160": cv2.resize(portrait, (160, round(160 * h / w)), interpolation=cv2.INTER_AREA),
        "4000px": cv2.resize(portrait, (round(4000 * w / h), 4000), interpolation=cv2.INTER_CUBIC),
    }


def save_small(rgb: np.ndarray, path: Path, side: int, colours: int = 64) -> int:
    """``rgb`` fitted inside ``side`` x ``side`` px as an optimised palette PNG; returns its size in bytes.

    Why a 64-colour palette: the photos are noisy (an upscaled JPEG), so a full-colour PNG of 800 px takes
    600 KB or more; 64 dithered colours keep the drawing sharp (flat colours, text) at about a quarter of that.
    """
    h, w = rgb.shape[:2]
    if max(h, w) < side // 3:  # a thumbnail: shown at twice its size, pixels kept sharp
        rgb = cv2.resize(rgb, (w * 2, h * 2), interpolation=cv2.INTER_NEAREST)
    elif max(h, w) > side:
        f = side / max(h, w)
        rgb = cv2.resize(rgb, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA)
    img = Image.fromarray(rgb).quantize(colors=colours, method=Image.Quantize.FASTOCTREE)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, optimize=True)
    return path.stat().st_size


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", type=Path, default=REPO / "docs" / "images")
    p.add_argument("--side", type=int, default=800, help="longest side of a stored picture (px)")
    p.add_argument("--draw", default="auto", help="draw mode passed to poster-fer predict")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "in", Path(tmp) / "out"
        src.mkdir()
        files = []
        for name, rgb in inputs().items():
            files.append(str(src / f"{name}.png"))
            cv2.imwrite(files[-1], cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        with contextlib.redirect_stdout(io.StringIO()):  # the records are not needed here
            code = cli_main(["predict", *files, "--out", str(out), "--draw", args.draw, "--no-progress"])
        if code != 0:
            raise SystemExit(f"poster-fer predict failed with exit status {code}")
        for name in ("group16", "thumb160", "4000px"):
            target = args.out_dir / f"annotate_{name}.png"
            size = save_small(load_image(out / f"{name}.png"), target, args.side)
            print(f"{target.relative_to(REPO) if target.is_relative_to(REPO) else target}: {size / 1024:.0f} KB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
