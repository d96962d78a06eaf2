"""How much a face's probabilities move when its detected landmarks move by a float32 rounding step.

Why: the browser (onnxruntime-web) and Python (OpenCV DNN) run the same YuNet file with different kernels, so
their landmarks differ in the last bits (measured: within 6e-5 px). cv2.warpAffine samples at 1/32-pixel steps,
so such a difference can move a few crop pixels by a grey level, and the model answers with different
probabilities. This measures that sensitivity on the Python pipeline alone: each face is re-aligned with its
landmarks shifted by uniform noise of +-``--noise`` px, ``--draws`` times, and the largest change of any class
probability is recorded. tests/test_web.py's end-to-end bound is set above the result (docs/browser.md).

    python benchmarks/landmark_sensitivity.py \
        --out benchmarks/results/robustness/landmark_noise-poster_v1_mfn64_image.ferplus.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from _harness import command_line, log, machine_info, now, write_json

from poster_fer import Recognizer
from poster_fer.assets import shared_path
from poster_fer.faces import align_face, load_image
from poster_fer.provenance import git_revision
from poster_fer.samples import sample_path


def images(count: int) -> list[tuple[str, np.ndarray]]:
    """The sample portrait and the first ``count`` FER+ test crops (as the browser parity test uses them)."""
    from poster_fer.data import build_dataset

    out = [("portrait", load_image(sample_path()))]
    ds = build_dataset("ferplus", shared_path("data", "fer2013"), "test")
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(count):
            path = Path(tmp) / f"fer{i:02d}.png"
            ds[i][0].convert("RGB").save(path)  # saved and read back: the pixels the browser test decodes
            out.append((f"ferplus_test_{i}", load_image(path)))
    return out


def face_sensitivity(rec: Recognizer, rgb: np.ndarray, landmarks: np.ndarray, noise: float, draws: int,
                     rng: np.random.Generator) -> float:
    """The largest probability change over ``draws`` landmark perturbations of one face."""
    geometry = rec.preprocessing.geometry
    base = rec.classify([align_face(rgb, landmarks, geometry)])[0]
    worst = 0.0
    for _ in range(draws):
        moved = landmarks + rng.uniform(-noise, noise, landmarks.shape).astype(np.float32)
        worst = max(worst, float(np.abs(rec.classify([align_face(rgb, moved, geometry)])[0] - base).max()))
    return worst


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ferplus", type=int, default=50, help="FER+ test crops besides the portrait (default 50)")
    parser.add_argument("--noise", type=float, default=6e-5, help="landmark noise, +- px (default 6e-5)")
    parser.add_argument("--draws", type=int, default=20, help="perturbations per face (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the JSON record here")
    args = parser.parse_args(argv)
    rec = Recognizer.from_checkpoint(backend="onnxruntime")
    rng = np.random.default_rng(args.seed)
    per_face = {}
    for name, rgb in images(args.ferplus):
        for k, face in enumerate(rec.detect(rgb)):
            if face.landmarks is not None:
                per_face[f"{name}/{k}"] = face_sensitivity(rec, rgb, np.asarray(face.landmarks, np.float32),
                                                           args.noise, args.draws, rng)
    values = np.array(list(per_face.values()))
    result = {
        "benchmark": "landmark_sensitivity", "subject": rec.card.display_name, "date": now(),
        "command": command_line(__file__, sys.argv[1:] if argv is None else argv), "git_revision": git_revision(),
        "machine": machine_info("cpu"), "noise_px": args.noise, "draws": args.draws, "faces": len(values),
        "max_probability_change": float(values.max()), "median": float(np.median(values)),
        "faces_over_1e-3": int((values > 1e-3).sum()), "per_face": per_face,
    }
    log(f"{len(values)} faces: max change {values.max():.4f}, {int((values > 1e-3).sum())} over 1e-3", "landmarks")
    write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
