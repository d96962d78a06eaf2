"""The photo-pipeline timing shared by bench_photo_pipeline.py and bench_runtime.py, free of PyTorch so it also
runs in the light (ONNX Runtime only) environment."""

from __future__ import annotations

import time
from typing import Any

import numpy as np


def group_image(rgb: np.ndarray, n: int = 4) -> np.ndarray:
    """``n x n`` tiles of the astronaut's face (alternately mirrored, so the tiles are not identical)."""
    tile = rgb[20:276, 100:356]
    rows = [np.hstack([tile if (r + c) % 2 == 0 else tile[:, ::-1] for c in range(n)]) for r in range(n)]
    return np.ascontiguousarray(np.vstack(rows))


def time_pipeline(rec: Any, image: np.ndarray, batch: int, repeats: int) -> dict[str, Any]:
    """Median seconds per stage over ``repeats`` runs (after one warm-up run) for one image."""
    prep = rec.preprocessing
    stages: dict[str, list[float]] = {"detect": [], "align": [], "preprocess": [], "forward": []}
    faces_found = 0
    for rep in range(repeats + 1):
        t0 = time.perf_counter()
        faces = rec.detect(image)
        t1 = time.perf_counter()
        crops = [prep.align(image, f.landmarks) for f in faces]
        t2 = time.perf_counter()
        pre = fwd = 0.0
        for s in range(0, len(crops), batch):
            a = time.perf_counter()
            x = prep.batch(crops[s:s + batch])
            b = time.perf_counter()
            rec.backend(x)
            pre += b - a
            fwd += time.perf_counter() - b
        if rep:  # the first run warms caches and lazy initialisation
            for k, v in zip(stages, (t1 - t0, t2 - t1, pre, fwd), strict=True):
                stages[k].append(v)
        faces_found = len(faces)
    med = {k: float(np.median(v)) for k, v in stages.items()}
    total = sum(med.values())
    return {"faces": faces_found, "batch_size": batch, "seconds": {k: round(v, 4) for k, v in med.items()},
            "total_seconds": round(total, 4), "faces_per_second": round(faces_found / total, 2) if total else None,
            "classify_faces_per_second": round(faces_found / (med["preprocess"] + med["forward"]), 2)}
