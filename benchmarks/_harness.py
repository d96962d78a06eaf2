"""What the benchmark scripts in this folder share: interleaved timing with ``torch.utils.benchmark.Timer``,
nearest-rank percentiles, peak memory, the machine record, the command line, and writing the result JSON.

Scripts here run as ``python benchmarks/NAME.py``, so Python puts this folder on ``sys.path`` and siblings import
each other by name (``from _harness import ...``, ``from reference_poster import ReferencePoster``); tests do
the same by adding the folder to ``sys.path``. Nothing here computes the repository's location. ``poster_fer``
must be importable (installed, or ``PYTHONPATH=src``).

Timing design: every variant gets its own ``Timer``; a measurement is a number of *rounds*, and each round takes
one short ``Timer.blocked_autorange(min_run_time=...)`` of every variant, the order rotating from round to round,
so that a machine that gets busier (or quieter) during the run affects all variants alike. ``blocked_autorange``
first runs the statement to size its blocks, which also re-warms a variant after the others ran; the blocks it
then times are the samples. The rounds of one variant are merged with ``Measurement.merge``: the median and IQR
are the ``Measurement``'s, the latency percentiles are nearest-rank over its per-block times (each the mean of
the calls in one block: one call per block for anything slower than ``min_run_time``).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.benchmark import Measurement, Timer

from poster_fer.precision import cpu_has_fast_bf16
from poster_fer.provenance import cpu_flags, cpu_model

__all__ = ["Timing", "Unavailable", "command_line", "log", "machine_info", "now", "parse_overrides",
           "peak_memory_mb", "percentiles", "reference_applicable", "synchronize", "time_interleaved",
           "timing_entry", "write_json"]


class Unavailable(Exception):
    """A variant that cannot run here (no CUDA, no reference for this model, a missing runtime); the message
    says why and goes into the results instead of the numbers."""


def log(msg: str, tag: str = "bench") -> None:
    print(f"[{tag} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# --- the record ------------------------------------------------------------------------------------------------

def machine_info(device: str | torch.device) -> dict[str, Any]:
    """The machine a result was measured on (CPU, flags, torch, threads, GPU) for the results record."""
    info: dict[str, Any] = {
        "cpu": cpu_model(), "cpu_count": os.cpu_count(), "cpu_flags": cpu_flags(),
        "cpu_capability": getattr(torch.backends.cpu, "get_cpu_capability", lambda: None)(),
        "cpu_fast_bf16": cpu_has_fast_bf16(),
        "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    with contextlib.suppress(ImportError):
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    device = torch.device(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    cudnn_benchmark=torch.backends.cudnn.benchmark,
                    tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32)
    else:
        info["gpu"] = None
    return info


def command_line(script: str, argv: list[str]) -> str:
    """The command that was run: ``python benchmarks/SCRIPT.py`` and the arguments as given."""
    return shlex.join(["python", f"benchmarks/{Path(script).name}", *argv])


def parse_overrides(items: list[str], error: Callable[[str], Any]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs with YAML values (as ``poster-fer train`` and ``info`` take them); ``error`` reports a
    bad one (``argparse.ArgumentParser.error``)."""
    from poster_fer_apps.cli import UserError
    from poster_fer_apps.commands.common import parse_overrides as parse

    try:
        return parse(items)
    except UserError as e:
        return error(str(e))


def write_json(result: dict[str, Any], out: str | os.PathLike[str] | None) -> None:
    """Write ``result`` to ``out`` atomically (a reader never sees half a file); nothing when ``out`` is None."""
    if not out:
        return
    import results_index  # this folder is on sys.path

    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    inside = path.resolve().is_relative_to(results_index.RESULTS.resolve())
    if inside:  # a record under benchmarks/results/ carries the envelope, and INDEX.md lists it
        result = {"envelope": results_index.envelope(path.resolve(), result),
                  **{k: v for k, v in result.items() if k != "envelope"}}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    if inside:
        results_index.INDEX.write_text(results_index.render_index())


def reference_applicable(model: Any) -> str | None:
    """Why ``reference_poster.ReferencePoster`` cannot stand in for ``model`` (``None`` if it can)."""
    from poster_fer.models import PosterConfig

    if getattr(model, "family", None) != "poster_v1":
        return f"the reference mirrors POSTER v1, not {getattr(model, 'model_name', type(model).__name__)}"
    default = PosterConfig()
    for key in ("input_size", "backbone_size", "landmark_size", "resize_mode", "streams", "fusion", "pyramid",
                "dims", "depth", "heads", "mlp_ratio", "query_projection", "image_tokens", "ir"):
        if getattr(model.cfg, key) != getattr(default, key):
            return f"config {key}={getattr(model.cfg, key)!r} differs from the official POSTER"
    return None


# --- timing and memory -----------------------------------------------------------------------------------------

def synchronize(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def percentiles(values: list[float], qs: tuple[int, ...] = (50, 90, 99)) -> dict[str, float]:
    """Nearest-rank percentiles (no interpolation: every reported value was observed)."""
    ordered = sorted(values)
    out = {}
    for q in qs:
        rank = max(1, -(-q * len(ordered) // 100))
        out[f"p{q}"] = ordered[rank - 1]
    return out


@dataclass
class Timing:
    """One variant's merged measurement: ``measurement.times`` are seconds per call, one per block."""

    measurement: Measurement
    rounds: int
    calls: int

    @property
    def median(self) -> float:
        return self.measurement.median


def time_interleaved(calls: dict[str, Callable[[], Any]], rounds: int, min_run_time: float, threads: int,
                     deadline: float | None = None, label: str = "") -> dict[str, Timing]:
    """Time each zero-argument callable in ``rounds`` interleaved rounds (see the module docstring).

    ``deadline`` (a ``time.perf_counter()`` value) ends the measurement after the round that passes it; the
    first round always runs. Every callable must already have run once (warm-up, compilation).
    """
    timers = {name: Timer(stmt="call()", globals={"call": fn}, num_threads=threads, label=label,
                          description=name) for name, fn in calls.items()}
    runs: dict[str, list[Measurement]] = {name: [] for name in calls}
    names = list(calls)
    for r in range(rounds):
        if r and deadline is not None and time.perf_counter() > deadline:
            break
        k = r % max(1, len(names))
        for name in names[k:] + names[:k]:
            runs[name].append(timers[name].blocked_autorange(min_run_time=min_run_time))
    return {name: Timing(Measurement.merge(ms)[0], len(ms), sum(m.number_per_run * len(m.raw_times) for m in ms))
            for name, ms in runs.items() if ms}


def timing_entry(t: Timing, digits: int = 2) -> dict[str, Any]:
    """The timing fields of a results entry: latency percentiles and IQR in ms, rounds, blocks, calls."""
    return {"latency_ms": {k: round(v * 1e3, digits) for k, v in percentiles(t.measurement.times).items()},
            "iqr_ms": round(t.measurement.iqr * 1e3, digits), "rounds": t.rounds,
            "blocks": len(t.measurement.times), "calls": t.calls}


def _rss_kb(field_name: str) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return None


def peak_memory_mb(fn: Callable[[], Any], device: str | torch.device) -> dict[str, Any]:
    """Memory one call adds at its peak: CUDA ``max_memory_allocated`` growth, or the CPU RSS high-water growth.

    On Linux, freed heap memory is first handed back to the system (``malloc_trim``) so that the call's buffers
    show up as RSS growth, and the RSS high-water mark is reset through ``/proc/self/clear_refs`` (value 5);
    where that is impossible the process-lifetime ``ru_maxrss`` growth is reported instead (a lower bound).
    """
    if torch.device(device).type == "cuda":
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
