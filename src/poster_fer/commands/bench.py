"""``poster-fer bench``: inference and training speed of the fast paths, measured against a baseline.

Every variant is timed in the same process as the baseline, interleaved call by call (so a busy machine slows
them alike), and reported as faces/s, latency percentiles, peak memory and a *ratio to the baseline*, next to an
output-agreement check: relative error for exact paths, top-1 agreement for reduced precision. The baseline is
``benchmarks/reference_poster.py`` (the official code's structure, eager fp32) where the model is the official
POSTER v1 and that file is found, else poster-fer's own eager fp32 model.

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

The harness functions (:func:`run_benchmark`) are importable for the scripts in ``benchmarks/``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as _dt
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..provenance import cpu_flags, cpu_model, git_state, load_average

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_REFERENCE = REPO_ROOT / "benchmarks" / "reference_poster.py"
ALL_VARIANTS = ("reference", "eager", "sdpa", "fold_bn", "channels_last", "fp32_opt", "bf16", "bf16_cast",
                "fp32_graphs", "bf16_graphs", "compile", "bf16_compile", "onnxruntime")
COMPILED = ("compile", "bf16_compile")
CUDA_ONLY = ("fp32_graphs", "bf16_graphs")
EXACT = {"reference": True, "eager": True, "sdpa": True, "fold_bn": True, "channels_last": True,
         "fp32_opt": True, "bf16": False, "bf16_cast": False, "fp32_graphs": True, "bf16_graphs": False,
         "compile": True, "bf16_compile": False, "onnxruntime": True}
TRAIN_VARIANTS = ("reference", "eager", "opt", "bf16", "bf16_graphs", "bf16_compile")
RANDOM_WEIGHTS_NOTE = (
    "Weights are the parity recipe's deterministic random tensors, not trained ones. Top-1 agreement measured "
    "with them is a weaker test than with trained weights: their logits lie close together (small top-1 "
    "margins, so rounding flips near-ties a trained model would not have) and their activations do not have a "
    "trained network's scales, so the number says little about agreement on a real checkpoint."
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="inference/training speed of the fast paths against a baseline",
                       description="Time poster-fer's inference fast paths (and training steps) against the "
                       "official-structure reference or the eager model, in one process, interleaved; report "
                       "faces/s, latency percentiles, peak memory, ratios to the baseline and output agreement.")
    p.add_argument("--model", default="poster_v1", help="registered model name (default: poster_v1)")
    p.add_argument("--weights", help="a saved poster-fer model (directory or .safetensors) instead of --model")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for --model")
    p.add_argument("--recipe-keys", help="official key list (*.keys.json) to generate the parity-recipe weights "
                   "from; default for poster_v1: shared/parity/poster_v1_rafdb.keys.json if present")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    p.add_argument("--batch-sizes", default="1,32", help="comma-separated batch sizes (default: 1,32)")
    p.add_argument("--variants", help=f"comma-separated subset of {', '.join(ALL_VARIANTS)}")
    p.add_argument("--compile", action="store_true", help="add the torch.compile variants")
    p.add_argument("--baseline", choices=("auto", "reference", "eager"), default="auto")
    p.add_argument("--reference", default=str(DEFAULT_REFERENCE), help="path of reference_poster.py")
    p.add_argument("--reps", type=int, default=0, help="timed calls per variant (default: by batch size)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per variant first")
    p.add_argument("--threads", type=int, default=0, help="torch (and ONNX Runtime) threads; 0 = default")
    p.add_argument("--agreement-images", type=int, default=0,
                   help="FER2013 PrivateTest images for the top-1 agreement check (0 = random inputs only)")
    p.add_argument("--data-root", help="folder holding fer2013.csv(.gz) (default: shared/data/fer2013)")
    p.add_argument("--train", action="store_true", help="also time training steps")
    p.add_argument("--train-batch", type=int, default=0, help="training batch (default: 8 on CPU, 128 on CUDA)")
    p.add_argument("--train-steps", type=int, default=2, help="timed training steps per variant")
    p.add_argument("--train-variants", help=f"comma-separated subset of {', '.join(TRAIN_VARIANTS)}")
    p.add_argument("--time-budget", type=float, default=0.0,
                   help="seconds after which remaining measurements are skipped (0 = no limit)")
    p.add_argument("--out", help="write the JSON results here")
    p.set_defaults(func=run)


# --- machine facts -------------------------------------------------------------------------------------------------

def matmul_gflops(dtype_name: str, device: str, n: int = 512, seconds: float = 0.5) -> float:
    """Sustained square-matmul GFLOP/s in ``dtype_name``: what the machine's matrix units give that dtype."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sync = _sync_fn(device)
    a @ b
    sync()
    calls, t0 = 0, time.perf_counter()
    while True:
        a @ b
        calls += 1
        sync()
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds or calls >= 200:
            return round(2 * n**3 * calls / elapsed / 1e9, 1)


def machine_info(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "cpu": cpu_model(), "cpu_count": os.cpu_count(), "cpu_flags": cpu_flags(),
        "cpu_capability": getattr(torch.backends.cpu, "get_cpu_capability", lambda: None)(),
        "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    with contextlib.suppress(ImportError):
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    cudnn_benchmark=torch.backends.cudnn.benchmark,
                    tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32)
    else:
        info["gpu"] = None
    return info


# --- timing and memory -----------------------------------------------------------------------------------------

def _sync_fn(device: str) -> Callable[[], None]:
    import torch

    if str(device).startswith("cuda"):
        return torch.cuda.synchronize
    return lambda: None


def percentiles(values: list[float], qs: tuple[int, ...] = (50, 90, 99)) -> dict[str, float]:
    """Nearest-rank percentiles (no interpolation: every reported value was observed)."""
    ordered = sorted(values)
    out = {}
    for q in qs:
        rank = max(1, -(-q * len(ordered) // 100))
        out[f"p{q}"] = ordered[rank - 1]
    return out


def _median(values: list[float]) -> float:
    return percentiles(values, (50,))["p50"]


def _rss_kb(field_name: str) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return None


def peak_memory_mb(fn: Callable[[], Any], device: str) -> dict[str, Any]:
    """Memory one call adds at its peak: CUDA ``max_memory_allocated`` growth, or the CPU RSS high-water growth.

    On Linux, freed heap memory is first handed back to the system (``malloc_trim``) so that the call's buffers
    show up as RSS growth, and the RSS high-water mark is reset through ``/proc/self/clear_refs`` (value 5);
    where that is impossible the process-lifetime ``ru_maxrss`` growth is reported instead (a lower bound).
    """
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return {"peak_mb": round((torch.cuda.max_memory_allocated() - base) / 2**20, 1),
                "method": "cuda max_memory_allocated growth"}
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = _rss_kb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    if before is not None and reset:
        fn()
        hwm = _rss_kb("VmHWM")
        if hwm is not None:
            return {"peak_mb": round(max(0, hwm - before) / 1024, 1), "method": "RSS high-water growth"}
    import resource

    start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    end = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_mb": round((end - start) / 1024, 1), "method": "ru_maxrss growth (lower bound)"}


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


def reference_applicable(model: Any) -> str | None:
    """Why the official-structure reference cannot stand in for ``model`` (``None`` if it can)."""
    from ..models import PosterConfig

    if getattr(model, "family", None) != "poster_v1":
        return f"the reference mirrors POSTER v1, not {getattr(model, 'model_name', type(model).__name__)}"
    default = PosterConfig()
    for key in ("input_size", "backbone_size", "landmark_size", "resize_mode", "streams", "fusion", "pyramid",
                "dims", "depth", "heads", "mlp_ratio", "query_projection", "image_tokens", "ir"):
        if getattr(model.cfg, key) != getattr(default, key):
            return f"config {key}={getattr(model.cfg, key)!r} differs from the official POSTER"
    return None


def load_reference_module(path: str | os.PathLike[str]) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: reference model not found (it lives in the repository's benchmarks/)")
    spec = importlib.util.spec_from_file_location("poster_fer_bench_reference", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def build_reference(model: Any, reference_path: str | os.PathLike[str],
                    official_state: dict[str, Any] | None = None) -> Any:
    """The reference model holding ``model``'s weights (official-layout keys; dead modules keep their init)."""
    module = load_reference_module(reference_path)
    ref = module.ReferencePoster(num_classes=int(model.cfg.num_classes), token_conv=bool(model.cfg.token_conv))
    state = official_state if official_state is not None else model.state_dict()
    result = ref.load_state_dict(state, strict=False)
    dead = tuple(model.official_dead_keys())
    missing = [k for k in result.missing_keys if not k.startswith(dead)]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"reference does not match the model's keys: missing {missing[:5]}, unexpected "
                           f"{result.unexpected_keys[:5]}")
    return ref.eval()


def build_variants(names: list[str], model: Any, device: str, reference: Any | None,
                   threads: int, workdir: Path, log: Callable[[str], None]) -> dict[str, Variant]:
    """Instantiate the named variants (each on its own copy of ``model``)."""
    import torch

    from ..fastpath import optimize_for_inference

    out: dict[str, Variant] = {}
    for name in names:
        if name == "reference":
            if reference is None:
                continue
            ref = reference.to(device)
            out[name] = Variant(name, lambda x, ref=ref: ref(x)[0], True,
                                "official code structure: eager fp32, explicit softmax, landmark head run and "
                                "discarded, resize per backbone")
        elif name == "eager":
            m = copy.deepcopy(model).to(device).eval()
            out[name] = Variant(name, m, True, "poster-fer as built: eager fp32, explicit attention")
        elif name in ("sdpa", "fold_bn", "channels_last"):
            only = {"sdpa": "fused_attention", "fold_bn": "fold_bn", "channels_last": "channels_last"}[name]
            kw = {"fused_attention": False, "fold_bn": False, "channels_last": False, "resize": False,
                  "simplify": name == "fold_bn", only: True}
            m = optimize_for_inference(model.to(device), **kw)
            out[name] = Variant(name, m, True, f"eager plus {only} only", m.paths)
        elif name in ("fp32_opt", "bf16", "bf16_cast", "fp32_graphs", "bf16_graphs", "compile", "bf16_compile"):
            if name in CUDA_ONLY and not str(device).startswith("cuda"):
                log(f"{name} variant skipped: CUDA graphs need a CUDA device")
                continue
            precision = "bf16" if name.startswith("bf16") else "fp32"
            cast = name in ("bf16_cast", "bf16_graphs")
            m = optimize_for_inference(model.to(device), precision=precision, compile=name in COMPILED, cast=cast,
                                       cuda_graphs=name in CUDA_ONLY)
            desc = "all exact fast paths"
            if precision == "bf16":
                desc += ", bf16 weights and activations" if cast else " under bf16 autocast"
            if name in CUDA_ONLY:
                desc += ", replayed from CUDA graphs"
            out[name] = Variant(name, m, EXACT[name], desc + (" + torch.compile" if name in COMPILED else ""),
                                m.paths)
        elif name == "onnxruntime":
            if not str(device).startswith("cpu"):
                log("onnxruntime variant skipped: CPU only here")
                continue
            try:
                from ..export import OnnxRuntimeModel, export_onnx

                onnx_path = workdir / "model.onnx"
                t0 = time.perf_counter()
                report = export_onnx(model.to("cpu"), onnx_path, check_batch_sizes=())
                rt = OnnxRuntimeModel(onnx_path, threads=threads or None)
            except Exception as err:  # noqa: BLE001  (a missing/failed runtime must not lose the other numbers)
                log(f"onnxruntime variant skipped: {type(err).__name__}: {err}")
                continue

            def run_ort(x: Any, rt: Any = rt) -> Any:
                return torch.from_numpy(rt(x.numpy()))

            out[name] = Variant(name, run_ort, True, "exported ONNX graph in ONNX Runtime (CPU), numpy in/out",
                                ("onnx_export",),
                                {"export_seconds": round(time.perf_counter() - t0, 1),
                                 "export_rel_error": report["max_rel_error"]})
        else:
            raise ValueError(f"unknown variant {name!r}; choose from {', '.join(ALL_VARIANTS)}")
    return out


# --- measurements ----------------------------------------------------------------------------------------------

def _rel(a: Any, b: Any) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def time_interleaved(variants: dict[str, Variant], x: Any, reps: int, warmup: int, device: str,
                     deadline: float | None = None, log: Callable[[str], None] | None = None
                     ) -> tuple[dict[str, dict[str, list[float]]], dict[str, Any], dict[str, str]]:
    """Run every variant ``reps`` times, one call each per round (rotating the order), timing each call.

    Returns per-variant wall and CPU (process) seconds per call, each variant's warm-up output, and the
    variants whose warm-up failed (with the error; they are left out of the timing instead of sinking it).
    """
    import torch

    sync = _sync_fn(device)
    outputs: dict[str, Any] = {}
    failed: dict[str, str] = {}
    with torch.inference_mode():
        for name, v in variants.items():
            t0 = time.perf_counter()
            try:
                for _ in range(max(1, warmup)):
                    outputs[name] = v.fn(x).float()
                sync()
            except Exception as err:  # noqa: BLE001  (one broken variant must not lose the others)
                failed[name] = f"{type(err).__name__}: {err}"[:500]
                outputs.pop(name, None)
                if log:
                    log(f"  {name} failed: {failed[name]}")
                continue
            if log and time.perf_counter() - t0 > 20:
                log(f"  {name} warm-up took {time.perf_counter() - t0:.0f} s")
        names = [n for n in variants if n not in failed]
        times: dict[str, dict[str, list[float]]] = {n: {"wall": [], "cpu": []} for n in names}
        for r in range(reps):
            if deadline is not None and time.perf_counter() > deadline and r > 0:
                break
            order = names[r % len(names):] + names[: r % len(names)]
            for name in order:
                sync()
                w0, c0 = time.perf_counter(), time.process_time()
                variants[name].fn(x)
                sync()
                times[name]["wall"].append(time.perf_counter() - w0)
                times[name]["cpu"].append(time.process_time() - c0)
    return times, outputs, failed


def measure_section(variants: dict[str, Variant], baseline: str, batch: int, size: int, reps: int, warmup: int,
                    device: str, deadline: float | None, log: Callable[[str], None]) -> dict[str, Any]:
    """Time ``variants`` (baseline included) at one batch size; entries with speed, latency, memory, agreement."""
    import torch

    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch)).to(device)
    log(f"batch {batch}: {', '.join(variants)} x {reps} interleaved calls")
    times, outputs, failed = time_interleaved(variants, x, reps, warmup, device, deadline, log)
    section: dict[str, Any] = {"batch": batch, "reps": reps, "input": "torch.randn (seeded)", "variants": {}}
    if failed:
        section["failed"] = failed
    if baseline not in times:
        section["error"] = f"baseline {baseline!r} failed; no ratios"
        return section
    base_wall = _median(times[baseline]["wall"])
    base_cpu = _median(times[baseline]["cpu"])
    base_out = outputs[baseline]
    section["baseline_logit_margin_median"] = _logit_margin(base_out)
    for name, t in times.items():
        wall = _median(t["wall"])
        entry = {
            "faces_per_s": round(batch / wall, 2),
            "latency_ms": {k: round(v * 1e3, 2) for k, v in percentiles(t["wall"]).items()},
            "calls": len(t["wall"]),
            "speedup": round(base_wall / wall, 3),
            "cpu_time_speedup": round(base_cpu / _median(t["cpu"]), 3),
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
        with contextlib.suppress(Exception):
            with torch.inference_mode():
                entry["memory"] = peak_memory_mb(lambda fn=variants[name].fn, x=x: fn(x), device)
        section["variants"][name] = entry
        log(f"  {name:14s} {entry['faces_per_s']:10.2f} faces/s  x{entry['speedup']:.3f}  "
            f"rel err {entry['rel_error']:.2e}")
    if str(device).startswith("cuda"):
        with contextlib.suppress(Exception):
            errors = _errors_without_tf32(variants, baseline, x[:32])
            for name, err in errors.items():
                section["variants"][name]["rel_error_no_tf32"] = err
            section["tf32_note"] = ("rel_error includes TF32 rounding: PyTorch's default lets cuDNN convolutions "
                                    "use TF32 (the reference included); rel_error_no_tf32 re-checks the exact "
                                    "paths on 32 inputs with TF32 off (graph-replayed and compiled variants "
                                    "keep the kernels they were built with and are left out)")
    return section


def _errors_without_tf32(variants: dict[str, Variant], baseline: str, x: Any) -> dict[str, float]:
    """Relative error of each exact, eager variant against the baseline with TF32 disabled everywhere."""
    import torch

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
    import torch

    from ..assets import shared_path
    from ..data import build_dataset, build_transform

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


def measure_agreement(variants: dict[str, Variant], baseline: str, batches: list[Any], device: str,
                      log: Callable[[str], None] | None = None) -> dict[str, dict[str, float]]:
    import torch

    logits: dict[str, list[Any]] = {n: [] for n in variants}
    done = 0
    with torch.inference_mode():
        for i, xb in enumerate(batches):
            xb = xb.to(device)
            for name, v in variants.items():
                logits[name].append(v.fn(xb).float().cpu())
            done += len(xb)
            if log:
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


# --- training steps ----------------------------------------------------------------------------------------------

def official_v1_loss(logits: Any, target: Any) -> Any:
    """The official v1 training loss: 2 x label-smoothing(0.2) cross-entropy + cross-entropy."""
    import torch.nn.functional as F

    return 2 * F.cross_entropy(logits, target, label_smoothing=0.2) + F.cross_entropy(logits, target)


def bench_training(model: Any, reference: Any | None, names: list[str], device: str, batch: int, steps: int,
                   deadline: float | None, log: Callable[[str], None]) -> dict[str, Any]:
    """Images/s of one optimiser step (forward, official loss, backward, Adam) per variant, interleaved."""
    import torch

    from ..fastpath import autocast_context, to_channels_last
    from ..models import set_fused_attention

    sync = _sync_fn(device)
    size = int(model.cfg.input_size)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g).to(device)
    y = torch.randint(0, int(model.cfg.num_classes), (batch,), generator=g).to(device)
    runners: dict[str, Callable[[], float]] = {}
    descriptions: dict[str, str] = {}
    cuda = str(device).startswith("cuda")
    for name in names:
        if name.endswith("graphs") and not cuda:
            log(f"training variant {name} skipped: CUDA graphs need a CUDA device")
            continue
        if name == "reference":
            if reference is None:
                continue
            net = copy.deepcopy(reference).to(device).train()  # official: frozen landmark net left in train mode
            fwd, precision, cl = (lambda m: (lambda inp: m(inp)[0]))(net), "fp32", False
            descriptions[name] = "official structure, fp32 eager, landmark net in train mode (as upstream)"
        else:
            net = copy.deepcopy(model).to(device).train()
            precision = "bf16" if name.startswith("bf16") else "fp32"
            cl = name != "eager"
            if name != "eager":
                set_fused_attention(net, True)
            if cl:
                to_channels_last(net)
            fwd = net
            if name.endswith("compile"):
                fwd = torch.compile(net)
            descriptions[name] = {"eager": "poster-fer fp32 eager", "opt": "fp32, SDPA attention, channels_last",
                                  "bf16": "bf16 autocast, SDPA, channels_last",
                                  "bf16_compile": "bf16 autocast, SDPA, channels_last, torch.compile",
                                  "bf16_graphs": "bf16 autocast, SDPA, channels_last, whole step replayed from "
                                                 "a CUDA graph"}[name]
        params = [p for p in net.parameters() if p.requires_grad]
        fused = name != "reference" and cuda  # one kernel for all tensors instead of a few per tensor
        opt_kw: dict[str, Any] = {"fused": True} if fused else {}
        if name.endswith("graphs"):
            opt_kw["capturable"] = True  # the step counter lives on the GPU, so the step can be captured
        opt = torch.optim.Adam(params, lr=4e-5, **opt_kw)
        if fused:
            descriptions[name] += ", fused Adam"
        inp = x.contiguous(memory_format=torch.channels_last) if cl else x
        graphed = name.endswith("graphs")

        def body(fwd=fwd, opt=opt, precision=precision, inp=inp, graphed=graphed) -> Any:
            amp = (torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False) if graphed
                   else autocast_context(precision, device))  # autocast's weight cache cannot live in a graph
            with amp:
                logits = fwd(inp)
            loss = official_v1_loss(logits.float(), y)
            loss.backward()
            opt.step()
            return loss

        if graphed:
            runners[name] = _graphed_step(body, opt)
        else:
            def step(body=body, opt=opt) -> float:
                opt.zero_grad(set_to_none=True)
                return float(body().detach())

            runners[name] = step
    times: dict[str, list[float]] = {n: [] for n in runners}
    losses: dict[str, float] = {}
    failed: dict[str, str] = {}
    for name, step in list(runners.items()):
        try:
            losses[name] = step()  # warm-up (and compilation)
            sync()
        except Exception as err:  # noqa: BLE001  (report the failure, keep the other variants)
            failed[name] = f"{type(err).__name__}: {err}"[:500]
            log(f"training variant {name} failed: {failed[name]}")
            runners.pop(name)
    names_left = list(runners)
    for r in range(steps):
        if deadline is not None and time.perf_counter() > deadline and r > 0:
            break
        for name in names_left[r % max(1, len(names_left)):] + names_left[: r % max(1, len(names_left))]:
            sync()
            t0 = time.perf_counter()
            runners[name]()
            sync()
            times[name].append(time.perf_counter() - t0)
    base = "reference" if "reference" in times and times["reference"] else (names_left[0] if names_left else None)
    result: dict[str, Any] = {"batch": batch, "steps": steps, "baseline": base, "optimizer": "Adam lr 4e-5",
                              "loss": "2 x CE(label_smoothing=0.2) + CE (official v1)", "variants": {}}
    for name, ts in times.items():
        if not ts:
            continue
        med = _median(ts)
        entry = {"images_per_s": round(batch / med, 2), "step_s_median": round(med, 4), "steps_timed": len(ts),
                 "first_loss": round(losses[name], 4), "description": descriptions[name]}
        if base and times.get(base):
            entry["speedup"] = round(_median(times[base]) / med, 3)
        result["variants"][name] = entry
    if failed:
        result["failed"] = failed
    return result


def _graphed_step(body: Callable[[], Any], opt: Any) -> Callable[[], float]:
    """A training step captured once as a CUDA graph (forward, loss, backward, optimiser) and then replayed.

    Inputs stay in fixed buffers; gradients are set to None before capture, so backward writes them fresh from the
    graph's own memory pool at every replay (the standard whole-network capture recipe).
    """
    import torch

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


# --- the whole run -----------------------------------------------------------------------------------------------

@dataclass
class BenchConfig:
    model: str = "poster_v1"
    weights: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    recipe_keys: str | None = None
    device: str = "cpu"
    batch_sizes: tuple[int, ...] = (1, 32)
    variants: tuple[str, ...] | None = None
    compile: bool = False
    baseline: str = "auto"
    reference: str = str(DEFAULT_REFERENCE)
    reps: int = 0
    warmup: int = 1
    threads: int = 0
    agreement_images: int = 0
    data_root: str | None = None
    train: bool = False
    train_batch: int = 0
    train_steps: int = 2
    train_variants: tuple[str, ...] | None = None
    time_budget: float = 0.0
    out: str | None = None
    command: str = ""


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _default_recipe_keys(model_name: str) -> str | None:
    from ..assets import shared_path

    name = {"poster_v1": "poster_v1_rafdb", "poster_v1_affectnet": "poster_v1_affectnet8"}.get(model_name)
    if name is None:
        return None
    path = shared_path("parity", f"{name}.keys.json")
    return str(path) if path.is_file() else None


def load_bench_model(cfg: BenchConfig) -> tuple[Any, dict[str, Any] | None, str]:
    """The model to benchmark, the official-layout state (recipe weights) if any, and a weights description."""
    import torch

    from .. import create_model, load_model

    if cfg.weights:
        return load_model(cfg.weights), None, f"saved model {cfg.weights}"
    torch.manual_seed(0)
    model = create_model(cfg.model, **cfg.overrides).eval()
    keys = cfg.recipe_keys if cfg.recipe_keys is not None else _default_recipe_keys(cfg.model)
    if not keys:
        return model, None, "random init (torch.manual_seed(0))"
    from ..weights.official import convert_official_state_dict
    from ..weights.recipe import recipe_state_dict

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


def _default_reps(batch: int, device: str) -> int:
    if device != "cpu":
        return 20 if batch <= 64 else 6
    return 20 if batch <= 1 else 8 if batch <= 8 else 5


def run_benchmark(cfg: BenchConfig, log: Callable[[str], None] = _log) -> dict[str, Any]:
    """Run the benchmark described by ``cfg``; returns (and with ``cfg.out`` writes) the results record."""
    import torch

    from .info import model_stats

    t_start = time.perf_counter()
    deadline = t_start + cfg.time_budget if cfg.time_budget > 0 else None
    from ..cli import UserError
    from ..devices import DeviceError, resolve_device

    try:
        device = str(resolve_device(cfg.device))
    except DeviceError as e:
        raise UserError(f"--device: {e}") from None
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    model, official_state, weights_desc = load_bench_model(cfg)
    log(f"model {getattr(model, 'model_name', cfg.model)} ({weights_desc}) on {device}, "
        f"{torch.get_num_threads()} threads")

    result: dict[str, Any] = {
        "command": cfg.command, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git": git_state(), "machine": machine_info(device), "device": device,
        "load_average_start": load_average(),
        "model": getattr(model, "model_name", cfg.model), "weights": weights_desc,
        "config_overrides": cfg.overrides,
    }
    with contextlib.suppress(Exception):
        result["model_stats"] = model_stats(copy.deepcopy(model).cpu())
    n = 512 if device == "cpu" else 4096
    result["machine"]["matmul_gflops"] = {d: matmul_gflops(d, device, n=n) for d in ("fp32", "bf16")}
    log(f"matmul GFLOP/s: {result['machine']['matmul_gflops']}")

    # Baseline: the official-structure reference where it applies.
    reference = None
    why_not = reference_applicable(model)
    if cfg.baseline in ("auto", "reference") and why_not is None:
        try:
            reference = build_reference(model, cfg.reference, official_state)
        except (FileNotFoundError, RuntimeError) as err:
            why_not = str(err)
    if cfg.baseline == "reference" and reference is None:
        raise UserError(f"--baseline reference: {why_not}")
    baseline = "reference" if reference is not None else "eager"
    result["baseline"] = baseline
    if reference is None:
        result["baseline_note"] = f"no official-structure reference: {why_not}; ratios are to poster-fer eager"

    names = list(cfg.variants) if cfg.variants else _default_variants(device, cfg.compile)
    if cfg.compile:
        names += [n for n in COMPILED if n not in names]
    if baseline not in names:
        names.insert(0, baseline)
    unknown = [n for n in names if n not in ALL_VARIANTS]
    if unknown:
        from ..cli import UserError

        raise UserError(f"unknown variant(s) {unknown}; choose from {', '.join(ALL_VARIANTS)}")

    size = int(model.cfg.input_size)
    largest = max(cfg.batch_sizes)
    result["inference"] = {}
    threads = cfg.threads or torch.get_num_threads()

    def over_budget() -> bool:
        return deadline is not None and time.perf_counter() > deadline

    with tempfile.TemporaryDirectory(prefix="poster-fer-bench-") as tmp:
        variants = build_variants([n for n in names if n not in COMPILED], model, device, reference, threads,
                                  Path(tmp), log)
        result["variants"] = {n: {"exact": v.exact, "description": v.description, "paths": list(v.paths),
                                  **v.extra} for n, v in variants.items()}

        def batch_stage(batch: int) -> None:
            section = f"batch_{batch}"
            if over_budget():
                result["inference"][section] = {"batch": batch, "skipped": "time budget exhausted"}
                return
            reps = cfg.reps or _default_reps(batch, device)
            result["inference"][section] = measure_section(variants, baseline, batch, size, reps, cfg.warmup,
                                                           device, deadline, log)

        def train_stage() -> None:
            if over_budget():
                result["training"] = {"skipped": "time budget exhausted"}
                return
            tb = cfg.train_batch or (8 if device == "cpu" else 128)
            tnames = list(cfg.train_variants) if cfg.train_variants else ["reference", "eager", "opt", "bf16"]
            log(f"training: {tnames} at batch {tb}")
            result["training"] = bench_training(model, reference, tnames, device, tb, cfg.train_steps, deadline, log)

        def compiled_stage(compiled: list[str]) -> None:
            # Compiling is slow and specialises on the batch size: one pass at the largest batch, interleaved
            # with a fresh baseline run so that the ratios stay same-conditions ratios.
            section = f"batch_{largest}"
            target = result["inference"].setdefault(section, {"batch": largest, "variants": {}})
            target.setdefault("variants", {})
            if over_budget():
                target["compiled"] = {"skipped": "time budget exhausted"}
                return
            comp = build_variants(compiled, model, device, reference, threads, Path(tmp), log)
            comp = {baseline: variants[baseline], **comp}
            result["variants"].update({n: {"exact": v.exact, "description": v.description,
                                           "paths": list(v.paths)} for n, v in comp.items() if n in COMPILED})
            reps = cfg.reps or _default_reps(largest, device)
            measured = measure_section(comp, baseline, largest, size, reps, cfg.warmup, device, None, log)
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
                batches, info = agreement_batches(model, cfg.data_root, cfg.agreement_images, 32)
                log(f"agreement on {info['images']} FER2013 test images")
                agree = measure_agreement(variants, baseline, batches, device, log)
                info["note"] = RANDOM_WEIGHTS_NOTE if "recipe" in weights_desc else ""
                result["agreement"] = {**info, "baseline": baseline, "variants": agree}
            except Exception as err:  # noqa: BLE001  (missing data: say so, keep the timings)
                log(f"agreement check skipped: {type(err).__name__}: {err}")
                result["agreement"] = {"skipped": f"{type(err).__name__}: {err}"[:500]}

        # Most important first, so that a time budget (or a kill) loses the least: throughput at the largest
        # batch, training, the compiled pass, then the other batch sizes and the image agreement check.
        stages: list[Callable[[], None]] = [lambda: batch_stage(largest)]
        if cfg.train:
            stages.append(train_stage)
        compiled = [n for n in names if n in COMPILED]
        if compiled:
            stages.append(lambda: compiled_stage(compiled))
        stages += [lambda b=b: batch_stage(b) for b in cfg.batch_sizes if b != largest]
        if cfg.agreement_images > 0:
            stages.append(agreement_stage)
        for stage in stages:
            stage()
            _write(result, cfg.out)
        result["inference"] = dict(sorted(result["inference"].items(), key=lambda kv: kv[1].get("batch", 0)))
        variants.clear()

    result["load_average_end"] = load_average()
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    result.update(summarize(result))
    _write(result, cfg.out)
    return result


def summarize(result: dict[str, Any], batch: int | None = None) -> dict[str, Any]:
    """Headline numbers at ``batch`` (default: the largest measured): the fastest exact path and bf16 path."""
    sections = {k: v for k, v in result.get("inference", {}).items() if "variants" in v}
    if not sections:
        return {}
    key = f"batch_{batch}" if batch is not None else max(sections, key=lambda k: sections[k]["batch"])
    if key not in sections:
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
    train = (result.get("training") or {}).get("variants") or {}
    if train:
        best = max((n for n in train if "speedup" in train[n]), key=lambda n: train[n]["speedup"], default=None)
        if best:
            out["training_speedup"] = train[best]["speedup"]
            out["training_variant"] = best
    return out


def _write(result: dict[str, Any], out: str | None) -> None:
    if not out:
        return
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _int_list(text: str, what: str) -> tuple[int, ...]:
    from ..cli import UserError

    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UserError(f"{what} must be comma-separated integers, not {text!r}") from None
    if not values or min(values) < 1:
        raise UserError(f"{what} must be positive integers, not {text!r}")
    return values


def _names(text: str | None) -> tuple[str, ...] | None:
    return tuple(v.strip() for v in text.split(",") if v.strip()) if text else None


def _command_line(args: argparse.Namespace, prog: str = "poster-fer bench") -> str:
    """The invocation that reproduces ``args`` (options left at their defaults omitted)."""
    defaults = vars(build_bench_parser().parse_args([]))
    parts = prog.split()
    for key, value in vars(args).items():
        if key not in defaults or value == defaults[key]:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif isinstance(value, list):
            parts += [flag, *map(str, value)]
        else:
            parts += [flag, str(value)]
    return " ".join(parts)


def build_bench_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="poster-fer")
    register(parser.add_subparsers())
    return parser._subparsers._group_actions[0].choices["bench"]


def run(args: argparse.Namespace, prog: str = "poster-fer bench") -> int:
    from ..cli import UserError
    from .info import parse_overrides

    if args.weights and not Path(args.weights).exists():
        raise UserError(f"{args.weights}: no such model")
    unknown = [n for n in (_names(args.variants) or ()) if n not in ALL_VARIANTS]
    if unknown:
        raise UserError(f"unknown variant(s) {unknown}; choose from {', '.join(ALL_VARIANTS)}")
    train_names = _names(args.train_variants)
    if train_names:
        bad = [n for n in train_names if n not in TRAIN_VARIANTS]
        if bad:
            raise UserError(f"unknown training variant(s) {bad}; choose from {', '.join(TRAIN_VARIANTS)}")
    cfg = BenchConfig(
        model=args.model, weights=args.weights, overrides=parse_overrides(args.set), recipe_keys=args.recipe_keys,
        device=args.device, batch_sizes=_int_list(args.batch_sizes, "--batch-sizes"),
        variants=_names(args.variants), compile=args.compile, baseline=args.baseline, reference=args.reference,
        reps=args.reps, warmup=args.warmup, threads=args.threads, agreement_images=args.agreement_images,
        data_root=args.data_root, train=args.train, train_batch=args.train_batch, train_steps=args.train_steps,
        train_variants=train_names, time_budget=args.time_budget, out=args.out,
        command=_command_line(args, prog),
    )
    try:
        result = run_benchmark(cfg)
    except (TypeError, ValueError) as err:
        raise UserError(str(err)) from None
    headline = {k: result[k] for k in ("fp32_speedup", "fp32_rel_error", "fp32_variant", "bf16_speedup",
                                       "bf16_top1_agreement", "fastest_variant", "training_speedup") if k in result}
    print(json.dumps(headline, indent=2))
    if args.out:
        print(f"results written to {args.out}", file=sys.stderr)
    return 0
