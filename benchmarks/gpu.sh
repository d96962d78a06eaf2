#!/usr/bin/env bash
# One prepared GPU benchmark: POSTER v1 inference faces/s and training images/s against the official-structure
# reference (benchmarks/reference_poster.py), same process, interleaved. Needs python3 with torch + CUDA and the
# package's dependencies (the package itself need not be installed: PYTHONPATH=src). Writes JSON + logs to
# benchmarks/results/ and to $OUT if set.
#
#   bash benchmarks/gpu.sh            # about 3-5 minutes on an H100; hard limit GPU_BENCH_LIMIT seconds (330)
#   GPU_BENCH_DEVICE=cpu GPU_BENCH_MODEL=poster_v1_tiny GPU_BENCH_BATCHES=2,1 GPU_BENCH_TRAIN_BATCH=2 \
#       GPU_BENCH_TRAIN_RECIPE=tiny GPU_BENCH_RESULTS=/tmp/gpu-dry bash benchmarks/gpu.sh   # dry run on a CPU
#
# Two runs; results are written as they come, so a kill keeps what was measured:
#   A. benchmarks/bench_train_step.py: training steps at batch 128 (recipe rafdb_official without SAM: the
#      official v1 loss, Adam): reference (fp32), opt, bf16, bf16_graphs (the whole step captured as one CUDA
#      graph: on an H100 the eager step is bound by kernel-launch overhead);
#   B. benchmarks/bench_inference.py, stages most important first: inference at batch 1024 (reference, eager,
#      fp32_opt, bf16 autocast, bf16_cast, fp32_graphs / bf16_graphs), bf16 + torch.compile at batch 1024
#      against a fresh reference pass, then inference at batch 32 and 1 (latency).
# Targets (issue 6): >= 10,000 faces/s inference on an H100; training >= 3x the reference.
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
LIMIT="${GPU_BENCH_LIMIT:-330}"          # whole python run, seconds (the GPU session budget is tiny)
BUDGET="${GPU_BENCH_BUDGET:-200}"        # after this many seconds, remaining inference stages are skipped
TRAIN_LIMIT="${GPU_BENCH_TRAIN_LIMIT:-120}"  # the training-step run's share of LIMIT, seconds
DEVICE="${GPU_BENCH_DEVICE:-cuda}"       # cpu + a tiny model = a dry run of this script's plumbing
MODEL="${GPU_BENCH_MODEL:-poster_v1}"
BATCHES="${GPU_BENCH_BATCHES:-1024,32,1}"
TRAIN_BATCH="${GPU_BENCH_TRAIN_BATCH:-128}"
TRAIN_RECIPE="${GPU_BENCH_TRAIN_RECIPE:-rafdb_official}"
RESULTS="${GPU_BENCH_RESULTS:-benchmarks/results/speed/inference/gpu}"  # raw outputs; rename into h100-*.json by card
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

echo "== training steps (limit ${TRAIN_LIMIT}s)"
TRAINJSON="$RESULTS/train_step_gpu_${MODEL}.json"
timeout -k 10 "$TRAIN_LIMIT" "$PY" benchmarks/bench_train_step.py \
    --recipe "$TRAIN_RECIPE" --set optimizer.sam=null --device "$DEVICE" --batch "$TRAIN_BATCH" \
    --variants reference,opt,bf16,bf16_graphs --rounds 5 --min-run-time 0.5 --time-budget 60 \
    --out "$TRAINJSON" 2>&1 | tee "$RESULTS/train_step_gpu_${MODEL}.log"
train_rc=${PIPESTATUS[0]}
echo "== training exit status $train_rc (124 = hit the ${TRAIN_LIMIT}s limit)"

echo "== inference (limit $((LIMIT - TRAIN_LIMIT))s, stage budget ${BUDGET}s)"
OUTJSON="$RESULTS/bench_gpu_${MODEL}.json"
timeout -k 10 "$((LIMIT - TRAIN_LIMIT))" "$PY" benchmarks/bench_inference.py \
    --device "$DEVICE" --model "$MODEL" --recipe-keys "" \
    --batch-sizes "$BATCHES" \
    --variants reference,eager,fp32_opt,bf16,bf16_cast,fp32_graphs,bf16_graphs,bf16_compile \
    --time-budget "$BUDGET" --out "$OUTJSON" 2>&1 | tee "$RESULTS/bench_gpu_${MODEL}.log"
rc=${PIPESTATUS[0]}
echo "== inference exit status $rc (124 = hit the limit; partial results are kept)"

if [ -f "$OUTJSON" ]; then
    "$PY" - "$OUTJSON" <<'EOF' || true
import json, sys
r = json.load(open(sys.argv[1]))
print("card:", r["machine"].get("gpu"), "| torch", r["machine"]["torch"])
for sec, body in r.get("inference", {}).items():
    for name, e in (body.get("variants") or {}).items():
        print(f"{sec:11s} {name:14s} {e['faces_per_s']:10.1f} faces/s  x{e['speedup']:.2f} vs {r['baseline']}"
              f"  rel err {e['rel_error']:.1e}  top1(random) {e['top1_agreement_random']:.3f}")
best = max(((n, e["faces_per_s"]) for b in r.get("inference", {}).values()
            for n, e in (b.get("variants") or {}).items()), key=lambda t: t[1], default=None)
print("best inference:", best, "(target >= 10000 faces/s on an H100)")
EOF
fi
if [ -f "$TRAINJSON" ]; then
    "$PY" - "$TRAINJSON" <<'EOF' || true
import json, sys
r = json.load(open(sys.argv[1]))
for name, e in r["variants"].items():
    print(f"training    {name:14s} {e['img_s']:10.1f} img/s    x{e['speedup']:.2f} vs {r['baseline']}")
print("skipped:", r.get("skipped"), "failed:", r.get("failed"))
print("fastest training variant:", r.get("fastest_variant"), "(target >= 3x the reference)")
EOF
fi

if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    cp -f "$RESULTS"/gpu_card.csv "$RESULTS"/bench_gpu_"${MODEL}".* "$RESULTS"/train_step_gpu_"${MODEL}".* \
        "$OUT"/ 2>/dev/null || true
fi
exit "$rc"
