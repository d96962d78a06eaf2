"""The training-step benchmark (benchmarks/bench_train_step.py) runs the recipe's own model under each setting,
interleaved, and records what it measured."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPT = BENCHMARKS / "bench_train_step.py"
QUICK = ["--recipe", "tiny", "--batch", "4", "--threads", "1", "--warmup", "0", "--rounds", "2",
         "--min-run-time", "0.01"]


def _load():
    """The script as a module, imported the way ``python benchmarks/bench_train_step.py`` finds its siblings
    (``_harness``, ``reference_poster``): with the benchmarks folder on ``sys.path``."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    module = importlib.import_module("bench_train_step")
    assert Path(module.__file__) == SCRIPT
    return module


def test_variants_are_measured_and_recorded(tmp_path):
    bench = _load()
    out = tmp_path / "step.json"
    record = bench.main([*QUICK, "--variants", "sdpa,plain_fused", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved == record
    assert set(saved["variants"]) == {"sdpa", "plain_fused"}
    for row in saved["variants"].values():
        assert row["img_s"] > 0 and row["step_ms"] > 0 and row["rounds"] == 2 and row["blocks"] >= 2
        assert row["latency_ms"]["p50"] <= row["latency_ms"]["p99"]
    assert saved["variants"]["plain_fused"]["fused"] is True and saved["variants"]["sdpa"]["sdpa"] is True
    assert saved["variants"]["sdpa"]["fused"] is False and saved["variants"]["plain_fused"]["sdpa"] is False
    assert saved["batch"] == 4 and saved["machine"]["threads"] == 1 and saved["recipe"] == "tiny"
    assert saved["baseline"] == "sdpa" and saved["variants"]["sdpa"]["speedup"] == 1.0
    assert "--variants" in saved["command"] and "commit" in saved["git"]
    assert saved["command"].startswith("python benchmarks/bench_train_step.py --recipe tiny")


def test_former_bench_train_variants_end_to_end_on_cpu():
    """The variants that came from ``poster-fer bench --train``: bf16 runs on CPU; the CUDA-graph step and the
    official-structure reference say why they are skipped (no CUDA; the tiny recipe's model is not the official
    POSTER) instead of failing; the ratio is to the first variant measured when there is no reference."""
    record = _load().main([*QUICK, "--variants", "reference,eager,opt,bf16,bf16_graphs"])
    assert list(record["variants"]) == ["eager", "opt", "bf16"]
    assert record["baseline"] == "eager" and record["variants"]["eager"]["speedup"] == 1.0
    assert "CUDA graphs need a CUDA device" in record["skipped"]["bf16_graphs"]
    assert "differs from the official" in record["skipped"]["reference"]
    opt, bf16 = record["variants"]["opt"], record["variants"]["bf16"]
    assert opt["channels_last"] and opt["fused"] and opt["sdpa"] and opt["precision"] == "fp32"
    assert bf16["precision"] == "bf16" and record["variants"]["eager"]["channels_last"] is False
    assert record["fastest_variant"]["name"] in record["variants"]


def test_unknown_variant_is_refused():
    with pytest.raises(SystemExit):
        _load().main(["--recipe", "tiny", "--variants", "warp_drive"])
