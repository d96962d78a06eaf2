"""Inference speed of poster-fer's fast paths, measured against a baseline in the same process.

Every variant is timed in the same process as the baseline, interleaved round by round (``_harness``: one short
``torch.utils.benchmark.Timer.blocked_autorange`` of every variant per round, the order rotating, so a busy
machine slows them alike), and reported as faces/s (from the median time per call), latency percentiles, peak
memory and a *ratio to the baseline*, next to an output-agreement check: relative error for exact paths, top-1
agreement for reduced precision. The baseline is ``reference_poster.py`` in this folder (the official code's
structure, eager fp32) where the model is the official POSTER v1, else poster-fer's own eager fp32 model.

Variants (``--variants``; the ``compile`` ones with ``--compile``, timed in a pass of their own at the largest
batch size after everything else, because compiling is slow and specialises on the batch size):

* ``reference``: the official-structure reference (baseline when available);
* ``eager``: poster-fer as built, fp32, explicit attention;
* ``sdpa`` / ``fold_bn`` / ``channels_last``: one exact fast path each;
* ``fp32_opt``: every exact path (:func:`poster_fer.fastpath.optimize_for_inference`);
* ``bf16``: ``fp32_opt`` under bf16 autocast (reduced precision);
* ``bf16_cast``: ``fp32_opt`` with weights and activations stored in bf16 (no autocast casts);
* ``fp32_graphs`` / ``bf16_graphs``: ``fp32_opt`` / ``bf16_cast`` replayed from CUDA graphs (CUDA only);
* ``compile`` / ``bf16_compile``: the same through ``torch.compile``;
* ``onnxruntime``: the exported ONNX graph in ONNX Runtime (CPU), numpy in and out.

Training steps are measured by ``bench_train_step.py`` (the one training-step benchmark), not here.

    python benchmarks/bench_inference.py --model poster_v1 --batch-sizes 1,32 --threads 2 \\
        --variants reference,eager,sdpa,fold_bn,channels_last,fp32_opt,bf16,onnxruntime,compile \\
        --agreement-images 256 --out result.json

Decisions: this script was ``poster-fer bench`` (``poster_fer_apps/commands/bench.py``); it left the CLI because a
benchmark is not part of what the package offers its users. ``poster_fer`` must be importable (installed, or
``PYTHONPATH=src``); there is no stand-in for missing dependencies. Timing moved from hand-rolled
``perf_counter`` calls to ``Timer``; the CPU-time ratio the old harness also reported is gone (``Timer``
measures wall time; the load averages at start and end stay in the record). ``--reps`` became ``--rounds``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from _harness import (
    Timing,
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

from poster_fer.precision import resolve_precision
from poster_fer.provenance import git_state, load_average

ALL_VARIANTS = ("reference", "eager", "sdpa", "fold_bn", "channels_last", "fp32_opt", "bf16", "bf16_cast",
                "fp32_graphs", "bf16_graphs", "compile", "bf16_compile", "onnxruntime")
COMPILED = ("compile", "bf16_compile")
CUDA_ONLY = ("fp32_graphs", "bf16_graphs")
EXACT = {"reference": True, "eager": True, "sdpa": True, "fold_bn": True, "channels_last": True,
         "fp32_opt": True, "bf16": False, "bf16_cast": False, "fp32_graphs": True, "bf16_graphs": False,
         "compile": True, "bf16_compile": False, "onnxruntime": True}
RANDOM_WEIGHTS_NOTE = (
    "Weights are the parity recipe's deterministic random tensors, not trained ones. Top-1 agreement measured "
    "with them is a weaker test than with trained weights: their logits lie close together (small top-1 "
    "margins, so rounding flips near-ties a trained model would not have) and their activations do not have a "
    "trained network's scales, so the number says little about agreement on a real checkpoint."
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python benchmarks/bench_inference.py",
        description="Time poster-fer's inference fast paths against the official-structure reference or the "
                    "eager model, in one process, interleaved; report faces/s, latency percentiles, peak memory, "
                    "ratios to the baseline and output agreement.")
    p.add_argument("--model", default="poster_v1", help="registered model name (default: poster_v1)")
    p.add_argument("--weights", help="a saved poster-fer model (directory or .safetensors) instead of --model")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for --model")
    p.add_argument("--recipe-keys", help="official key list (*.keys.json) to generate the parity-recipe weights "
                   "from ('' for a seeded initialisation); default for poster_v1: "
                   "shared/parity/poster_v1_rafdb.keys.json if present")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    p.add_argument("--batch-sizes", default="1,32", help="comma-separated batch sizes (default: 1,32)")
    p.add_argument("--variants", help=f"comma-separated subset of {', '.join(ALL_VARIANTS)}")
    p.add_argument("--compile", action="store_true", help="add the torch.compile variants")
    p.add_argument("--baseline", choices=("auto", "reference", "eager"), default="auto")
    p.add_argument("--rounds", type=int, default=0, help="interleaved rounds per batch size (default: by batch)")
    p.add_argument("--min-run-time", type=float, default=0.2,
                   help="seconds each variant is timed per round (Timer.blocked_autorange; default 0.2)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per variant first")
    p.add_argument("--threads", type=int, default=0, help="torch (and ONNX Runtime) threads; 0 = default")
    p.add_argument("--agreement-images", type=int, default=0,
                   help="FER2013 PrivateTest images for the top-1 agreement check (0 = random inputs only)")
    p.add_argument("--data-root", help="folder holding fer2013.csv(.gz) (default: shared/data/fer2013)")
    p.add_argument("--time-budget", type=float, default=0.0,
                   help="seconds after which remaining measurements are skipped (0 = no limit)")
    p.add_argument("--out", help="write the JSON results here")
    return p


def matmul_gflops(precision: str, device: str, n: int = 512, seconds: float = 0.5) -> float:
    """Sustained square-matmul GFLOP/s in ``precision``: what the machine's matrix units give that dtype."""
    dtype = resolve_precision(precision, device) or torch.float32
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    synchronize(device)
    calls, t0 = 0, time.perf_counter()
    while True:
        a @ b
        calls += 1
        synchronize(device)
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds or calls >= 200:
            return round(2 * n**3 * calls / elapsed / 1e9, 1)


# --- variants --------------------------------------------------------------------------------------------------

@dataclass
class Variant:
    """A way to run the model: ``fn(x) -> float32 logits`` (torch tensors on the bench device)."""

    name: str
    fn: Callable[[Any], Any]
    exact: bool
    description: str
    paths: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


def build_reference(model: Any, official_state: dict[str, Any] | None = None) -> ReferencePoster:
    """The reference model holding ``model``'s weights (official-layout keys; dead modules keep their init)."""
    ref = ReferencePoster(num_classes=int(model.cfg.num_classes), token_conv=bool(model.cfg.token_conv))
    state = official_state if official_state is not None else model.state_dict()
    result = ref.load_state_dict(state, strict=False)
    dead = tuple(model.official_dead_keys())
    missing = [k for k in result.missing_keys if not k.startswith(dead)]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"reference does not match the model's keys: missing {missing[:5]}, unexpected "
                           f"{result.unexpected_keys[:5]}")
    return ref.eval()


def _build_variant(name: str, model: Any, device: str, reference: Any | None, threads: int,
                   workdir: Path) -> Variant:
    from poster_fer.fastpath import FastPaths, optimize_for_inference

    if name == "reference":
        if reference is None:
            raise Unavailable("no official-structure reference for this model")
        ref = reference.to(device)
        return Variant(name, lambda x: ref(x)[0], True, "official code structure: eager fp32, explicit softmax, "
                       "landmark head run and discarded, resize per backbone")
    if name == "eager":
        return Variant(name, copy.deepcopy(model).to(device).eval(), True,
                       "poster-fer as built: eager fp32, explicit attention")
    if name in ("sdpa", "fold_bn", "channels_last"):
        only = {"sdpa": "fused_attention", "fold_bn": "fold_bn", "channels_last": "channels_last"}[name]
        kw = {"fused_attention": False, "fold_bn": False, "channels_last": False, "resize": False,
              "simplify": name == "fold_bn", only: True}
        m = optimize_for_inference(model.to(device), options=FastPaths(**kw))
        return Variant(name, m, True, f"eager plus {only} only", m.paths)
    if name == "onnxruntime":
        if torch.device(device).type != "cpu":
            raise Unavailable("CPU only here")
        from poster_fer.export import OnnxRuntimeModel, export_onnx

        onnx_path = workdir / "model.onnx"
        t0 = time.perf_counter()
        try:
            report = export_onnx(model.to("cpu"), onnx_path, check_batch_sizes=())
            rt = OnnxRuntimeModel(onnx_path, threads=threads or None)
        except Exception as err:  # noqa: BLE001  (a missing/failed runtime must not lose the other numbers)
            raise Unavailable(f"{type(err).__name__}: {err}") from None
        return Variant(name, lambda x: torch.from_numpy(rt(x.numpy())), True,
                       "exported ONNX graph in ONNX Runtime (CPU), numpy in/out", ("onnx_export",),
                       {"export_seconds": round(time.perf_counter() - t0, 1),
                        "export_rel_error": report["max_rel_error"]})
    if name not in EXACT:
        raise ValueError(f"unknown variant {name!r}; choose from {', '.join(ALL_VARIANTS)}")
    if name in CUDA_ONLY and torch.device(device).type != "cuda":
        raise Unavailable("CUDA graphs need a CUDA device")
    precision = "bf16" if name.startswith("bf16") else "fp32"
    cast = name in ("bf16_cast", "bf16_graphs")
    m = optimize_for_inference(model.to(device), precision=precision, compile=name in COMPILED,
                               options=FastPaths(cast=cast, cuda_graphs=name in CUDA_ONLY))
    desc = "all exact fast paths"
    if precision == "bf16":
        desc += ", bf16 weights and activations" if cast else " under bf16 autocast"
    if name in CUDA_ONLY:
        desc += ", replayed from CUDA graphs"
    return Variant(name, m, EXACT[name], desc + (" + torch.compile" if name in COMPILED else ""), m.paths)


def build_variants(names: list[str], model: Any, device: str, reference: Any | None, threads: int,
                   workdir: Path, log: Callable[[str], None] = log) -> dict[str, Variant]:
    """Instantiate the named variants (each on its own copy of ``model``); those that cannot run here are
    logged and left out."""
    out: dict[str, Variant] = {}
    for name in names:
        try:
            out[name] = _build_variant(name, model, device, reference, threads, workdir)
        except Unavailable as why:
            log(f"{name} variant skipped: {why}")
    return out


# --- measurements ----------------------------------------------------------------------------------------------

def _rel(a: Any, b: Any) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _warm_up(variants: dict[str, Variant], x: Any, warmup: int, device: str
             ) -> tuple[dict[str, Any], dict[str, str]]:
    """Each variant's output on ``x`` after ``warmup`` calls, and the variants that failed (with the error;
    they are left out of the timing instead of sinking it)."""
    outputs: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for name, v in variants.items():
        t0 = time.perf_counter()
        try:
            for _ in range(max(1, warmup)):
                outputs[name] = v.fn(x).float()
            synchronize(device)
        except Exception as err:  # noqa: BLE001  (one broken variant must not lose the others)
            failed[name] = f"{type(err).__name__}: {err}"[:500]
            outputs.pop(name, None)
            log(f"  {name} failed: {failed[name]}")
            continue
        if time.perf_counter() - t0 > 20:
            log(f"  {name} warm-up took {time.perf_counter() - t0:.0f} s")
    return outputs, failed


def measure_section(variants: dict[str, Variant], baseline: str, batch: int, size: int, rounds: int,
                    min_run_time: float, warmup: int, device: str, deadline: float | None) -> dict[str, Any]:
    """Time ``variants`` (baseline included) at one batch size; entries with speed, latency, memory, agreement."""
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch)).to(device)
    log(f"batch {batch}: {', '.join(variants)} x {rounds} interleaved rounds")
    threads = torch.get_num_threads()
    with torch.inference_mode():
        outputs, failed = _warm_up(variants, x, warmup, device)
        calls = {n: (lambda fn=v.fn: fn(x)) for n, v in variants.items() if n not in failed}
        timings: dict[str, Timing] = time_interleaved(calls, rounds, min_run_time, threads, deadline,
                                                      label=f"batch {batch}")
    section: dict[str, Any] = {"batch": batch, "rounds": rounds, "min_run_time_s": min_run_time,
                               "input": "torch.randn (seeded)", "variants": {}}
    if failed:
        section["failed"] = failed
    if baseline not in timings:
        section["error"] = f"baseline {baseline!r} failed; no ratios"
        return section
    base_time = timings[baseline].median
    base_out = outputs[baseline]
    section["baseline_logit_margin_median"] = _logit_margin(base_out)
    for name, t in timings.items():
        entry = {
            "faces_per_s": round(batch / t.median, 2),
            **timing_entry(t),
            "speedup": round(base_time / t.median, 3),
            "rel_error": _rel(outputs[name], base_out),
            "top1_agreement_random": float((outputs[name].argmax(1).cpu() == base_out.argmax(1).cpu())
                                           .float().mean()),
            "exact": variants[name].exact,
        }
        if name == "onnxruntime":
            entry["memory_note"] = "ONNX Runtime keeps its memory arena between calls, so one call adds ~nothing"
        paths = getattr(variants[name].fn, "paths", None)
        if paths is not None:
            entry["paths"] = list(paths)  # after the run: a failed compile shows up as a missing "compile"
        with contextlib.suppress(Exception), torch.inference_mode():
            entry["memory"] = peak_memory_mb(calls[name], device)
        section["variants"][name] = entry
        log(f"  {name:14s} {entry['faces_per_s']:10.2f} faces/s  x{entry['speedup']:.3f}  "
            f"rel err {entry['rel_error']:.2e}")
    if torch.device(device).type == "cuda":
        with contextlib.suppress(Exception):
            errors = _errors_without_tf32(variants, baseline, x[:32])
            for name, err in errors.items():
                if name in section["variants"]:
                    section["variants"][name]["rel_error_no_tf32"] = err
            section["tf32_note"] = ("rel_error includes TF32 rounding: PyTorch's default lets cuDNN convolutions "
                                    "use TF32 (the reference included); rel_error_no_tf32 re-checks the exact "
                                    "paths on 32 inputs with TF32 off (graph-replayed and compiled variants "
                                    "keep the kernels they were built with and are left out)")
    return section


def _errors_without_tf32(variants: dict[str, Variant], baseline: str, x: Any) -> dict[str, float]:
    """Relative error of each exact, eager variant against the baseline with TF32 disabled everywhere."""
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.inference_mode():
            base = variants[baseline].fn(x).float()
            out = {}
            for name, v in variants.items():
                if name == baseline or not v.exact or getattr(v.fn, "cuda_graphs", False) \
                        or getattr(v.fn, "compiled", None) is not None:
                    continue
                out[name] = _rel(v.fn(x).float(), base)
            return out
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def agreement_batches(model: Any, data_root: str | None, n: int, batch: int) -> tuple[list[Any], dict[str, Any]]:
    """``n`` FER2013 PrivateTest images (evenly spaced over the split) as normalised batches for ``model``."""
    from poster_fer.assets import shared_path
    from poster_fer.data import build_dataset, build_transform

    root = Path(data_root) if data_root else shared_path("data", "fer2013")
    meta = getattr(model, "meta", None) or {}
    prep = meta.get("preprocessing") or {}
    size = int(model.cfg.input_size)
    kw = {k: prep[k] for k in ("mean", "std") if k in prep}
    transform = build_transform("plain", train=False, size=size, channel_order=prep.get("channel_order", "RGB"),
                                **kw)
    ds = build_dataset("fer2013", root, split="test", transform=transform)
    n = min(n, len(ds))
    idx = torch.linspace(0, len(ds) - 1, n).round().long().tolist()
    images = torch.stack([ds[i][0] for i in idx])
    return list(images.split(batch)), {"dataset": "fer2013", "split": "test (PrivateTest)", "root": str(root),
                                       "images": n, "transform": "eval: Resize(size), ToTensor, Normalize",
                                       "input_size": size}


def measure_agreement(variants: dict[str, Variant], baseline: str, batches: list[Any], device: str
                      ) -> dict[str, dict[str, float]]:
    logits: dict[str, list[Any]] = {n: [] for n in variants}
    done = 0
    with torch.inference_mode():
        for i, xb in enumerate(batches):
            xb = xb.to(device)
            for name, v in variants.items():
                logits[name].append(v.fn(xb).float().cpu())
            done += len(xb)
            log(f"  agreement: {done} images through {len(variants)} variants ({i + 1}/{len(batches)} batches)")
    base = torch.cat(logits[baseline])
    out = {}
    for name, parts in logits.items():
        y = torch.cat(parts)
        out[name] = {"top1_agreement": float((y.argmax(1) == base.argmax(1)).float().mean()),
                     "rel_error": _rel(y, base)}
    return out


def _logit_margin(logits: Any) -> float:
    top2 = logits.float().topk(2, dim=1).values
    return float((top2[:, 0] - top2[:, 1]).median())


# --- the whole run ---------------------------------------------------------------------------------------------

def _default_recipe_keys(model_name: str) -> str | None:
    from poster_fer.assets import shared_path

    name = {"poster_v1": "poster_v1_rafdb", "poster_v1_affectnet": "poster_v1_affectnet8"}.get(model_name)
    if name is None:
        return None
    path = shared_path("parity", f"{name}.keys.json")
    return str(path) if path.is_file() else None


def load_bench_model(args: argparse.Namespace, overrides: dict[str, Any]
                     ) -> tuple[Any, dict[str, Any] | None, str]:
    """The model to benchmark, the official-layout state (recipe weights) if any, and a weights description."""
    from poster_fer import create_model, load_model

    if args.weights:
        return load_model(args.weights), None, f"saved model {args.weights}"
    torch.manual_seed(0)
    model = create_model(args.model, **overrides).eval()
    keys = args.recipe_keys if args.recipe_keys is not None else _default_recipe_keys(args.model)
    if not keys:
        return model, None, "random init (torch.manual_seed(0))"
    from poster_fer.weights.official import convert_official_state_dict
    from poster_fer.weights.parity import recipe_state_dict

    ints = {k: v for k, v in model.state_dict().items() if not v.is_floating_point()}
    official = recipe_state_dict(keys, ints)
    state, _report = convert_official_state_dict(official, model)
    model.load_state_dict(state)
    return model.eval(), official, f"parity recipe from {keys}"


def _default_variants(device: str, compile_: bool) -> list[str]:
    names = ["reference", "eager", "sdpa", "fold_bn", "channels_last", "fp32_opt", "bf16"]
    if device == "cpu":
        names.append("onnxruntime")
    else:
        names += ["bf16_cast", "fp32_graphs", "bf16_graphs"]
    if compile_:
        names += list(COMPILED)
    return names


def _default_rounds(batch: int, device: str) -> int:
    if device != "cpu":
        return 10 if batch <= 64 else 5
    return 10 if batch <= 1 else 5 if batch <= 8 else 3


def _int_list(text: str, what: str, error: Callable[[str], Any]) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        return error(f"{what} must be comma-separated integers, not {text!r}")
    if not values or min(values) < 1:
        return error(f"{what} must be positive integers, not {text!r}")
    return values


def run(args: argparse.Namespace, command: str, error: Callable[[str], Any]) -> dict[str, Any]:
    """Run the benchmark ``args`` describe; returns (and with ``--out`` writes, after every stage) the record."""
    from poster_fer.devices import DeviceError, resolve_device

    t_start = time.perf_counter()
    deadline = t_start + args.time_budget if args.time_budget > 0 else None
    batch_sizes = _int_list(args.batch_sizes, "--batch-sizes", error)
    names = [v.strip() for v in (args.variants or "").split(",") if v.strip()]
    unknown = [n for n in names if n not in ALL_VARIANTS]
    if unknown:
        error(f"unknown variant(s) {unknown}; choose from {', '.join(ALL_VARIANTS)}")
    if args.weights and not Path(args.weights).exists():
        error(f"{args.weights}: no such model")
    overrides = parse_overrides(args.set, error)
    try:
        device = str(resolve_device(args.device))
    except DeviceError as e:
        return error(f"--device: {e}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    model, official_state, weights_desc = load_bench_model(args, overrides)
    log(f"model {getattr(model, 'model_name', args.model)} ({weights_desc}) on {device}, "
        f"{torch.get_num_threads()} threads")

    result: dict[str, Any] = {
        "command": command, "created": now(), "git": git_state(), "machine": machine_info(device),
        "device": device, "load_average_start": load_average(),
        "model": getattr(model, "model_name", args.model), "weights": weights_desc, "config_overrides": overrides,
        "timing": "torch.utils.benchmark.Timer.blocked_autorange, interleaved rounds (see benchmarks/_harness.py)",
    }
    with contextlib.suppress(Exception):
        from poster_fer.models.stats import model_stats

        result["model_stats"] = model_stats(copy.deepcopy(model).cpu())
    n = 512 if device == "cpu" else 4096
    result["machine"]["matmul_gflops"] = {d: matmul_gflops(d, device, n=n) for d in ("fp32", "bf16")}
    log(f"matmul GFLOP/s: {result['machine']['matmul_gflops']}")

    # Baseline: the official-structure reference where it applies.
    reference = None
    why_not = reference_applicable(model)
    if args.baseline in ("auto", "reference") and why_not is None:
        try:
            reference = build_reference(model, official_state)
        except RuntimeError as err:
            why_not = str(err)
    if args.baseline == "reference" and reference is None:
        error(f"--baseline reference: {why_not}")
    baseline = "reference" if reference is not None else "eager"
    result["baseline"] = baseline
    if reference is None:
        result["baseline_note"] = f"no official-structure reference: {why_not}; ratios are to poster-fer eager"

    names = names or _default_variants(device, args.compile)
    if args.compile:
        names += [n for n in COMPILED if n not in names]
    if baseline not in names:
        names.insert(0, baseline)

    size = int(model.cfg.input_size)
    largest = max(batch_sizes)
    result["inference"] = {}
    threads = args.threads or torch.get_num_threads()

    def over_budget() -> bool:
        return deadline is not None and time.perf_counter() > deadline

    def rounds(batch: int) -> int:
        return args.rounds or _default_rounds(batch, device)

    with tempfile.TemporaryDirectory(prefix="poster-fer-bench-") as tmp:
        variants = build_variants([n for n in names if n not in COMPILED], model, device, reference, threads,
                                  Path(tmp))
        result["variants"] = {n: {"exact": v.exact, "description": v.description, "paths": list(v.paths),
                                  **v.extra} for n, v in variants.items()}

        def batch_stage(batch: int) -> None:
            section = f"batch_{batch}"
            if over_budget():
                result["inference"][section] = {"batch": batch, "skipped": "time budget exhausted"}
                return
            result["inference"][section] = measure_section(variants, baseline, batch, size, rounds(batch),
                                                           args.min_run_time, args.warmup, device, deadline)

        def compiled_stage(compiled: list[str]) -> None:
            # Compiling is slow and specialises on the batch size: one pass at the largest batch, interleaved
            # with a fresh baseline run so that the ratios stay same-conditions ratios.
            target = result["inference"].setdefault(f"batch_{largest}", {"batch": largest, "variants": {}})
            target.setdefault("variants", {})
            if over_budget():
                target["compiled"] = {"skipped": "time budget exhausted"}
                return
            comp = {baseline: variants[baseline],
                    **build_variants(compiled, model, device, reference, threads, Path(tmp))}
            result["variants"].update({n: {"exact": v.exact, "description": v.description,
                                           "paths": list(v.paths)} for n, v in comp.items() if n in COMPILED})
            measured = measure_section(comp, baseline, largest, size, rounds(largest), args.min_run_time,
                                       args.warmup, device, None)
            for name, entry in measured.get("variants", {}).items():
                if name in COMPILED:
                    target["variants"][name] = {**entry, "separate_baseline_pass": True}
            if measured.get("failed"):
                target.setdefault("failed", {}).update(measured["failed"])
            target["compiled_pass_baseline_faces_per_s"] = (
                measured.get("variants", {}).get(baseline, {}).get("faces_per_s"))

        def agreement_stage() -> None:
            if over_budget():
                result["agreement"] = {"skipped": "time budget exhausted"}
                return
            try:
                batches, info = agreement_batches(model, args.data_root, args.agreement_images, 32)
                log(f"agreement on {info['images']} FER2013 test images")
                agree = measure_agreement(variants, baseline, batches, device)
                info["note"] = RANDOM_WEIGHTS_NOTE if "recipe" in weights_desc else ""
                result["agreement"] = {**info, "baseline": baseline, "variants": agree}
            except Exception as err:  # noqa: BLE001  (missing data: say so, keep the timings)
                log(f"agreement check skipped: {type(err).__name__}: {err}")
                result["agreement"] = {"skipped": f"{type(err).__name__}: {err}"[:500]}

        # Most important first, so that a time budget (or a kill) loses the least: throughput at the largest
        # batch, the compiled pass, then the other batch sizes and the image agreement check.
        stages: list[Callable[[], None]] = [lambda: batch_stage(largest)]
        compiled = [n for n in names if n in COMPILED]
        if compiled:
            stages.append(lambda: compiled_stage(compiled))
        stages += [lambda b=b: batch_stage(b) for b in batch_sizes if b != largest]
        if args.agreement_images > 0:
            stages.append(agreement_stage)
        for stage in stages:
            stage()
            write_json(result, args.out)
        result["inference"] = dict(sorted(result["inference"].items(), key=lambda kv: kv[1].get("batch", 0)))
        variants.clear()

    result["load_average_end"] = load_average()
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    result.update(summarize(result))
    write_json(result, args.out)
    return result


def summarize(result: dict[str, Any], batch: int | None = None) -> dict[str, Any]:
    """Headline numbers at ``batch`` (default: the largest measured): the fastest exact path and bf16 path."""
    sections = {k: v for k, v in result.get("inference", {}).items() if "variants" in v}
    if not sections:
        return {}
    key = f"batch_{batch}" if batch is not None else max(sections, key=lambda k: sections[k]["batch"])
    if key not in sections or not sections[key]["variants"]:
        return {}
    entries = sections[key]["variants"]
    baseline = result.get("baseline")
    out: dict[str, Any] = {"summary_batch": sections[key]["batch"]}
    exact = {n: e for n, e in entries.items() if e["exact"] and n != baseline}
    if exact:
        best = max(exact, key=lambda n: exact[n]["speedup"])
        out.update(fp32_speedup=exact[best]["speedup"], fp32_rel_error=exact[best]["rel_error"], fp32_variant=best)
        torch_only = [n for n in exact if n != "onnxruntime"]
        if torch_only:
            best_t = max(torch_only, key=lambda n: exact[n]["speedup"])
            out.update(fp32_torch_speedup=exact[best_t]["speedup"], fp32_torch_rel_error=exact[best_t]["rel_error"],
                       fp32_torch_variant=best_t)
    bf16 = {n: e for n, e in entries.items() if n.startswith("bf16")}
    if bf16:
        best = max(bf16, key=lambda n: bf16[n]["speedup"])
        agree = (result.get("agreement") or {}).get("variants", {}).get(best)
        out.update(bf16_speedup=bf16[best]["speedup"], bf16_variant=best,
                   bf16_top1_agreement=(agree or {}).get("top1_agreement", bf16[best]["top1_agreement_random"]),
                   bf16_top1_agreement_on=("fer2013 test images" if agree else "random inputs"))
    # By ratio, not raw faces/s: compiled variants are timed in a later pass, under possibly other load.
    fastest = max(entries, key=lambda n: entries[n]["speedup"])
    out["fastest_variant"] = {"name": fastest, "speedup": entries[fastest]["speedup"],
                              "faces_per_s": entries[fastest]["faces_per_s"]}
    return out


HEADLINE = ("fp32_speedup", "fp32_rel_error", "fp32_variant", "bf16_speedup", "bf16_top1_agreement",
            "fastest_variant")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = build_parser()
    given = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(given)
    result = run(args, command_line(__file__, given), parser.error)
    print(json.dumps({k: result[k] for k in HEADLINE if k in result}, indent=2))
    if args.out:
        print(f"results written to {args.out}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
