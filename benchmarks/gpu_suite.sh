#!/usr/bin/env bash
# One device call: decode benchmark, full training-step benchmark, quickstart on the GPU.
# Run from the repo root on the GPU machine: bash benchmarks/gpu_suite.sh "$OUT"
set -u
OUT=${1:-/tmp/out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
python benchmarks/bench_decode.py --out "$OUT/decode_xl.json" 2>&1 | grep -v Warning | tail -12
python benchmarks/bench_train_step.py --preset XL --tokens 8192 --steps 6 --out "$OUT/train_step_xl.json" 2>&1 | grep -v Warning | tail -25
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site; fi
(timeout 300 python -m hrm_text.cli quickstart --out /tmp/qs_gpu --minutes 1.5 2>&1 | grep -v "Warning\|it/s\]" | tail -12; cp /tmp/qs_gpu/quickstart.json "$OUT/quickstart_gpu.json") || true
