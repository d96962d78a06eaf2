"""Faces per second for the whole photo pipeline (detect + align + classify) on this machine's CPU.

Measures ``poster_v1`` (the official RAF-DB architecture) and a CPU-sized POSTER (the model section of
``configs/ferplus_cpu.yaml`` when that recipe exists, else a fixed small config) with random weights, which
cost the same as trained ones; ``--cpu-weights CKPT`` measures a trained CPU-sized checkpoint instead, with its
own preprocessing (grey, crop geometry, input size). Two inputs:

* ``group``: one image holding 16 copies of the astronaut's face (4x4 tiles), classified with batch sizes 1
  and 16, so the batch effect on the classifier is visible;
* ``portrait``: the single-face astronaut photo, one face per image, batch 1 (the "label my photo" case).

Each stage is timed separately: ``detect`` (YuNet on the whole image), ``align`` (5-point warps to the crop
geometry), ``preprocess`` (grey/resize/normalise) and ``forward`` (the model). The classify stage is also run
under bf16 autocast. Writes JSON with the command, git revision, machine description and load average.

    python benchmarks/bench_photo_pipeline.py [--repeats 3]
        [--out benchmarks/results/speed/photo_pipeline/cpu-poster_v1_mfn64_image.ferplus.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _photo import group_image, time_pipeline  # this folder is on sys.path (scripts run from it)

from poster_fer import create_model
from poster_fer.assets import shared_path
from poster_fer.faces import get_geometry, load_image
from poster_fer.inference import Recognizer, TorchBackend
from poster_fer.provenance import cpu_flags, cpu_model, git_state, load_average

REPO = Path(__file__).resolve().parents[1]
CPU_MODEL_FALLBACK: dict[str, Any] = {
    "name": "poster_v1", "depth": 2, "dims": (256, 128, 64), "heads": 4, "image_tokens": "pool",
    "backbone_size": 56, "landmark_size": 112, "input_size": 112,
    "ir": {"units": [2, 2, 2], "widths": [32, 64, 128], "stem_width": 32},
}


def cpu_model_config() -> tuple[dict[str, Any], str]:
    """The CPU-sized model: the recipe's model section if the recipe exists, else the fallback above."""
    recipe = REPO / "configs" / "ferplus_cpu.yaml"
    if recipe.is_file():
        import yaml

        section = dict((yaml.safe_load(recipe.read_text()) or {}).get("model") or {})
        name = section.get("name")
        if name:  # a recipe's model section: name, config (the fields), pretrained (files, not needed here)
            fields = {k: v for k, v in dict(section.get("config") or {}).items() if k != "num_classes"}
            return {"name": name, **fields}, str(recipe.relative_to(REPO))
    return dict(CPU_MODEL_FALLBACK), "built-in fallback config"


def build(config: dict[str, Any], num_classes: int = 8) -> torch.nn.Module:
    cfg = dict(config)
    name = cfg.pop("name")
    model = create_model(name, num_classes=num_classes, **cfg).eval()
    size = int(model.cfg.input_size)
    model.card = dataclasses.replace(
        model.card, classes=tuple(f"c{i}" for i in range(num_classes)),
        preprocessing={"input_size": size, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                       "channel_order": "RGB", "grayscale": False, "crop_geometry": get_geometry("rafdb").to_dict()})
    return model


def time_classify(backend: TorchBackend, rec: Recognizer, crops: list[np.ndarray], batch: int,
                  repeats: int) -> float:
    """Faces per second of preprocess + forward alone."""
    x = rec.preprocessing.batch(crops[:batch])
    backend(x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for s in range(0, len(crops), batch):
            backend(rec.preprocessing.batch(crops[s:s + batch]))
        times.append(time.perf_counter() - t)
    return round(len(crops) / float(np.median(times)), 2)


def machine() -> dict[str, Any]:
    flags = cpu_flags()
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
            "torch_default_threads": torch.get_num_threads(),
            "python": platform.python_version(), "platform": platform.platform(),
            "cpu_bf16_support": flags["avx512_bf16"] or flags["amx_bf16"],
            "opencv": __import__("cv2").__version__}


def bench_model(key: str, config: dict[str, Any], portrait: np.ndarray, group: np.ndarray, yunet: str,
                repeats: int, weights: str | None = None, autocast: str | None = None) -> dict[str, Any]:
    """Every measurement for one model at the current thread count (a trained checkpoint when ``weights``)."""
    if weights:  # the real thing: its own preprocessing (grey, crop geometry, size) and classes
        from poster_fer import load_model

        model = load_model(weights).eval()
    else:
        model = build(config)
    rec = Recognizer.from_model(model, detector="yunet", detector_model=yunet, autocast=autocast)
    entry: dict[str, Any] = {"input_size": int(model.cfg.input_size)}
    for batch in (1, 16):
        entry[f"group16_batch{batch}"] = time_pipeline(rec, group, batch, repeats)
        print(f"{key:9s} group of 16, batch {batch:2d}: {entry[f'group16_batch{batch}']}", file=sys.stderr)
    entry["portrait_batch1"] = time_pipeline(rec, portrait, 1, repeats)
    print(f"{key:9s} portrait, batch 1: {entry['portrait_batch1']}", file=sys.stderr)
    # 8 faces in one batch: enough to compare the dtypes, short enough where bf16 is emulated (slow)
    crops = [rec.preprocessing.align(group, f.landmarks) for f in rec.detect(group)][:8]
    bf16 = TorchBackend(model, autocast="bf16")
    entry["classify_faces_per_second"] = {
        "fp32_batch8": time_classify(TorchBackend(model), rec, crops, 8, repeats),
        "bf16_autocast_batch8": time_classify(bf16, rec, crops, 8, repeats),
    }
    print(f"{key:9s} classify only: {entry['classify_faces_per_second']}", file=sys.stderr)
    return entry


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, nargs="+", default=None,
                   help="torch thread counts to measure, e.g. 1 2 (default: torch's default)")
    p.add_argument("--yunet", default=str(shared_path("models", "yunet", "face_detection_yunet.onnx")))
    p.add_argument("--image", default=str(shared_path("samples", "astronaut.png")))
    p.add_argument("--models", nargs="+", default=["cpu", "poster_v1"], choices=("cpu", "poster_v1"))
    p.add_argument("--cpu-weights", default=None, metavar="CKPT",
                   help="measure this trained checkpoint as the CPU-sized model (e.g. runs/ferplus_cpu/best)")
    p.add_argument("--autocast", choices=("bf16",), default=None,
                   help="run the pipeline's classify stage under bf16 autocast (a reduced-precision path: its "
                        "top-1 agreement with fp32 must be measured before it counts; default: exact fp32)")
    p.add_argument("--note", default="", help="free text stored in the JSON (e.g. what else loaded the machine)")
    p.add_argument("--out", type=Path, default=(REPO / "benchmarks/results/speed/photo_pipeline"
                                                   / "cpu-poster_v1_mfn64_image.ferplus.json"))
    args = p.parse_args(argv)
    mach = machine()
    portrait = load_image(args.image)
    group = group_image(portrait)
    cpu_cfg, cpu_src = cpu_model_config()
    configs = {"cpu": cpu_cfg, "poster_v1": {"name": "poster_v1"}}
    models = {key: {"config": configs[key], "params": sum(t.numel() for t in build(configs[key]).parameters())}
              for key in args.models}
    if "cpu" in models:
        models["cpu"]["config_source"] = cpu_src
        if args.cpu_weights:  # the checkpoint's own network, not the recipe's
            from poster_fer import load_model

            trained = load_model(args.cpu_weights)
            models["cpu"] = {"config": {"name": trained.model_name, **trained.meta["config"]},
                             "params": sum(t.numel() for t in trained.parameters()),
                             "config_source": args.cpu_weights, "weights": args.cpu_weights}
    runs: dict[str, Any] = {}
    for threads in args.threads or [torch.get_num_threads()]:
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        load_before = load_average()
        results = {key: bench_model(key, configs[key], portrait, group, args.yunet, args.repeats,
                                    args.cpu_weights if key == "cpu" else None, args.autocast)
                   for key in args.models}
        runs[f"threads_{threads}"] = {"torch_threads": threads, "load_average_before": load_before,
                                      "load_average_after": load_average(),
                                      "results": results}
    report = {
        "benchmark": "photo pipeline: YuNet detect + 5-point align + POSTER classify "
                     f"({'trained CPU-sized checkpoint' if args.cpu_weights else 'random weights'})",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "git": git_state(),
        "machine": mach,
        "repeats": args.repeats,
        "pipeline_autocast": args.autocast,
        "inputs": {"group16": list(group.shape), "portrait": list(portrait.shape)},
        "models": models,
        "notes": "faces_per_second = faces / (detect + align + preprocess + forward), medians over repeats; "
                 "detect runs once per image, so the group image spreads it over 16 faces. bf16 is autocast on "
                 "the classify stage only. Load averages are 1/5/15-minute values of the whole machine.",
        "note": args.note,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
