"""Training images per second of a recipe's model under each throughput setting, on this machine.

Why: the 60-minute CPU recipes are limited by how many epochs an hour buys, so the settings that only change
speed (attention kernel, optimiser update, ``torch.compile``) are chosen by measuring one full training step
(forward, loss, backward, optimiser) of the recipe's own model, batch size and thread count. Landmark tokens
are random stand-ins for the cache when the recipe caches them (the frozen network never runs in training
then); weights are random, which cost the same as trained ones.

Variants (``--variants``, comma-separated):

* ``sdpa``: PyTorch's ``scaled_dot_product_attention``, AdamW's per-parameter loop (the trainer's defaults);
* ``plain``: the explicit softmax(QK^T)V attention instead;
* ``plain_fused``: plus AdamW's fused update;
* ``sdpa_fused_compile`` / ``plain_fused_compile``: plus ``torch.compile`` of the model (first step timed apart).

    python benchmarks/bench_train_step.py --recipe ferplus_cpu --out benchmarks/results/train_step_ferplus_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from poster_fer.models import set_fused_attention
from poster_fer.provenance import cpu_flags, cpu_model, git_state, load_average
from poster_fer.training.losses import build_loss
from poster_fer.training.optim import build_optimizer
from poster_fer.training.recipe import load_recipe
from poster_fer.training.trainer import build_model

VARIANTS: dict[str, dict[str, bool]] = {
    "sdpa": {"sdpa": True, "fused": False, "compile": False},
    "plain": {"sdpa": False, "fused": False, "compile": False},
    "plain_fused": {"sdpa": False, "fused": True, "compile": False},
    "sdpa_fused_compile": {"sdpa": True, "fused": True, "compile": True},
    "plain_fused_compile": {"sdpa": False, "fused": True, "compile": True},
}


def measure(recipe: dict[str, Any], variant: dict[str, bool], batch: int, steps: int, warmup: int) -> dict[str, Any]:
    """One variant: a fresh model, ``warmup`` untimed steps after the first, then ``steps`` timed ones."""
    torch.manual_seed(0)
    spec = {**recipe, "model": {**recipe["model"], "pretrained": {}}}  # random weights: same cost
    num_classes = int(spec["model"].get("config", {}).get("num_classes", 8))
    model = build_model(spec, num_classes, [])
    set_fused_attention(model, variant["sdpa"])
    model.train()
    size = int(model.cfg.input_size)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, num_classes, (batch,))
    if recipe["train"].get("channels_last"):
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    kwargs = {}
    if getattr(model, "use_landmark", False) and recipe["train"].get("landmark_cache"):
        kwargs["landmark_tokens"] = torch.randn(batch, 49, 512)
    opt_cfg = {k: v for k, v in recipe["optimizer"].items() if k != "fused"}
    optimizer = build_optimizer(model, {**opt_cfg, **({"fused": True} if variant["fused"] else {})})
    criterion = build_loss(recipe.get("loss"))
    torch._dynamo.reset()
    net = torch.compile(model) if variant["compile"] else model

    def step() -> None:
        loss = criterion(net(x, **kwargs), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    per_step = (time.perf_counter() - t0) / steps
    return {**variant, "first_step_s": round(first, 2), "step_ms": round(per_step * 1e3, 1),
            "img_s": round(batch / per_step, 1)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="ferplus_cpu", help="recipe name or YAML file")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {list(VARIANTS)}")
    p.add_argument("--batch", type=int, default=None, help="default: the recipe's train.batch_size")
    p.add_argument("--threads", type=int, default=None, help="default: the recipe's train.threads")
    p.add_argument("--steps", type=int, default=15, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after the first")
    p.add_argument("--out", help="write the JSON results here")
    args = p.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    recipe = load_recipe(args.recipe)
    batch = args.batch or int(recipe["train"].get("batch_size", 64))
    threads = args.threads or int(recipe["train"].get("threads") or torch.get_num_threads())
    torch.set_num_threads(threads)
    given = argv if argv is not None else sys.argv[1:]
    record: dict[str, Any] = {
        "command": " ".join(["python", "benchmarks/bench_train_step.py", *given]),
        "git": git_state(),
        "machine": {"cpu": cpu_model(), "flags": cpu_flags(), "torch": torch.__version__,
                    "python": platform.python_version(), "threads": threads},
        "recipe": recipe.get("name"), "model": recipe["model"]["name"], "batch": batch,
        "load_average_start": load_average(), "variants": {},
    }
    for name in names:
        row = measure(recipe, VARIANTS[name], batch, args.steps, args.warmup)
        record["variants"][name] = row
        print(f"{name:22s} {row['img_s']:7.1f} img/s  {row['step_ms']:7.1f} ms/step  first {row['first_step_s']}s",
              flush=True)
    record["load_average_end"] = load_average()
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    main()
