"""The inference benchmark (benchmarks/bench_inference.py and its helpers in benchmarks/_harness.py): runs on a
tiny model in seconds, writes the documented JSON; the reference model in benchmarks/ computes what the official
code computes."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import need_shared

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))  # the scripts import their siblings by name, as `python benchmarks/X.py`
bench = importlib.import_module("bench_inference")
harness = importlib.import_module("_harness")

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny models, one thread

TINY = ["--model", "poster_v1_tiny", "--set", "input_size=112", "backbone_size=56", "landmark_size=56",
        "image_tokens=pool"]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_inference_bench_on_tiny_model(tmp_path, capsys):
    """The whole inference harness end to end on CPU: a tiny model, two batch sizes, two short rounds."""
    out = tmp_path / "bench.json"
    returned = bench.main([*TINY, "--batch-sizes", "1,2", "--variants", "eager,fp32_opt,bf16", "--rounds", "2",
                           "--min-run-time", "0.01", "--threads", "1", "--out", str(out)])
    headline = json.loads(capsys.readouterr().out)
    result = json.loads(out.read_text())
    assert result["command"].startswith("python benchmarks/bench_inference.py --model poster_v1_tiny")
    assert returned["command"] == result["command"]
    for key in ("git", "machine", "device", "load_average_start", "baseline", "inference", "seconds"):
        assert key in result
    assert result["machine"]["torch"] == torch.__version__ and result["machine"]["threads"] == 1
    assert result["machine"]["cpu"] and "fp32" in result["machine"]["matmul_gflops"]
    assert result["baseline"] == "eager" and "differs from the official" in result["baseline_note"]
    for batch in (1, 2):
        entries = result["inference"][f"batch_{batch}"]["variants"]
        assert set(entries) == {"eager", "fp32_opt", "bf16"}
        for e in entries.values():
            # every variant timed in both rounds, each round at least one Timer block of at least one call
            assert e["faces_per_s"] > 0 and e["rounds"] == 2 and e["calls"] >= e["blocks"] >= 2
            assert e["latency_ms"]["p50"] <= e["latency_ms"]["p90"] <= e["latency_ms"]["p99"]
            assert "peak_mb" in e["memory"]
        assert entries["eager"]["speedup"] == 1.0 and entries["eager"]["rel_error"] == 0.0
        assert entries["fp32_opt"]["exact"] and entries["fp32_opt"]["rel_error"] <= 1e-4
        assert not entries["bf16"]["exact"] and entries["bf16"]["rel_error"] < 0.1
    for key in ("fp32_speedup", "fp32_rel_error", "bf16_speedup", "bf16_top1_agreement"):
        assert key in result and key in headline
    assert result["fp32_variant"] == "fp32_opt" and result["summary_batch"] == 2


def test_cuda_only_variants_are_skipped_on_cpu(tmp_path):
    from poster_fer import create_model

    model = create_model("poster_v1_tiny", input_size=112, backbone_size=56, landmark_size=56,
                         image_tokens="pool").eval()
    logged: list[str] = []
    built = bench.build_variants(["eager", "fp32_graphs", "bf16_graphs"], model, "cpu", None, 1, tmp_path,
                                 logged.append)
    assert list(built) == ["eager"]
    assert sum("CUDA graphs need a CUDA device" in m for m in logged) == 2


def test_bench_rejects_unknown_variant(capsys):
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--model", "poster_v1_tiny", "--variants", "warp_drive", "--batch-sizes", "1"])
    assert exit_.value.code == 2
    assert "warp_drive" in capsys.readouterr().err


def test_interleaved_timer_rounds():
    """Every callable is timed in every round by torch.utils.benchmark.Timer; the order rotates per round."""
    order: list[str] = []
    timings = harness.time_interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                                       rounds=3, min_run_time=1e-4, threads=1)
    assert set(timings) == {"a", "b"}
    for t in timings.values():
        assert t.rounds == 3 and t.calls >= len(t.measurement.times) >= 3 and t.median > 0
    # each round sizes its blocks with one call, then times at least one block; how many calls a block holds
    # depends on the machine's speed at that moment, so the two counts need not be equal
    assert order.count("a") >= 3 * 2 and order.count("b") >= 3 * 2
    # rounds a|b, b|a, a|b: runs of equal names merge across rounds into a, b, a, b (without the rotation
    # a|b, a|b, a|b would give six runs)
    runs = [name for i, name in enumerate(order) if i == 0 or order[i - 1] != name]
    assert runs == ["a", "b", "a", "b"]
    entry = harness.timing_entry(timings["a"])
    assert set(entry) == {"latency_ms", "iqr_ms", "rounds", "blocks", "calls"}


def test_percentiles_are_observed_values():
    values = [float(v) for v in range(1, 101)]
    assert harness.percentiles(values) == {"p50": 50.0, "p90": 90.0, "p99": 99.0}
    assert harness.percentiles([3.0]) == {"p50": 3.0, "p90": 3.0, "p99": 3.0}


def test_summary_picks_fastest_exact_and_bf16():
    result = {"baseline": "reference", "inference": {"batch_32": {"batch": 32, "variants": {
        "reference": {"exact": True, "speedup": 1.0, "rel_error": 0.0, "faces_per_s": 8.0,
                      "top1_agreement_random": 1.0},
        "fp32_opt": {"exact": True, "speedup": 1.3, "rel_error": 5e-6, "faces_per_s": 10.4,
                     "top1_agreement_random": 1.0},
        "onnxruntime": {"exact": True, "speedup": 1.1, "rel_error": 2e-6, "faces_per_s": 8.8,
                        "top1_agreement_random": 1.0},
        "bf16": {"exact": False, "speedup": 0.2, "rel_error": 5e-3, "faces_per_s": 1.6,
                 "top1_agreement_random": 0.9},
    }}}, "agreement": {"variants": {"bf16": {"top1_agreement": 0.97}}}}
    s = bench.summarize(result)
    assert (s["fp32_variant"], s["fp32_speedup"], s["fp32_rel_error"]) == ("fp32_opt", 1.3, 5e-6)
    assert (s["bf16_speedup"], s["bf16_top1_agreement"]) == (0.2, 0.97)
    assert s["bf16_top1_agreement_on"] == "fer2013 test images"


def test_reference_applies_only_to_the_official_configuration():
    from poster_fer import create_model

    assert harness.reference_applicable(create_model("poster_v1", depth=1)) is not None
    assert harness.reference_applicable(create_model("poster_v1_tiny")) is not None
    assert harness.reference_applicable(create_model("poster_v1")) is None
    # the reference is a sibling module of the scripts, imported by name (no repository root computed)
    assert bench.ReferencePoster.__module__ == "reference_poster"


def test_reference_model_matches_official_outputs():
    """benchmarks/reference_poster.py reproduces the official code's outputs on the parity fixture, and
    poster-fer's poster_v1 with the same weights agrees with it."""
    keys_json = need_shared("parity", "poster_v1_rafdb.keys.json")
    expected = load_file(str(need_shared("parity", "poster_v1_rafdb.expected.safetensors")))
    x = load_file(str(need_shared("parity", "input.safetensors")))["input"]
    reference_poster = importlib.import_module("reference_poster").reference_poster
    from poster_fer import create_model
    from poster_fer.weights.official import convert_official_state_dict
    from poster_fer.weights.parity import recipe_state_dict

    ours = create_model("poster_v1")
    ints = {k: v for k, v in ours.state_dict().items() if not v.is_floating_point()}
    state = recipe_state_dict(keys_json, ints)
    ref = reference_poster(state)  # strict load: dead modules included, as in the official checkpoints
    with torch.no_grad():
        logits, feats = ref(x)
        landmarks, _ = ref.face_landback(torch.nn.functional.interpolate(x, size=112))
        ours.load_state_dict(convert_official_state_dict(state, ours)[0])
        mine = ours.eval()(x)
    assert rel_err(logits, expected["logits"]) <= 1e-4
    assert rel_err(feats, expected["features"]) <= 1e-4
    assert rel_err(landmarks, expected["landmark_stream_out"]) <= 1e-4
    assert rel_err(mine, logits) <= 1e-4


@pytest.mark.parametrize("script", sorted(p.stem for p in BENCHMARKS.glob("*.py")))
def test_every_benchmark_script_imports(script):
    """A refactor of the library must not leave a recorded benchmark unrunnable: each script's imports resolve
    (they ran only by hand before, so a renamed helper broke default_model.py and robustness.py unnoticed)."""
    module = importlib.import_module(script)
    assert module.__file__ == str(BENCHMARKS / f"{script}.py")


def test_robustness_benchmark_names_the_operating_points_it_can_use(tmp_path):
    """--operating-point picks one of the calibrations the weights record; an unknown one is refused with the list."""
    robustness = importlib.import_module("robustness")
    with pytest.raises(SystemExit, match="no operating point 'nope'.*it has: default, balanced"):
        robustness.main(["--operating-point", "nope", "--out", str(tmp_path / "r.json")])
    assert not (tmp_path / "r.json").exists()


def test_precision_agreement_counts_the_faces_whose_class_changes():
    """The bf16 gate of issue 23's rule: agreement is the share of equal predictions, and mismatched inputs are
    refused rather than broadcast."""
    agreement = importlib.import_module("precision_agreement").agreement
    out = agreement(np.array([0, 1, 2, 3] * 50), np.array([0, 1, 2, 3] * 49 + [0, 1, 2, 0]))
    assert out == {"top1_agreement": 0.995, "disagreements": 1, "num_samples": 200}
    with pytest.raises(ValueError, match="equal-length"):
        agreement(np.array([0, 1]), np.array([[0, 1]]))
    with pytest.raises(ValueError, match="non-empty"):
        agreement(np.array([]), np.array([]))
