"""Accuracy against the strength of each degradation, for one or more models on FER+ test: the picture behind
the robustness table (docs/model-card.md).

Why a sweep beside robustness.py's fixed rows: one strength per degradation says little about where a model
falls off. Each curve applies :mod:`poster_fer.data.degrade` at increasing strength to the 48 px grey faces,
before each model's own preprocessing and calibration, and plots accuracy; the JSON keeps the numbers.

    python benchmarks/degradation_curves.py --weights src/poster_fer/pretrained/poster_v1_mfn64_image.ferplus \\
        NEW_MODEL --labels "old default" "degradation-trained" \\
        --out benchmarks/results/robustness/degradation_curves.json
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _harness import command_line, log, now, write_json
from PIL import Image
from robustness import accuracy_under

from poster_fer import load_model
from poster_fer.assets import shared_path
from poster_fer.data import build_dataset, degrade
from poster_fer.provenance import cpu_flags, cpu_model, git_state, load_average

#: degradation -> (axis label, strengths from none to strongest, function(uint8 array, strength))
SWEEPS: dict[str, tuple[str, list[float], Callable[[np.ndarray, float], np.ndarray]]] = {
    "blur": ("Gaussian sigma (px of the 48 px face)", [0, 0.5, 1.0, 1.5, 2.0],
             lambda a, s: degrade.gaussian_blur(a, s)),
    "jpeg": ("JPEG quality", [100, 50, 30, 15, 8], lambda a, q: degrade.jpeg(a, int(q))),
    "low resolution": ("face width (px)", [48, 32, 24, 16, 12], lambda a, s: degrade.low_resolution(a, int(s))),
    "brightness": ("brightness factor", [0.4, 0.7, 1.0, 1.4, 1.8], lambda a, f: degrade.adjust_brightness(a, f)),
}


def perturbation(fn: Callable[[np.ndarray, float], np.ndarray],
                 strength: float) -> Callable[[Image.Image], Image.Image]:
    return lambda im: Image.fromarray(fn(np.asarray(im), strength))


def plot(curves: dict[str, Any], labels: list[str], path: Path, subset: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5))
    for ax, (name, (axis, strengths, _)) in zip(axes.flat, SWEEPS.items(), strict=True):
        for label in labels:
            acc = [100 * r["accuracy"] for r in curves[label][name]]
            ax.plot(range(len(strengths)), acc, marker="o", label=label)
        ax.set_xticks(range(len(strengths)), [f"{s:g}" for s in strengths])
        ax.set_title(name)
        ax.set_xlabel(axis)
        ax.set_ylabel("FER+ test accuracy (%)")
        ax.grid(alpha=0.3)
    axes.flat[0].legend()
    fig.suptitle(f"Accuracy against degradation strength ({subset})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("weights", nargs="+", help="saved models (folders or .safetensors)")
    p.add_argument("--labels", nargs="+", default=None, help="one per model (default: the paths)")
    p.add_argument("--data", default=str(shared_path("data", "fer2013")))
    p.add_argument("--split", default="test", choices=("val", "test"))
    p.add_argument("--limit", type=int, default=None, help="an evenly spread subset of this many faces (each point "
                   "then has a standard error of about 1 point at 1,000 faces)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/robustness/degradation_curves.json"))
    args = p.parse_args(argv)
    labels = args.labels or args.weights
    if len(labels) != len(args.weights):
        p.error("give one --labels entry per model")
    torch.set_num_threads(2)
    data = build_dataset("ferplus", args.data, args.split)
    if args.limit:
        from poster_fer.data import DatasetSubset

        data = DatasetSubset(data, np.linspace(0, len(data) - 1, args.limit).astype(int), split=f"{args.split} "
                             f"({args.limit} evenly spread)")
    curves: dict[str, Any] = {}
    for label, weights in zip(labels, args.weights, strict=True):
        model = load_model(weights)
        curves[label] = {}
        for name, (_, strengths, fn) in SWEEPS.items():
            t0 = time.time()
            curves[label][name] = [{"strength": s, **accuracy_under(model, model.meta, data, perturbation(fn, s))}
                                   for s in strengths]
            log(f"{label} {name}: {[r['accuracy'] for r in curves[label][name]]} ({time.time() - t0:.0f} s)")
    png = args.out.with_suffix(".png")
    plot(curves, labels, png, f"FER+ {data.report.split}: {len(data)} faces")
    record = {"benchmark": f"FER+ {args.split} accuracy against degradation strength",
              "command": command_line(__file__, sys.argv[1:] if argv is None else list(argv)), "git": git_state(),
              "machine": {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "load_average": load_average()},
              "date": now(), "models": dict(zip(labels, args.weights, strict=True)), "split": args.split,
              "faces": len(data),
              "sweeps": {k: {"axis": v[0], "strengths": v[1]} for k, v in SWEEPS.items()}, "curves": curves,
              "plot": str(png)}
    write_json(record, args.out)
    return record


if __name__ == "__main__":
    main()
