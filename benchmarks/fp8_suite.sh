#!/usr/bin/env bash
# One device call for issue 10's float8 and attention questions: the 300-step S loss curves
# (bf16 and float8 recipes, 3 seeds each, lr 3e-4), then the cuDNN attention probe, each cuDNN
# variant in its own process (a faulting kernel poisons the CUDA context for what follows).
# Run from the repo root on the GPU machine, carrying runs/study_hrm_vs_tf/data/{sampled,tokenizer}
# and .whl (torchao, for the rowwise recipe):   bash benchmarks/fp8_suite.sh "$OUT"
# About 4-5 minutes on an H100 (fp32 runs are slow: leave them out of a timed call).
set -u
OUT=${1:-/tmp/out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site; fi
CURVE_S=${CURVE_S:-330} CUDNN_S=${CUDNN_S:-60}
timeout "$CURVE_S" python3 benchmarks/fp8_loss_curve.py --data runs/study_hrm_vs_tf/data --seeds 3 --parallel 4 \
  --variant "fp8:fp8=true,fp8_recipe=fused" --variant "fp8_precise:fp8=true,fp8_recipe=fused_precise" \
  --out "$OUT/curve" 2>&1 | tail -40
timeout "$CUDNN_S" python3 benchmarks/step_parts.py --only attention --attention-variant "exact max lengths" \
  --out "$OUT/cudnn_exact" 2>&1 | grep -v Warning | tail -8
timeout "$CUDNN_S" python3 benchmarks/step_parts.py --only attention --attention-variant "flex (current" \
  --attention-variant "cudnn (two ragged calls)" --out "$OUT/cudnn" 2>&1 | grep -v Warning | tail -8
ls -R "$OUT"
