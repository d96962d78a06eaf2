"""The benchmark harness: runs on a tiny model in seconds, writes the documented JSON; the reference model in
benchmarks/ computes what the official code computes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import need_shared
from poster_fer.cli import main
from poster_fer.commands.bench import DEFAULT_REFERENCE, percentiles, reference_applicable, summarize

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny models, one thread


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_bench_command_on_tiny_model(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", "--model", "poster_v1_tiny", "--batch-sizes", "1,2", "--variants", "eager,fp32_opt,bf16",
                 "--reps", "2", "--threads", "1", "--out", str(out), "--set", "input_size=112", "backbone_size=56",
                 "landmark_size=56", "image_tokens=pool"])
    assert code == 0
    headline = json.loads(capsys.readouterr().out)
    result = json.loads(out.read_text())
    assert result["command"].startswith("poster-fer bench --model poster_v1_tiny")
    for key in ("git", "machine", "device", "load_average_start", "baseline", "inference", "seconds"):
        assert key in result
    assert result["machine"]["torch"] == torch.__version__ and result["machine"]["threads"] == 1
    assert result["machine"]["cpu"] and "fp32" in result["machine"]["matmul_gflops"]
    assert result["baseline"] == "eager" and "differs from the official" in result["baseline_note"]
    for batch in (1, 2):
        entries = result["inference"][f"batch_{batch}"]["variants"]
        assert set(entries) == {"eager", "fp32_opt", "bf16"}
        for e in entries.values():
            assert e["faces_per_s"] > 0 and e["calls"] == 2
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
    from poster_fer.commands.bench import bench_training, build_variants

    model = create_model("poster_v1_tiny", input_size=112, backbone_size=56, landmark_size=56,
                         image_tokens="pool").eval()
    logged: list[str] = []
    built = build_variants(["eager", "fp32_graphs", "bf16_graphs"], model, "cpu", None, 1, tmp_path, logged.append)
    assert list(built) == ["eager"]
    assert sum("CUDA graphs need a CUDA device" in m for m in logged) == 2
    train = bench_training(model, None, ["eager", "bf16_graphs"], "cpu", batch=2, steps=1, deadline=None,
                           log=logged.append)
    assert list(train["variants"]) == ["eager"] and train["variants"]["eager"]["images_per_s"] > 0


def test_bench_rejects_unknown_variant(capsys):
    assert main(["bench", "--model", "poster_v1_tiny", "--variants", "warp_drive", "--batch-sizes", "1"]) == 2
    assert "warp_drive" in capsys.readouterr().err


def test_percentiles_are_observed_values():
    values = [float(v) for v in range(1, 101)]
    assert percentiles(values) == {"p50": 50.0, "p90": 90.0, "p99": 99.0}
    assert percentiles([3.0]) == {"p50": 3.0, "p90": 3.0, "p99": 3.0}


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
    s = summarize(result)
    assert (s["fp32_variant"], s["fp32_speedup"], s["fp32_rel_error"]) == ("fp32_opt", 1.3, 5e-6)
    assert (s["bf16_speedup"], s["bf16_top1_agreement"]) == (0.2, 0.97)
    assert s["bf16_top1_agreement_on"] == "fer2013 test images"


def test_reference_applies_only_to_the_official_configuration():
    from poster_fer import create_model

    assert reference_applicable(create_model("poster_v1", depth=1)) is not None
    assert reference_applicable(create_model("poster_v1_tiny")) is not None
    assert DEFAULT_REFERENCE == BENCHMARKS / "reference_poster.py" and DEFAULT_REFERENCE.is_file()


def test_reference_model_matches_official_outputs():
    """benchmarks/reference_poster.py reproduces the official code's outputs on the parity fixture, and
    poster-fer's poster_v1 with the same weights agrees with it."""
    keys_json = need_shared("parity", "poster_v1_rafdb.keys.json")
    expected = load_file(str(need_shared("parity", "poster_v1_rafdb.expected.safetensors")))
    x = load_file(str(need_shared("parity", "input.safetensors")))["input"]
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from reference_poster import reference_poster
    finally:
        sys.path.remove(str(BENCHMARKS))
    from poster_fer import create_model
    from poster_fer.weights.official import convert_official_state_dict
    from poster_fer.weights.recipe import recipe_state_dict

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
