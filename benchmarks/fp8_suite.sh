#!/usr/bin/env bash
# One device call (about 9-10 minutes on an H100) for issue 10's open float8 and attention
# questions, most valuable first; each part has its own time limit and writes its own folder:
#   parts   one XL-width block: bf16, fp8 fused and fp8 fused_lowmem (time, saved activations)
#   xl      full XL, K = 5, 12,288-token rows: fp8 + recompute_calls=1 (the measured fit) against
#           fused_lowmem without recompute (does it fit 80 GB, and how fast?)
#   cudnn   the cuDNN attention probe, each variant in its own process (a faulting kernel poisons
#           the CUDA context for what follows), exact maxima first
#   curve   the 300-step S loss curves, seeds first (a run cut short still leaves whole seeds)
# Run from the repo root on the GPU machine, carrying runs/study_hrm_vs_tf/data/{sampled,tokenizer}
# and .whl (torchao):   bash benchmarks/fp8_suite.sh "$OUT"      (PARTS_S=... XL_S=... to retime, 0 skips)
set -u
OUT=${1:-/tmp/out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site; fi
PARTS_S=${PARTS_S:-90} XL_S=${XL_S:-250} CUDNN_S=${CUDNN_S:-45} CURVE_S=${CURVE_S:-150}
limit() { if [ "$1" -gt 0 ]; then timeout "$@"; else echo "skipped (limit 0): ${*:2:3}"; fi; }  # 0 skips a part
limit "$PARTS_S" python3 benchmarks/step_parts.py --only block --block-variant "flex, bf16" \
  --block-variant "flex, fp8 fused (ours)" --block-variant "flex, fp8 fused_lowmem" --out "$OUT/parts" 2>&1 | grep -v Warning | tail -8
limit "$XL_S" python3 benchmarks/train_throughput.py --preset XL --tokens 12288 --K 5 --steps 5 \
  --variant fp8r1:fp8=true,recompute_calls=1 --variant lowmem:fp8=true,fp8_recipe=fused_lowmem \
  --variant lowmem_r1:fp8=true,fp8_recipe=fused_lowmem,recompute_calls=1 --variant-timeout 80 \
  --out "$OUT/xl" 2>&1 | grep -v Warning | tail -12
rm -f "$OUT/xl/rows.pt"  # large, and a call returns at most 8 files
limit "$CUDNN_S" python3 benchmarks/step_parts.py --only attention --attention-variant "exact max lengths" \
  --out "$OUT/cudnn_exact" 2>&1 | grep -v Warning | tail -6
limit "$CUDNN_S" python3 benchmarks/step_parts.py --only attention --attention-variant "flex (current" \
  --attention-variant "cudnn (two ragged calls)" --out "$OUT/cudnn" 2>&1 | grep -v Warning | tail -6
limit "$CURVE_S" python3 benchmarks/fp8_loss_curve.py --data runs/study_hrm_vs_tf/data --seeds 3 --parallel 4 \
  --variant "fp8:fp8=true,fp8_recipe=fused" --variant "fp8_lowmem:fp8=true,fp8_recipe=fused_lowmem" \
  --out "$OUT/curve" 2>&1 | tail -30
ls -R "$OUT"
