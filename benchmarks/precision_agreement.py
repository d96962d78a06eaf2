"""Top-1 agreement of a reduced-precision forward pass with exact fp32 on FER+ test, for one model.

Why: the shipping rule of issue 23 (configs/table4_mfn64.yaml) lets the photo pipeline count a bf16 speed only
if bf16 and fp32 name the same class for >= 99.5% of FER+ test faces. Both passes use the model's own
calibration (class-prior correction and temperature, which is what the pipeline applies), so disagreements are
the ones a user would see.

    python benchmarks/precision_agreement.py --weights runs/table4_mfn64_baseline_s1/calibrated \\
        --out benchmarks/results/eval/table4_mfn64_baseline_s1.bf16_agreement.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np
import torch
from _harness import command_line, machine_info, write_json  # a sibling script, as python benchmarks/X.py runs it

from poster_fer import create_transform, load_model
from poster_fer.assets import shared_path
from poster_fer.data import build_dataset
from poster_fer.evaluation import run_evaluation
from poster_fer.hub import pretrained_path
from poster_fer.probabilities import get_logit_bias, get_temperature
from poster_fer.provenance import git_state, load_average

#: the rule's bar (configs/table4_mfn64.yaml)
MIN_AGREEMENT = 0.995


def agreement(reference: np.ndarray, other: np.ndarray) -> dict[str, Any]:
    """Share of samples whose predicted class is the same in both arrays, and how many differ."""
    reference, other = np.asarray(reference), np.asarray(other)
    if reference.shape != other.shape or reference.ndim != 1 or not len(reference):
        raise ValueError(f"need two equal-length, non-empty 1-D label arrays; got {reference.shape} and {other.shape}")
    same = reference == other
    return {"top1_agreement": round(float(same.mean()), 5), "disagreements": int((~same).sum()),
            "num_samples": int(len(same))}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=str(pretrained_path()), help="a model folder (default: the shipped default)")
    p.add_argument("--precision", default="bf16", choices=("bf16", "fp16"))
    p.add_argument("--data", default=str(shared_path("data", "fer2013")))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.weights)
    meta = model.meta
    test = build_dataset("ferplus", args.data, "test")
    kw = {"batch_size": args.batch_size, "transform": create_transform(meta["preprocessing"]),
          "temperature": get_temperature(meta), "logit_bias": get_logit_bias(meta), "progress": False}
    runs, seconds = {}, {}
    for precision in ("fp32", args.precision):
        t0 = time.perf_counter()
        runs[precision] = run_evaluation(model, test, precision=None if precision == "fp32" else precision, **kw)
        seconds[precision] = round(time.perf_counter() - t0, 1)
    y = runs["fp32"]["y_true"]
    out = agreement(runs["fp32"]["y_pred"], runs[args.precision]["y_pred"])
    record = {"benchmark": f"top-1 agreement of {args.precision} autocast with fp32 on FER+ test (calibrated logits)",
              "command": command_line(__file__, sys.argv[1:] if argv is None else argv),
              "weights": args.weights, "model": meta.get("model"), "git": git_state(),
              "machine": {**machine_info("cpu"), "load_average": load_average()},
              **out, "required": MIN_AGREEMENT, "meets_rule": out["top1_agreement"] >= MIN_AGREEMENT,
              "accuracy": {k: round(float((r["y_pred"] == y).mean()), 5) for k, r in runs.items()},
              "seconds": seconds}
    write_json(record, args.out)
    print(json.dumps({k: record[k] for k in ("top1_agreement", "disagreements", "meets_rule", "accuracy")}))
    return record


if __name__ == "__main__":
    main()
