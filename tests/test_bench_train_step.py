"""The training-step benchmark runs the recipe's own model under each setting and records what it measured."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_train_step.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_train_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_variants_are_measured_and_recorded(tmp_path):
    bench = _load()
    out = tmp_path / "step.json"
    record = bench.main(["--recipe", "tiny", "--variants", "sdpa,plain_fused", "--batch", "4", "--threads", "1",
                         "--steps", "1", "--warmup", "0", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved == record
    assert set(saved["variants"]) == {"sdpa", "plain_fused"}
    for row in saved["variants"].values():
        assert row["img_s"] > 0 and row["step_ms"] > 0
    assert saved["variants"]["plain_fused"]["fused"] is True and saved["variants"]["sdpa"]["sdpa"] is True
    assert saved["batch"] == 4 and saved["machine"]["threads"] == 1 and saved["recipe"] == "tiny"
    assert "--variants" in saved["command"] and "commit" in saved["git"]


def test_unknown_variant_is_refused():
    with pytest.raises(SystemExit):
        _load().main(["--recipe", "tiny", "--variants", "warp_drive"])
