#!/usr/bin/env bash
# The real `hrm-text train` at the paper recipe's shape (XL, K = 5 from the first step, bf16,
# 12,288-token rows on one GPU), in one device call. It checks what a user of an 80 GB card gets:
#   auto    no memory setting: the trainer must turn train.activation_memory_budget=0.8 on by itself
#           (it logs why), train, print tokens/s and its peak memory, save and exit 0
#   oom     the budget turned off by hand (train.activation_memory_budget=1.0): on an 80 GB card the
#           step needs about 94 GB, so it must stop with the out-of-memory advice and exit 1, not a
#           traceback (on a larger card it trains, and says so)
#   fp8     train.fp8=true: the float8 defaults (our fused recipe, no extra package) at the same shape
# Data: a `hrm-text data sample` output and its tokenizer (DATA, default runs/study_hrm_vs_tf/data,
# carried). Each run gets RUN_S seconds (0 skips it). Run from the repo root on the GPU machine:
#   bash benchmarks/train_cli_check.sh "$OUT"
set -u
OUT=${1:-/tmp/out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
DATA=${DATA:-runs/study_hrm_vs_tf/data}
STEPS=${STEPS:-12}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/cli_gpu.txt"
# bp warm-up off (ratio 0): K = 5 from the first step, as in the measured step
common=(model.preset=XL "data.sampled_dir=$DATA/sampled" "data.tokenizer_dir=$DATA/tokenizer"
        data.tokens_per_rank=12288 train.global_batch_tokens=12288 train.bp_warmup_ratio=0
        train.log_every=2 train.tensorboard=false train.ckpt_every=100000)
run() {  # name, seconds, extra overrides...
  local name=$1 secs=$2; shift 2
  if [ "$secs" -le 0 ]; then echo "$name: skipped"; return; fi
  local t0=$SECONDS
  timeout "$secs" python3 -m hrm_text.cli train "${common[@]}" "$@" "train.out_dir=/tmp/cli_$name" \
    --max-steps "$STEPS" --resume none > "$OUT/cli_$name.log" 2>&1
  echo "$name: exit status $? after $((SECONDS - t0)) s"
  grep -E -i "activation_memory_budget|out of memory|peak|tok/s|error|Traceback" "$OUT/cli_$name.log" \
    | cut -c1-400 | tail -n 12
  rm -rf "/tmp/cli_$name"  # the XL checkpoint (about 19 GB)
}
run auto "${AUTO_S:-200}"
run oom "${OOM_S:-120}" train.activation_memory_budget=1.0
run fp8 "${FP8_S:-0}" train.fp8=true
