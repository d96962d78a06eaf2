"""The timeline picture in docs/inference.md: ``poster-fer predict clip.mp4 --out DIR`` on a composed 7 s video.

The video (10 fps, 400 x 240) has two faces made from the sample portrait (``poster_fer.samples``) and the astronaut
(``$POSTER_FER_SHARED/samples/astronaut.png``; without it, the portrait mirrored):

* left, from the start: the portrait, which cross-fades (2-3 s) into the astronaut, warped onto the portrait's
  landmarks so the face stays in place (one track), and back again (5-6 s);
* right, from 1 s on: the astronaut, mirrored, slowly zooming in.

The real command then runs with the shipped default model and the bundled YuNet, and the timeline PNG it writes
is copied (as a 64-colour PNG) to ``--out-file``::

    python benchmarks/timeline_example.py [--out-file docs/images/timeline_example.png] [--keep DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from poster_fer.assets import shared_path
from poster_fer.faces import load_image
from poster_fer.inference import Recognizer
from poster_fer.samples import sample_path
from poster_fer_apps.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]
FPS, SECONDS, PANEL = 10, 7.0, (200, 240)  # panel (w, h)


def _landmarks(rec: Recognizer, rgb: np.ndarray) -> np.ndarray:
    faces = rec.predict(rgb)
    if not faces or faces[0].landmarks is None:
        raise SystemExit("no face with landmarks found in a sample image")
    return np.asarray(faces[0].landmarks, np.float32)


def _panel_around(rgb: np.ndarray, pts: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """A PANEL-sized view centred on the face whose landmarks are ``pts`` (eyes at about 40% height)."""
    w, h = PANEL
    eye_dist = float(np.linalg.norm(pts[1] - pts[0]))
    zoom = scale * (0.3 * w) / max(eye_dist, 1.0)
    centre = pts[:2].mean(axis=0)
    m = np.array([[zoom, 0, w / 2 - zoom * centre[0]], [0, zoom, 0.4 * h - zoom * centre[1]]], np.float32)
    return cv2.warpAffine(rgb, m, (w, h), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)


def compose(path: Path, rec: Recognizer) -> None:
    portrait = load_image(sample_path())
    astronaut_file = shared_path("samples", "astronaut.png")
    other = load_image(astronaut_file) if astronaut_file.exists() else np.ascontiguousarray(portrait[:, ::-1])
    p_pts, o_pts = _landmarks(rec, portrait), _landmarks(rec, other)
    # the other face warped onto the portrait's landmarks: a cross-fade keeps one face in one place
    m, _ = cv2.estimateAffinePartial2D(o_pts, p_pts)
    warped = cv2.warpAffine(other, m, portrait.shape[1::-1], flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)
    left_a, left_b = _panel_around(portrait, p_pts), _panel_around(warped, p_pts)
    mirrored, mirrored_pts = np.ascontiguousarray(other[:, ::-1]), o_pts.copy()
    mirrored_pts[:, 0] = other.shape[1] - 1 - mirrored_pts[:, 0]
    mirrored_pts[[0, 1]] = mirrored_pts[[1, 0]]
    mirrored_pts[[3, 4]] = mirrored_pts[[4, 3]]

    w, h = PANEL
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (2 * w, h))
    for i in range(int(SECONDS * FPS)):
        t = i / FPS
        mix = float(np.clip(t - 2.0, 0, 1)) if t < 4.5 else float(np.clip(6.0 - t, 0, 1))
        left = cv2.addWeighted(left_a, 1 - mix, left_b, mix, 0)
        right = (np.full((h, w, 3), 60, np.uint8) if t < 1.0
                 else _panel_around(mirrored, mirrored_pts, scale=0.8 + 0.06 * (t - 1.0)))
        writer.write(cv2.cvtColor(np.hstack([left, right]), cv2.COLOR_RGB2BGR))
    writer.release()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-file", type=Path, default=REPO / "docs" / "images" / "timeline_example.png")
    ap.add_argument("--keep", type=Path, default=None, help="also keep the video and everything written here")
    args = ap.parse_args()
    rec = Recognizer()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        clip = work / "clip.avi"
        compose(clip, rec)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = cli_main(["predict", str(clip), "--out", str(work / "out"), "--no-progress",
                             "--output", str(work / "records.jsonl")])
        print(err.getvalue().strip())
        if code != 0:
            raise SystemExit(f"poster-fer predict exited {code}")
        png = work / "out" / "clip.timeline.png"
        args.out_file.parent.mkdir(parents=True, exist_ok=True)
        Image.open(png).convert("RGB").quantize(64, method=Image.Quantize.MEDIANCUT).save(args.out_file,
                                                                                        optimize=True)
        if args.keep:
            shutil.copy(png, work / "timeline_full.png")
    print(f"wrote {args.out_file} ({args.out_file.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
