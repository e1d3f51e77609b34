#!/usr/bin/env bash
# One device call for issue 10's float8 questions: the 300-step S loss curves (bf16, its rerun,
# float32, our fused recipes, torchao's rowwise), the block speed of each float8 recipe, then the
# cuDNN attention probe (last: a faulting kernel poisons the CUDA context for what follows).
# Run from the repo root on the GPU machine, carrying runs/study_hrm_vs_tf/data/{sampled,tokenizer}
# and .whl:   bash benchmarks/fp8_suite.sh "$OUT"
set -u
OUT=${1:-/tmp/out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site; fi
CURVE_S=${CURVE_S:-300} PARTS_S=${PARTS_S:-100} CUDNN_S=${CUDNN_S:-80}
timeout "$CURVE_S" python3 benchmarks/fp8_loss_curve.py --data runs/study_hrm_vs_tf/data --steps 300 --parallel 3 \
  --variant "bf16_rerun:fp8=false" --variant "fp32:dtype=fp32" --variant "fp8:fp8=true,fp8_recipe=fused" \
  --variant "fp8_precise:fp8=true,fp8_recipe=fused_precise" --variant "fp8_torchao:fp8=true,fp8_recipe=rowwise" \
  --out "$OUT/curve" 2>&1 | tail -20
timeout "$PARTS_S" python3 benchmarks/step_parts.py --only block --block-variant "flex, bf16" --block-variant "flex, fp8 fused" \
  --out "$OUT/parts" 2>&1 | grep -v Warning | tail -20
timeout "$CUDNN_S" python3 benchmarks/step_parts.py --only attention --attention-variant "flex (current" \
  --attention-variant cudnn --out "$OUT/cudnn" 2>&1 | grep -v Warning | tail -30
ls -R "$OUT"
