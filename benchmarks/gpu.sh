#!/usr/bin/env bash
# One prepared GPU benchmark: POSTER v1 inference faces/s and training images/s against the official-structure
# reference (benchmarks/reference_poster.py), same process, interleaved. Needs only python3 with torch + CUDA:
# the package need not be installed (PYTHONPATH=src). Writes JSON + log to benchmarks/results/ and to $OUT if set.
#
#   bash benchmarks/gpu.sh            # about 3-5 minutes on an H100; hard limit GPU_BENCH_LIMIT seconds (330)
#   GPU_BENCH_DEVICE=cpu GPU_BENCH_MODEL=poster_v1_tiny GPU_BENCH_BATCHES=2,1 GPU_BENCH_TRAIN_BATCH=2 \
#       GPU_BENCH_RESULTS=/tmp/gpu-dry bash benchmarks/gpu.sh      # dry run of the plumbing on a CPU
#
# Stages, most important first; results are written after every stage, so a kill keeps what was measured:
#   1. inference at batch 1024 (throughput): reference, eager, fp32_opt (every exact path), bf16 (autocast),
#      bf16_cast (bf16 weights and activations), fp32_graphs / bf16_graphs (the same replayed from CUDA graphs);
#   2. training steps at batch 128 (official loss, Adam): reference (fp32), opt, bf16, bf16_graphs (the whole
#      step captured as one CUDA graph: on an H100 the eager step is bound by kernel-launch overhead);
#   3. bf16_compile (bf16 + torch.compile) at batch 1024, against a fresh reference pass;
#   4. inference at batch 32 and 1 (latency).
# Targets (issue 6): >= 10,000 faces/s inference on an H100; training >= 3x the reference.
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
LIMIT="${GPU_BENCH_LIMIT:-330}"          # whole python run, seconds (the GPU session budget is tiny)
BUDGET="${GPU_BENCH_BUDGET:-200}"        # after this many seconds, remaining stages are skipped
DEVICE="${GPU_BENCH_DEVICE:-cuda}"       # cpu + a tiny model = a dry run of this script's plumbing
MODEL="${GPU_BENCH_MODEL:-poster_v1}"
BATCHES="${GPU_BENCH_BATCHES:-1024,32,1}"
TRAIN_BATCH="${GPU_BENCH_TRAIN_BATCH:-128}"
RESULTS="${GPU_BENCH_RESULTS:-benchmarks/results}"
mkdir -p "$RESULTS"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

echo "== card"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv \
    | tee "$RESULTS/gpu_card.csv" || echo "nvidia-smi failed" | tee "$RESULTS/gpu_card.csv"

echo "== environment"
"$PY" - <<'EOF' || true
import importlib.util, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0))
for mod in ("safetensors", "onnx", "onnxruntime", "numpy", "triton"):
    print(mod, "present" if importlib.util.find_spec(mod) else "missing")
EOF

echo "== benchmark (limit ${LIMIT}s, stage budget ${BUDGET}s)"
OUTJSON="$RESULTS/bench_gpu_${MODEL}.json"
timeout -k 10 "$LIMIT" "$PY" benchmarks/bench_inference.py \
    --device "$DEVICE" --model "$MODEL" --recipe-keys "" \
    --batch-sizes "$BATCHES" \
    --variants reference,eager,fp32_opt,bf16,bf16_cast,fp32_graphs,bf16_graphs,bf16_compile \
    --train --train-batch "$TRAIN_BATCH" --train-steps 5 --train-variants reference,opt,bf16,bf16_graphs \
    --time-budget "$BUDGET" --out "$OUTJSON" 2>&1 | tee "$RESULTS/bench_gpu_${MODEL}.log"
rc=${PIPESTATUS[0]}
echo "== benchmark exit status $rc (124 = hit the ${LIMIT}s limit; partial results are kept)"

if [ -f "$OUTJSON" ]; then
    "$PY" - "$OUTJSON" <<'EOF' || true
import json, sys
r = json.load(open(sys.argv[1]))
print("card:", r["machine"].get("gpu"), "| torch", r["machine"]["torch"])
for sec, body in r.get("inference", {}).items():
    for name, e in (body.get("variants") or {}).items():
        print(f"{sec:11s} {name:14s} {e['faces_per_s']:10.1f} faces/s  x{e['speedup']:.2f} vs {r['baseline']}"
              f"  rel err {e['rel_error']:.1e}  top1(random) {e['top1_agreement_random']:.3f}")
for name, e in ((r.get("training") or {}).get("variants") or {}).items():
    print(f"training    {name:14s} {e['images_per_s']:10.1f} img/s    x{e.get('speedup', float('nan')):.2f}")
best = max(((n, e["faces_per_s"]) for b in r.get("inference", {}).values()
            for n, e in (b.get("variants") or {}).items()), key=lambda t: t[1], default=None)
print("best inference:", best, "(target >= 10000 faces/s on an H100)")
print("training speedup:", r.get("training_speedup"), r.get("training_variant"), "(target >= 3x)")
EOF
fi

if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    cp -f "$RESULTS"/gpu_card.csv "$RESULTS"/bench_gpu_"${MODEL}".* "$OUT"/ 2>/dev/null || true
fi
exit "$rc"
