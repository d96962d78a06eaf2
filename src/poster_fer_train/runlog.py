"""What a training run records: the machine, the JSON-lines log (and TensorBoard), and the metric summaries."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from poster_fer.distributed import DistEnv
from poster_fer.evaluation.loop import EvalOutput
from poster_fer.jsonable import to_jsonable
from poster_fer.precision import cpu_has_fast_bf16
from poster_fer.provenance import cpu_model, load_average

#: The run directory's files: the JSON-lines log, the final record, the best model's folder.
LOG_FILE = "log.jsonl"
RESULTS_FILE = "results.json"
BEST_DIR = "best"


def machine_info(device: torch.device, env: DistEnv) -> dict[str, Any]:
    """What ran the training: CPU model and cores, torch, device, world size."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_fast_bf16": cpu_has_fast_bf16(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "world_size": env.world_size,
    }
    load = load_average()
    if load is not None:
        info["loadavg_1_5_15"] = load
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# ----------------------------------------------------------------------------------------------- logging ----


class RunLog:
    """JSON lines in ``log.jsonl`` (rank 0 only), optionally mirrored to TensorBoard."""

    def __init__(self, run_dir: Path | None, tensorboard: bool = False) -> None:
        self.path = run_dir / LOG_FILE if run_dir is not None else None
        self.tb = None
        if run_dir is not None and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                print("tensorboard is not installed; logging to log.jsonl only (pip install tensorboard)",
                      file=sys.stderr)

    def __call__(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        record = {"time": round(time.time(), 3), **record}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(to_jsonable(record)) + "\n")
        if self.tb is not None:
            step = record.get("step", record.get("epoch", 0))
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("time", "step", "epoch"):
                    self.tb.add_scalar(f"{record.get('type', 'log')}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


@dataclass(frozen=True)
class RunOutput:
    """How a run reports itself: the command line it records (``None``: not from a command), where it prints
    its lines, and where a copy of ``results.json`` goes (``None``: nowhere else)."""

    command: str | None = None
    echo: Callable[..., Any] = print
    results_out: str | os.PathLike[str] | None = None


def finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


# -------------------------------------------------------------------------------------------------- model ----


def split_metrics(out: EvalOutput, classes: list[str]) -> dict[str, Any]:
    from poster_fer.evaluation import compute_metrics

    m = compute_metrics(out.y_true, out.y_pred, classes, probs=out.probs)
    m["loss"] = finite(out.loss)
    return m


def metric_summary(m: dict[str, Any]) -> dict[str, Any]:
    keys = ("accuracy", "mean_class_accuracy", "macro_f1", "nll", "loss", "num_samples")
    return {k: m.get(k) for k in keys if k in m}
