"""Give a shipped FER+ model another operating point (a class-prior correction chosen on validation), measure it
once on test, and ship it as data in the model's metadata, record and ONNX file.

Why: the shipped models call many sad, angry and contempt faces neutral; the default point keeps FER+ accuracy
(it may cost at most half a point of validation accuracy), and a user who would rather have even per-class recall
asks for another point (``--operating-point balanced``) instead of retraining. Steps, in this order:

1. the model's uncorrected logits on FER+ validation; the class prior of the FER+ training labels;
2. ``tau`` by the named rule (:data:`poster_fer.evaluation.operating.PRIOR_RULES`) over the 0..1 grid, then one
   temperature fitted on the corrected validation logits;
3. FER+ test, once, at the new point: the full report (confusion, per class, reliability) and the neutral
   over-prediction per class, beside the default point's (from its release record's report);
4. the point written into the shipped folder (meta.json, the safetensors header, records.json) and the
   model.onnx file re-exported so the ONNX runtime offers it too.

    python benchmarks/operating_point.py --weights poster_v1_mfn64_image.ferplus --point balanced --rule balanced
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_runtime import fer_test_crops  # a sibling script (this folder is on sys.path when run)

from poster_fer import create_transform, load_model
from poster_fer.assets import shared_path
from poster_fer.card import ModelCard
from poster_fer.data import build_dataset
from poster_fer.evaluation import evaluate_dataset, expected_calibration_error, fit_temperature, run_evaluation
from poster_fer.evaluation.operating import (
    PRIOR_RULES,
    called_as,
    choose_prior_tau,
    prior_bias,
    prior_correction_grid,
)
from poster_fer.probabilities import POINTS_KEY, softmax, with_operating_point
from poster_fer.provenance import cpu_flags, cpu_model, git_revision, load_average
from poster_fer.weights import Preprocessing, get_weights
from poster_fer_train.release import add_operating_point, ship_onnx

REPO = Path(__file__).resolve().parents[1]


def _scores(m: dict[str, Any], classes: list[str]) -> dict[str, Any]:
    neutral = called_as(m["confusion"], classes, "neutral")
    return {"accuracy": m["accuracy"], "mean_class_accuracy": m["mean_class_accuracy"], "macro_f1": m["macro_f1"],
            "ece": m.get("ece"), "ece_calibrated": m.get("ece_calibrated"),
            "neutral_overprediction": neutral["rate"], "called_neutral": neutral,
            "per_class": {c: m["per_class"][c]["accuracy"] for c in classes}}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", required=True, help="a shipped weight set (poster-fer info --list)")
    p.add_argument("--point", default="balanced", help="the operating point's name (not 'default')")
    p.add_argument("--rule", choices=tuple(PRIOR_RULES), default="balanced")
    p.add_argument("--max-accuracy-drop", type=float, default=0.005, help="for rule mca_within_accuracy")
    p.add_argument("--data", default=str(shared_path("data", "fer2013")), help="folder with the FER+ CSVs")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--limit", type=int, default=None, help="smoke runs: this many val/test faces, nothing shipped")
    p.add_argument("--faces", type=int, default=256, help="FER+ test faces the ONNX file is checked on")
    args = p.parse_args(argv)
    t0 = time.time()
    import torch

    torch.set_num_threads(2)
    record = get_weights(args.weights)
    model = load_model(record.verify())
    classes = list(model.meta["classes"])
    raw = copy.deepcopy(model)
    raw.card = dataclasses.replace(raw.card, calibration={})  # the raw logits: no bias, no temperature
    tf = create_transform(model.meta["preprocessing"])

    def split(name: str, **kw: Any) -> Any:
        ds = build_dataset("ferplus", args.data, name, **kw)
        if args.limit:
            from poster_fer_train.loaders import subsample

            ds = subsample(ds, args.limit, 0, name)
        return ds

    # 1-2. the point, on validation only
    v = run_evaluation(raw, split("val"), batch_size=args.batch_size, transform=tf, desc="val")
    z, y = v["logits"].astype(np.float64), v["y_true"]
    train = build_dataset("ferplus", args.data, "train", label_mode="crossentropy")
    prior = np.asarray(train.targets, dtype=np.float64).mean(axis=0)
    grid = prior_correction_grid(z, y, prior, classes)
    best = choose_prior_tau(grid, args.rule, args.max_accuracy_drop)
    bias = prior_bias(prior, best["tau"])
    temperature = fit_temperature(z + bias, y)
    val = {k: best[k] for k in ("accuracy", "mean_class_accuracy", "neutral_overprediction")}
    val["ece_calibrated"] = expected_calibration_error(softmax((z + bias) / temperature, np.float64), y)
    print(f"[val] rule {args.rule}: tau {best['tau']}, accuracy {val['accuracy']:.4f}, mean class "
          f"{val['mean_class_accuracy']:.4f}, neutral over-prediction {val['neutral_overprediction']:.4f}, "
          f"T {temperature:.4f}")
    entry = {"logit_bias": [round(float(b), 6) for b in bias], "temperature": temperature, "prior_tau": best["tau"],
             "rule": args.rule, "description": f"class-prior correction tau {best['tau']} chosen on FER+ val by "
             f"rule {args.rule!r}: {PRIOR_RULES[args.rule]}", "val": val}

    # 3. test, once, at the new point
    report_dir = REPO / "benchmarks" / "results" / "eval" / f"{args.weights}.{args.point}"
    model.card = ModelCard.from_meta(with_operating_point({**model.card.to_meta(), POINTS_KEY: {args.point: entry}},
                                                          args.point))
    test_metrics = evaluate_dataset(model, split("test"), None if args.limit else report_dir,
                                    batch_size=args.batch_size, provenance={"operating_point": args.point})
    test = _scores(test_metrics, classes)
    entry["test"] = {k: test[k] for k in ("accuracy", "mean_class_accuracy", "neutral_overprediction")}
    print(f"[test] {args.point}: accuracy {test['accuracy']:.4f}, mean class {test['mean_class_accuracy']:.4f}, "
          f"neutral over-prediction {test['neutral_overprediction']:.4f}")
    default_report = REPO / "benchmarks" / "results" / "release" / args.weights / "metrics.json"
    default = _scores(json.loads(default_report.read_text()), classes) if default_report.is_file() else None
    result = {
        "weights": args.weights, "point": args.point, "rule": args.rule, "rule_text": PRIOR_RULES[args.rule],
        "command": "python benchmarks/" + " ".join(shlex.quote(a) for a in [Path(__file__).name, *sys.argv[1:]]),
        "git_revision": git_revision(), "date": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
        "machine": {"cpu_model": cpu_model(), "cpu_flags": cpu_flags(), "load_average": load_average()},
        "train_prior": [round(float(q), 5) for q in prior], "val_grid": grid, "chosen": entry,
        "test": test, "test_default_point": default,
        "default_point_source": str(default_report.relative_to(REPO)) if default else None,
        "report_dir": str(report_dir.relative_to(REPO)), "wall_time_s": None,
    }
    if args.limit:
        print("[smoke] --limit: nothing shipped or recorded")
        return result

    # 4. ship the point as data
    add_operating_point(args.weights, args.point, entry)
    prep = Preprocessing.from_dict(record.to_dict()["preprocessing"])
    sample = prep.batch([prep.prepare_crop(c) for c in fer_test_crops(args.faces)])
    ship_onnx(args.weights, sample=sample)
    result["wall_time_s"] = round(time.time() - t0, 1)
    out = REPO / "benchmarks" / "results" / "eval" / f"{args.weights}.{args.point}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"[ship] {args.point} added to {args.weights} (meta, record, model.onnx); record {out.relative_to(REPO)}")
    return result


if __name__ == "__main__":
    main()
