#!/usr/bin/env bash
# One device call (about 9 minutes on an H100) for issue 10's open float8 questions, most valuable
# first; each part has its own time limit (seconds; 0 skips it) and writes its own folder:
#   test    the GPU test of the float8 weight cache and fused weight gradients (the defaults of
#           train.fp8=true on one GPU) against the per-call step and bf16;
#           TEST_K picks other tests of that file; TEST_ALL=1 runs the whole GPU tier (torchao from .whl/)
#   xl      full XL, K = 5, 12,288-token rows: the previous release with fp8 on (if .prev/src was
#           carried: `git archive <rev> src | tar -x -C .prev`), both settings off, the defaults;
#           XL_VARIANTS (space-separated NAME:key=value,...; src=PATH for another release) and
#           XL_VARIANT_S (each variant's time limit) change them; XL_ARGS adds options (--profile)
#   curve   the 300-step S loss curves of the default recipe against bf16, 3 seeds (a run cut short
#           still leaves whole seeds), with bf16's own floor from an earlier report; CURVE_VARIANTS
#           (space-separated NAME:key=value,...), CURVE_SEEDS, CURVE_PARALLEL and BF16_REPLICA change them
# Run from the repo root on the GPU machine, carrying runs/study_hrm_vs_tf/data/{sampled,tokenizer}
# (and .prev for the baseline):   bash benchmarks/fp8_suite.sh "$OUT"      (TEST_S=... XL_S=... CURVE_S=...)
set -u
OUT=${1:-/tmp/out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
TEST_S=${TEST_S:-150} XL_S=${XL_S:-260} CURVE_S=${CURVE_S:-170}
limit() { if [ "$1" -gt 0 ]; then timeout "$@"; else echo "skipped (limit 0): ${*:2:3}"; fi; }
tests=(tests/gpu/test_train_gpu.py -k "${TEST_K:-weight_cache}")
if [ "${TEST_ALL:-0}" = 1 ]; then
  tests=(-m gpu tests/)
  if ls .whl/*.whl >/dev/null 2>&1; then  # torchao for its recipes' tests
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=$PYTHONPATH:/tmp/site
  fi
fi
limit "$TEST_S" env PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 python3 -m pytest -p no:cacheprovider -p no:warnings \
  -p no:logging -q -rP --tb=short --durations=8 "${tests[@]}" > "$OUT/test.txt" 2>&1
grep -E "^fused|^E |passed|failed|Error" "$OUT/test.txt" | head -30
xl_variants=()
for v in ${XL_VARIANTS:-off:fp8=true,fp8_weight_cache=false,fused_wgrad=false defaults:fp8=true}; do xl_variants+=(--variant "$v"); done
base=()
if [ -d .prev/src ]; then base=(--baseline-src .prev/src --baseline-opts fp8=true); fi
limit "$XL_S" python3 benchmarks/train_throughput.py --preset XL --tokens 12288 --K 5 --steps 6 "${base[@]}" \
  "${xl_variants[@]}" ${XL_ARGS:-} --variant-timeout "${XL_VARIANT_S:-80}" --out /tmp/fp8_suite_xl 2>&1 | grep -v Warning | tail -8
cp /tmp/fp8_suite_xl/train_throughput.json "$OUT/xl.json" 2>/dev/null
tail -n 3 /tmp/fp8_suite_xl/log_*.txt > "$OUT/xl_logs.txt" 2>/dev/null
variants=()
for v in ${CURVE_VARIANTS:-fp8:fp8=true}; do variants+=(--variant "$v"); done
limit "$CURVE_S" python3 benchmarks/fp8_loss_curve.py --data runs/study_hrm_vs_tf/data --seeds "${CURVE_SEEDS:-3}" \
  --parallel "${CURVE_PARALLEL:-4}" "${variants[@]}" \
  --bf16-replica "${BF16_REPLICA:-benchmarks/results/fp8_loss_curve_s300_h100_2026-12-06_lowmem.json}" \
  --out "$OUT/curve" 2>&1 | tail -25
ls -R "$OUT"
