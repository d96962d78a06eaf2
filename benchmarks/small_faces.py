"""Faces in small and pre-cropped images: how often the photo pipeline finds exactly one face, and how accurate it
is, on FER+ test images as they ship (48 px grey) and enlarged (x2, x4), on crops with little margin, and on
photos of small faces in a group, with each small-input strategy of the Recognizer.

Why: pre-cropped face photos are how every FER dataset and many archives come, and a detector tuned for scenes
misses faces that fill the whole image. The strategies: ``pad`` (an edge-replicated margin around inputs under
320 px before detection) and ``whole`` (a face-sized input where the detector finds nothing is classified whole,
its record saying ``detection: whole_image``). The rule for defaults, written before this was run: a strategy is
on by default only if it raises the exactly-one-face rate on FER+ test (as shipped) and costs no accuracy through
the pipeline there, and finds the same faces on the larger photos.

    python benchmarks/small_faces.py --out benchmarks/results/eval/small_faces.json
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import cv2
import numpy as np
from _harness import command_line, log, now, write_json
from _photo import group_image

from poster_fer.assets import shared_path
from poster_fer.data import build_dataset
from poster_fer.inference import Recognizer
from poster_fer.provenance import cpu_flags, cpu_model, git_state, load_average
from poster_fer.samples import sample_path

STRATEGIES = {"detector only": {"whole_image_fallback": False},
              "pad": {"pad_small": True, "whole_image_fallback": False},
              "whole": {"whole_image_fallback": True},
              "pad+whole": {"pad_small": True, "whole_image_fallback": True}}


def fer_images(data: str, split: str, limit: int | None) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    ds = build_dataset("ferplus", data, split)
    n = len(ds) if limit is None else min(limit, len(ds))
    idx = np.linspace(0, len(ds) - 1, n).astype(int) if limit else np.arange(n)
    images = [np.repeat(np.asarray(ds.get_image(int(i)).convert("L"))[:, :, None], 3, axis=2) for i in idx]
    return images, np.asarray([ds.labels[int(i)] for i in idx]), list(ds.classes)


def through_pipeline(rec: Recognizer, images: list[np.ndarray], labels: np.ndarray, classes: list[str],
                     detect: bool = True) -> dict[str, Any]:
    """Faces found per image, and accuracy of the best face's label (no face counts as wrong)."""
    counts, right, whole = [], 0, 0
    t0 = time.perf_counter()
    for pred in rec.iter_predict(enumerate(images), detect=detect):
        counts.append(len(pred.faces))
        if pred.faces:
            right += pred.faces[0].label == classes[labels[pred.key]]
            whole += pred.faces[0].detection == "whole_image"
    counts_arr = np.asarray(counts)
    n = len(images)
    return {"images": n, "exactly_one": round(float((counts_arr == 1).mean()), 4),
            "none": int((counts_arr == 0).sum()), "several": int((counts_arr > 1).sum()),
            "whole_image": whole, "accuracy": round(right / n, 4),
            "seconds": round(time.perf_counter() - t0, 1)}


def tight_crops() -> list[np.ndarray]:
    """The sample face cut with 0-20% margin around its detected box, at 64-160 px."""
    rgb = cv2.cvtColor(cv2.imread(str(sample_path())), cv2.COLOR_BGR2RGB)
    x, y, w, h = Recognizer(backend=None).detect(rgb)[0].box
    out = []
    for margin in (0.0, 0.1, 0.2):
        x0, y0 = max(0, int(x - margin * w)), max(0, int(y - margin * h))
        crop = rgb[y0:int(y + h + margin * h), x0:int(x + w + margin * w)]
        for side in (64, 112, 160):
            out.append(cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA))
    return out


def small_group() -> np.ndarray:
    """A 640 x 480 photo with 12 copies of the sample face 20-40 px wide (the faces a CCTV frame holds)."""
    face = cv2.cvtColor(cv2.imread(str(sample_path())), cv2.COLOR_BGR2RGB)[60:330, 110:370]
    canvas = np.full((480, 640, 3), 120, np.uint8)
    for k in range(12):
        side = 20 + 2 * (k % 11)
        small = cv2.resize(face, (side, round(side * 270 / 260)), interpolation=cv2.INTER_AREA)
        r, c = divmod(k, 4)
        y, x = 60 + r * 140, 60 + c * 150
        canvas[y:y + small.shape[0], x:x + small.shape[1]] = small
    return canvas


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(shared_path("data", "fer2013")))
    p.add_argument("--split", default="test")
    p.add_argument("--upscaled-limit", type=int, default=800, help="FER+ images measured at x2 and x4")
    p.add_argument("--out", default="benchmarks/results/eval/small_faces.json")
    args = p.parse_args(argv)
    images, labels, classes = fer_images(args.data, args.split, None)
    results: dict[str, Any] = {}
    crop_path = through_pipeline(Recognizer(backend=None, detector=None), images, labels, classes, detect=False)
    results["fer_crop_path"] = crop_path
    log(f"crop path: {crop_path}")
    sample = np.linspace(0, len(images) - 1, args.upscaled_limit).astype(int)
    portrait = cv2.cvtColor(cv2.imread(str(sample_path())), cv2.COLOR_BGR2RGB)
    photos = {"portrait": portrait, "16-face photo": group_image(portrait), "small faces 20-40 px": small_group()}
    crops = tight_crops()
    for name, options in STRATEGIES.items():
        rec = Recognizer(backend=None, **options)
        row: dict[str, Any] = {"fer_x1": through_pipeline(rec, images, labels, classes)}
        for scale in (2, 4):
            big = [cv2.resize(images[i], None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR) for i in sample]
            row[f"fer_x{scale}"] = through_pipeline(rec, big, labels[sample], classes)
        row["tight_crops"] = [len(f) for f in rec.predict(crops)]
        row["photos"] = {k: [[round(v, 1) for v in f.box] for f in rec.predict(v)] for k, v in photos.items()}
        results[name] = row
        log(f"{name}: {row['fer_x1']} x2 {row['fer_x2']['exactly_one']} x4 {row['fer_x4']['exactly_one']} "
            f"crops {row['tight_crops']} photos {[len(v) for v in row['photos'].values()]}")
    record = {"benchmark": "faces in small and pre-cropped images (issue 37 item 1)",
              "command": command_line(__file__, sys.argv[1:] if argv is None else list(argv)), "git": git_state(),
              "machine": {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "load_average": load_average()},
              "date": now(), "split": args.split, "strategies": STRATEGIES, "results": results}
    write_json(record, args.out)
    return record


if __name__ == "__main__":
    main()
