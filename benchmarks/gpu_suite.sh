#!/usr/bin/env bash
# One device call: decode benchmark, full training-step benchmark, quickstart on the GPU.
# Run from the repo root on the GPU machine: bash benchmarks/gpu_suite.sh "$OUT"
set -u
OUT=${1:-/tmp/out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv | tee "$OUT/gpu.txt"
python benchmarks/bench_train_step.py --preset XL --tokens 12288 --steps 6 --out "$OUT/train_step_xl.json" 2>&1 | grep -v Warning | tail -25
python benchmarks/bench_decode.py --out "$OUT/decode_xl.json" 2>&1 | grep -v Warning | tail -40
