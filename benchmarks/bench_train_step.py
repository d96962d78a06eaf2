"""Training images per second of one full step (forward, loss, backward, optimiser update) under each throughput
setting, on this machine: the one training-step benchmark.

Why: the CPU recipes are limited by how many epochs an hour buys, and the GPU target is a multiple of the
official code's training speed, so the settings that only change speed (attention kernel, memory format,
optimiser update, precision, ``torch.compile``, CUDA graphs) are chosen by measuring a training step of the
recipe's own model, loss, optimiser (SAM included: two passes), batch size and thread count. Weights are random
(they cost the same as trained ones); where the recipe caches landmark tokens, random stand-in tokens replace the
cache (the frozen landmark network never runs in training then).

Variants (``--variants``, comma-separated). Each changes only the settings it names; everything else follows
the recipe (``train.channels_last``, ``train.amp``):

* ``sdpa``: PyTorch's ``scaled_dot_product_attention``, the optimiser's per-parameter loop (the trainer's
  defaults);
* ``plain``: the explicit softmax(QK^T)V attention instead;
* ``plain_fused``: plus the optimiser's fused update;
* ``sdpa_fused_compile`` / ``plain_fused_compile``: plus ``torch.compile`` of the model;
* ``reference``: ``reference_poster.py`` (the official code's structure: fp32, explicit attention, NCHW, the
  frozen landmark network run every step and left in train mode, as upstream), where the recipe's model is the
  official POSTER v1; skipped, with the reason recorded, otherwise;
* ``eager``: poster-fer with no throughput setting at all (fp32, explicit attention, NCHW, per-parameter loop);
* ``opt``: SDPA, channels_last, fused update, fp32;
* ``bf16`` / ``bf16_compile``: ``opt`` under bf16 autocast, and that compiled;
* ``bf16_graphs``: ``bf16`` with the whole step (forward, loss, backward, capturable optimiser) captured once as
  a CUDA graph and replayed (CUDA only: on an H100 the eager step is bound by kernel-launch overhead).

Timing (``_harness``): every variant is built and stepped once first (``first_step_s``: compilation shows up
here), then ``--warmup`` untimed steps, then ``--rounds`` interleaved rounds, each timing every variant with
``torch.utils.benchmark.Timer.blocked_autorange(min_run_time=--min-run-time)``. ``img_s`` and ``step_ms`` come from
the median time per step; ``speedup`` is the ratio to the baseline (``reference`` when measured, else the first
variant measured); ``memory`` is the peak memory one more step adds.

    python benchmarks/bench_train_step.py --recipe ferplus_cpu
        --out benchmarks/results/speed/train_step/cpu-ferplus_cpu.json
    python benchmarks/bench_train_step.py --recipe rafdb_official --set optimizer.sam=null --device cuda \\
        --batch 128 --variants reference,opt,bf16,bf16_graphs --out train_step_gpu.json

Decisions: this merges the training-step half of the former ``poster-fer bench --train`` (official-structure
reference, eager, opt, bf16, bf16_graphs, bf16_compile; official loss and Adam hard-wired) into this recipe-based
script, so the official setting is now a recipe (``rafdb_official``: the official v1 loss, Adam at 4e-5; its SAM
can be switched off with ``--set optimizer.sam=null`` to time plain Adam steps as the old harness did) and the
loss and optimiser are always the recipe's. ``opt`` and the ``bf16`` variants use the fused optimiser update on
every device (the old harness used it only on CUDA). The reference runs without drop path (the official model
has it; it costs little). ``--steps`` became ``--rounds`` and ``--min-run-time``; ``--device`` (default: the
recipe's), ``--set`` (recipe overrides, as ``poster-fer train`` takes them) and ``--time-budget`` are new.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from _harness import (
    Unavailable,
    command_line,
    log,
    machine_info,
    now,
    parse_overrides,
    peak_memory_mb,
    reference_applicable,
    synchronize,
    time_interleaved,
    timing_entry,
    write_json,
)
from reference_poster import ReferencePoster

from poster_fer.devices import DeviceError, resolve_device
from poster_fer.models import set_fused_attention
from poster_fer.precision import autocast, resolve_precision
from poster_fer.provenance import git_state, load_average
from poster_fer_train.build import build_model
from poster_fer_train.losses import build_loss
from poster_fer_train.optim import build_optimizer
from poster_fer_train.recipe import RecipeError, load_recipe


@dataclass(frozen=True)
class Setting:
    """What one variant changes; ``None`` means "as the recipe says"."""

    description: str
    sdpa: bool = True
    fused: bool = False
    compile: bool = False
    channels_last: bool | None = None  # None: the recipe's train.channels_last
    precision: str | None = None  # None: the recipe's train.amp
    cuda_graphs: bool = False
    reference: bool = False


_OPT = {"fused": True, "channels_last": True}
VARIANTS: dict[str, Setting] = {
    "sdpa": Setting("SDPA attention, per-parameter optimiser loop (the trainer's defaults)"),
    "plain": Setting("explicit softmax(QK^T)V attention", sdpa=False),
    "plain_fused": Setting("explicit attention, fused optimiser update", sdpa=False, fused=True),
    "sdpa_fused_compile": Setting("SDPA, fused optimiser update, torch.compile", fused=True, compile=True),
    "plain_fused_compile": Setting("explicit attention, fused optimiser update, torch.compile", sdpa=False,
                                   fused=True, compile=True),
    "reference": Setting("official code structure (reference_poster.py): fp32, explicit attention, NCHW, landmark "
                         "network run in train mode (as upstream)", sdpa=False, channels_last=False,
                         precision="fp32", reference=True),
    "eager": Setting("poster-fer without throughput settings: fp32, explicit attention, NCHW, per-parameter "
                     "optimiser loop", sdpa=False, channels_last=False, precision="fp32"),
    "opt": Setting("fp32, SDPA, channels_last, fused optimiser update", precision="fp32", **_OPT),
    "bf16": Setting("bf16 autocast, SDPA, channels_last, fused optimiser update", precision="bf16", **_OPT),
    "bf16_compile": Setting("bf16 autocast, SDPA, channels_last, fused optimiser update, torch.compile",
                            precision="bf16", compile=True, **_OPT),
    "bf16_graphs": Setting("bf16 autocast, SDPA, channels_last, fused capturable optimiser; the whole step replayed "
                           "from a CUDA graph", precision="bf16", cuda_graphs=True, **_OPT),
}
DEFAULT_VARIANTS = ("sdpa", "plain", "plain_fused", "sdpa_fused_compile", "plain_fused_compile")


@dataclass
class Step:
    """A built variant: ``run()`` does one training step and returns its loss; ``row`` its resolved settings."""

    run: Callable[[], float]
    row: dict[str, Any]


def build_step(name: str, recipe: dict[str, Any], device: torch.device, batch: int) -> Step:
    """A fresh, seeded model (or the reference), its optimiser and loss, and fixed random inputs."""
    setting = VARIANTS[name]
    if setting.cuda_graphs and device.type != "cuda":
        raise Unavailable("CUDA graphs need a CUDA device")
    tr = recipe["train"]
    channels_last = bool(tr.get("channels_last") if setting.channels_last is None else setting.channels_last)
    precision = str(tr.get("amp") if setting.precision is None else setting.precision)
    dtype = resolve_precision(precision, device, "train.amp")
    torch.manual_seed(0)
    spec = {**recipe, "model": {**recipe["model"], "pretrained": {}}}  # random weights: same cost
    num_classes = int(spec["model"].get("config", {}).get("num_classes", 8))
    model = build_model(spec, num_classes, [])
    g = torch.Generator().manual_seed(0)
    size = int(model.cfg.input_size)
    x = torch.randn(batch, 3, size, size, generator=g).to(device)
    y = torch.randint(0, num_classes, (batch,), generator=g).to(device)
    kwargs: dict[str, Any] = {}
    if setting.reference:
        why = reference_applicable(model)
        if why is not None:
            raise Unavailable(why)
        net: torch.nn.Module = ReferencePoster(num_classes=num_classes, token_conv=bool(model.cfg.token_conv))
        del model
        net.to(device).train()  # the frozen landmark network stays in train mode, as in the official script

        def forward() -> torch.Tensor:
            return net(x)[0]
    else:
        set_fused_attention(model, setting.sdpa)
        net = model.to(device).train()
        if channels_last:
            net.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        if getattr(model, "use_landmark", False) and tr.get("landmark_cache"):
            kwargs["landmark_tokens"] = torch.randn(batch, 49, 512, generator=g).to(device)
        fwd = torch.compile(net) if setting.compile else net

        def forward() -> torch.Tensor:
            return fwd(x, **kwargs)

    opt_cfg = {k: v for k, v in recipe["optimizer"].items() if k != "fused"}
    if setting.fused:
        opt_cfg["fused"] = True
    optimizer = build_optimizer(net, opt_cfg)
    if setting.cuda_graphs:
        for group in optimizer.param_groups:
            group["capturable"] = True  # the step counter lives on the GPU, so the update can be captured
    criterion = build_loss(recipe.get("loss")).to(device)
    amp = autocast(device, dtype)
    if dtype is not None and setting.cuda_graphs:
        def amp() -> Any:  # autocast's weight cache cannot live in a graph
            return torch.autocast(device.type, dtype=dtype, cache_enabled=False)
    sam = hasattr(optimizer, "first_step")

    def forward_backward() -> torch.Tensor:
        with amp():
            logits = forward()
        loss = criterion(logits.float(), y)
        loss.backward()
        return loss

    def body() -> torch.Tensor:  # one step, gradients cleared by the caller
        loss = forward_backward()
        if sam:  # as the trainer does: climb, take the gradient there, return and step
            optimizer.first_step(zero_grad=True)
            forward_backward()
            optimizer.second_step()
        else:
            optimizer.step()
        return loss

    if setting.cuda_graphs:
        run = _graphed_step(body, optimizer)
    else:
        def run() -> float:
            optimizer.zero_grad(set_to_none=True)
            return float(body().detach())

    row = {"description": setting.description, "model": "reference" if setting.reference else "poster-fer",
           "sdpa": setting.sdpa, "fused": setting.fused, "compile": setting.compile,
           "channels_last": channels_last and not setting.reference,
           "precision": {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32"),
           "cuda_graphs": setting.cuda_graphs}
    return Step(run, row)


def _graphed_step(body: Callable[[], torch.Tensor], opt: torch.optim.Optimizer) -> Callable[[], float]:
    """A training step captured once as a CUDA graph (forward, loss, backward, optimiser) and then replayed.

    Inputs stay in fixed buffers; gradients are set to None before capture, so backward writes them fresh from the
    graph's own memory pool at every replay (the standard whole-network capture recipe).
    """
    state: dict[str, Any] = {}

    def step() -> float:
        if "graph" not in state:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up: autotuning and lazy allocations happen outside the graph
                for _ in range(3):
                    opt.zero_grad(set_to_none=True)
                    body()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            opt.zero_grad(set_to_none=True)
            with torch.cuda.graph(graph):
                state["loss"] = body()
            state["graph"] = graph
        state["graph"].replay()
        return float(state["loss"].detach())

    return step


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python benchmarks/bench_train_step.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="ferplus_cpu", help="recipe name or YAML file (default: ferplus_cpu)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="recipe overrides with YAML values (model.config.depth=2 optimizer.sam=null)")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help=f"comma-separated, from {list(VARIANTS)} (default: {','.join(DEFAULT_VARIANTS)})")
    p.add_argument("--device", help="cpu, cuda or auto (default: the recipe's device)")
    p.add_argument("--batch", type=int, default=None, help="default: the recipe's train.batch_size")
    p.add_argument("--threads", type=int, default=None, help="default: the recipe's train.threads")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant after the first")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (default 5)")
    p.add_argument("--min-run-time", type=float, default=1.0,
                   help="seconds each variant is timed per round (Timer.blocked_autorange; default 1.0)")
    p.add_argument("--time-budget", type=float, default=0.0,
                   help="seconds after which no further round starts (0 = no limit; one round always runs)")
    p.add_argument("--out", help="write the JSON results here")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = build_parser()
    given = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(given)
    t_start = time.perf_counter()
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or not names:
        p.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    try:
        recipe = load_recipe(args.recipe, parse_overrides(args.set, p.error))
        device = resolve_device(args.device or recipe.get("device"))
    except (RecipeError, DeviceError) as e:
        p.error(str(e))
    batch = args.batch or int(recipe["train"].get("batch_size", 64))
    threads = args.threads or int(recipe["train"].get("threads") or torch.get_num_threads())
    torch.set_num_threads(threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    record: dict[str, Any] = {
        "command": command_line(__file__, given), "created": now(), "git": git_state(),
        "machine": machine_info(device), "device": str(device),
        "recipe": recipe.get("name"), "model": recipe["model"]["name"], "batch": batch,
        "loss": recipe.get("loss"), "optimizer": recipe.get("optimizer"),
        "timing": "torch.utils.benchmark.Timer.blocked_autorange, interleaved rounds (see benchmarks/_harness.py)",
        "load_average_start": load_average(), "variants": {},
    }
    torch._dynamo.reset()
    steps: dict[str, Step] = {}
    skipped: dict[str, str] = {}
    failed: dict[str, str] = {}
    first: dict[str, tuple[float, float]] = {}
    for name in names:
        try:
            step = build_step(name, recipe, device, batch)
            t0 = time.perf_counter()
            loss = step.run()  # compilation, graph capture, lazy allocations
            synchronize(device)
            first[name] = (time.perf_counter() - t0, loss)
            for _ in range(args.warmup):
                step.run()
        except Unavailable as why:
            skipped[name] = str(why)
            log(f"{name} skipped: {why}", "train-step")
            continue
        except Exception as err:  # noqa: BLE001  (report the failure, keep the other variants)
            failed[name] = f"{type(err).__name__}: {err}"[:500]
            log(f"{name} failed: {failed[name]}", "train-step")
            continue
        steps[name] = step
        log(f"{name}: first step {first[name][0]:.2f} s", "train-step")
    deadline = t_start + args.time_budget if args.time_budget > 0 else None
    timings = time_interleaved({n: s.run for n, s in steps.items()}, args.rounds, args.min_run_time, threads,
                               deadline, label=f"training step, batch {batch}")
    baseline = "reference" if "reference" in timings else next(iter(timings), None)
    record["baseline"] = baseline
    for name, t in timings.items():
        row = {**steps[name].row, "first_step_s": round(first[name][0], 2), "first_loss": round(first[name][1], 4),
               "step_ms": round(t.median * 1e3, 1), "img_s": round(batch / t.median, 1),
               "speedup": round(timings[baseline].median / t.median, 3), **timing_entry(t, 1)}
        with contextlib.suppress(Exception):
            row["memory"] = peak_memory_mb(steps[name].run, device)
        record["variants"][name] = row
        log(f"{name:22s} {row['img_s']:8.1f} img/s  {row['step_ms']:8.1f} ms/step  x{row['speedup']:.3f}  "
            f"first {row['first_step_s']} s", "train-step")
    if skipped:
        record["skipped"] = skipped
    if failed:
        record["failed"] = failed
    fastest = min(timings, key=lambda n: timings[n].median, default=None)
    if fastest is not None:
        record["fastest_variant"] = {"name": fastest, "speedup": record["variants"][fastest]["speedup"],
                                     "img_s": record["variants"][fastest]["img_s"]}
    record["load_average_end"] = load_average()
    record["seconds"] = round(time.perf_counter() - t_start, 1)
    write_json(record, args.out)
    return record


if __name__ == "__main__":
    main()
