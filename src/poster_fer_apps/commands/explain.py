"""``poster-fer explain --weights CKPT IMAGE... --out DIR``: per-stream relevance maps over the face (Fig. 7)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from poster_fer.errors import UserError

from .common import add_device_argument, add_weights_arguments, check_operating_point, command_line, load_weights


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explain", help="relevance maps of the image and landmark streams, overlaid on the face",
        description="For each image: detect and align the face with the checkpoint's crop geometry (or take "
        "the image as the crop with --no-detect), predict, and write <stem>_explain.png (crop | image-stream "
        "map | landmark-stream map) with gradient-weighted attention rollout (Chefer, Gur, Wolf 2021), plus "
        "explain.json with the predictions and the raw maps. See docs/evaluation.md for the method.")
    add_weights_arguments(p)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--no-detect", action="store_true", help="the images are already face crops")
    p.add_argument("--detector", choices=("yunet", "haar"), default="yunet", help="face detector (default: yunet)")
    p.add_argument("--detector-model", metavar="PATH",
                   help="YuNet .onnx file (default: the bundled one; 'zoo': the OpenCV Zoo file, downloaded once)")
    p.add_argument("--geometry", help="crop geometry name when the checkpoint records none (default: rafdb)")
    p.add_argument("--all-faces", action="store_true", help="explain every detected face, not just the largest")
    p.add_argument("--class", dest="target", metavar="NAME", help="explain this class instead of the prediction")
    add_device_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_operating_point(args)  # an unknown point is refused before PyTorch or the weights load
    import torch

    from poster_fer.evaluation.explain import resolve_target

    model, rec, device = _load(args)
    target = None
    if args.target:
        try:
            target = resolve_target(args.target, rec.classes)
        except ValueError as e:
            raise UserError(str(e)) from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    skipped: dict[str, int] = {}
    name = getattr(model, "model_name", "model")
    for pred in rec.iter_predict(((p, p) for p in args.images), detect=not args.no_detect, return_crops=True):
        problem = pred.error if pred.error is not None else None if pred.faces else "no face found"
        if problem is not None:
            print(f"explain: skipped {pred.key}: {problem}", file=sys.stderr)
            reason = "unreadable image" if pred.error is not None else "no face"
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        faces = sorted(pred.faces, key=lambda f: f.box[2] * f.box[3], reverse=True)
        faces = faces if args.all_faces else faces[:1]
        for k, face in enumerate(faces):
            stem = Path(pred.key).stem + (f"_face{k + 1}" if len(faces) > 1 else "")
            records.append(_explain_face(model, rec, face, target, out / f"{stem}_explain.png", f"{name}: {stem}",
                                         str(pred.key)))
    summary = {"command": command_line(args, "explain", positional=("images",)), "model": name,
               "classes": rec.classes, "preprocessing": rec.preprocessing.to_dict(), "device": str(device),
               "torch": torch.__version__, "skipped": skipped, "results": records}
    (out / "explain.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    if skipped:
        print(f"explain: {len(records)} explained, skipped {skipped}", file=sys.stderr)
    if not records:
        raise UserError("no image could be explained (" + ", ".join(f"{k}: {v}" for k, v in skipped.items()) + ")")
    return 1 if skipped else 0


def _load(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """The model, a Recognizer around it (the predict pipeline gives the crops, so a map explains exactly the
    prediction ``poster-fer predict`` makes) and the device."""
    from poster_fer.devices import DeviceError, resolve_device
    from poster_fer.faces import get_geometry
    from poster_fer.inference import Recognizer

    try:
        device = resolve_device(args.device)
    except DeviceError as e:  # no CUDA, or not a device name
        raise UserError(f"--device: {e}") from None
    model = load_weights(args, device)
    if args.geometry:
        try:
            geometry = get_geometry(args.geometry).to_dict()
        except (TypeError, ValueError) as e:
            raise UserError(f"--geometry: {e}") from None
        model.card = dataclasses.replace(model.card, preprocessing={**model.card.preprocessing,
                                                                    "crop_geometry": geometry})
    rec = Recognizer.from_model(model, device=str(device), detector=None if args.no_detect else args.detector,
                                detector_model=args.detector_model)
    pre = rec.preprocessing
    if pre.geometry_assumed and not args.no_detect:
        print(f"explain: the checkpoint records no crop geometry; aligning with {pre.geometry.name!r} "
              "(set --geometry)", file=sys.stderr)
    return model, rec, device


def _explain_face(model: Any, rec: Any, face: Any, target: int | None, figure_path: Path, title: str,
                  image: str) -> dict[str, Any]:
    """One face's relevance maps, drawn to ``figure_path``; its record for explain.json."""
    import numpy as np
    import torch
    from PIL import Image

    from poster_fer.evaluation.explain import explain_figure, relevance_maps

    x = torch.from_numpy(rec.preprocessing.to_input(face.crop))[None].to(rec.device)
    maps = relevance_maps(model, x, target)
    size = x.shape[-1]
    shown = np.asarray(Image.fromarray(face.crop).resize((size, size), Image.BILINEAR))
    figure = explain_figure(shown, maps, 0, rec.classes, figure_path, title=title)
    record = face.to_record()  # the documented record keys ("scores")
    record.update({
        "image": image, "figure": str(figure), "target": rec.classes[int(maps["target"][0])],
        "maps": {s: None if maps[s] is None else {"method": maps[f"{s}_method"],
                                                  "values": np.round(maps[s][0], 5).tolist()}
                 for s in ("image", "landmark")},
    })
    print(f"{figure}: {face.label} ({100 * float(maps['probs'][0].max()):.1f}%)")
    return record
