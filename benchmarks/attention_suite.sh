#!/usr/bin/env bash
# One device call (about 7.5 minutes on an H100) for issue 10's attention question: what the
# PrefixLM mask costs flex, and the full step with this tree's mask against the previous release.
# Parts, in this order (XL first: it decides; each part has its own time limit, 0 skips it):
#   xl      full XL, K = 5, 12,288-token rows, train.fp8=true: the previous release (.prev/src,
#           carried: `git archive <rev> src | tar -x -C .prev`) and this tree, with --profile;
#           each variant's kernel table comes back (kernels_*.txt); XL_VARIANTS, XL_ARGS, BASE_OPTS
#           (the previous release's settings, default fp8=true; empty: its defaults, bf16)
#           (then with train.multi_kernel=false, the compile-cached path without whole-row reductions;
#           other compiler settings as XL_VARIANTS such as fp8_cd:fp8=true,inductor.coordinate_descent_tuning=true)
#   parts   attention alone at 12,288 tokens (benchmarks/step_parts.py): flex with today's mask
#           (per-query bounds), the doc-id mask_mod it replaced (same block tables), and flex's own
#           rate on a causal row and with no mask; flex autotuned (max-autotune: the configs it chose
#           are in parts.log) and 128 x 64 sparse blocks; ATTN_VARIANTS (space-separated name fragments)
#   check   flex against sdpa on the GPU (benchmarks/check_attention_gpu.py)
#   tier    the whole GPU test tier (benchmarks/gpu_tests.sh; torchao from .whl/ if carried); off
#           unless TIER_S > 0 (it needs more than 330 s on a fresh H100: give it 420)
#   cli     `hrm-text quickstart --minutes 0.5` launched twice on the GPU, the second on the first's
#           warm compile caches (the trainer's default path, multi-kernel on); off unless CLI_S > 0
#           (each launch gets CLI_S seconds; about 120 is enough)
# Run from the repo root on the GPU machine:   bash benchmarks/attention_suite.sh "$OUT"   (PARTS_S=... XL_S=...)
set -u
OUT=${1:-/tmp/out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv | tee "$OUT/gpu.txt"
PARTS_S=${PARTS_S:-110} XL_S=${XL_S:-300} CHECK_S=${CHECK_S:-40} TIER_S=${TIER_S:-0}
limit() { if [ "$1" -gt 0 ]; then timeout "$@"; else echo "skipped (limit 0): ${*:2:3}"; fi; }
xl_variants=()
for v in ${XL_VARIANTS:-fp8:fp8=true fp8_no_multikernel:fp8=true,multi_kernel=false}; do xl_variants+=(--variant "$v"); done
base=()
if [ -d .prev/src ]; then base=(--baseline-src .prev/src --baseline-opts "${BASE_OPTS-fp8=true}"); fi
limit "$XL_S" python3 benchmarks/train_throughput.py --preset XL --tokens 12288 --K 5 --steps 6 "${base[@]}" \
  "${xl_variants[@]}" --profile ${XL_ARGS:-} --variant-timeout "${XL_VARIANT_S:-95}" --out /tmp/attn_suite_xl 2>&1 \
  | grep -v Warning | tail -12
cp /tmp/attn_suite_xl/train_throughput.json "$OUT/xl.json" 2>/dev/null
cp /tmp/attn_suite_xl/kernels_*.txt "$OUT/" 2>/dev/null
tail -n 3 /tmp/attn_suite_xl/log_*.txt 2>/dev/null | cut -c1-400
attn=()
for v in ${ATTN_VARIANTS:-"current default" "doc-id" "causal over" "no mask"}; do attn+=(--attention-variant "$v"); done
limit "$PARTS_S" python3 benchmarks/step_parts.py --only attention "${attn[@]}" --out /tmp/attn_suite_parts \
  > /tmp/attn_suite_parts.log 2>&1
grep -E "^\| attention|Error" /tmp/attn_suite_parts.log | head -20
grep -A4 "AUTOTUNE" /tmp/attn_suite_parts.log | cut -c1-400 | head -40  # the configs max-autotune chose
cp /tmp/attn_suite_parts.log "$OUT/parts.log" 2>/dev/null
cp /tmp/attn_suite_parts/step_parts.json "$OUT/parts.json" 2>/dev/null
limit "$CHECK_S" python3 benchmarks/check_attention_gpu.py --out "$OUT/attn_check.json" 2>&1 | tail -4
limit "$TIER_S" bash benchmarks/gpu_tests.sh "$OUT"
CLI_S=${CLI_S:-0}
if [ "$CLI_S" -gt 0 ]; then  # (a skipped launch must not print an exit status)
  for i in 1 2; do
    timeout "$CLI_S" python3 -m hrm_text.cli quickstart --out "/tmp/attn_suite_qs$i" --minutes 0.5 > "$OUT/quickstart_gpu_$i.log" 2>&1
    echo "quickstart launch $i: exit status $?"; tail -n 2 "$OUT/quickstart_gpu_$i.log" | cut -c1-300
  done
fi
ls "$OUT"
