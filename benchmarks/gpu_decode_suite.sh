#!/usr/bin/env bash
# One device call for decode work: the CUDA-only decode tests, the decode benchmark against
# transformers (fused and sdpa attention in the same run), kernel profiles, decode-size matmuls.
# Run from the repo root on the GPU machine, with .whl/ carried (pytest wheels):
#   bash benchmarks/gpu_decode_suite.sh "$OUT"
set -u
OUT=${1:-/tmp/out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
if ls .whl/pytest-*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/pytest-*.whl .whl/pluggy-*.whl .whl/iniconfig-*.whl .whl/packaging-*.whl
  PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 PYTHONPATH=$PYTHONPATH:/tmp/site python -m pytest -p no:cacheprovider -q -p no:warnings \
    tests/unit/test_infer_decode_attention.py tests/integration/test_infer_engine_compiled.py 2>&1 | tail -15 | tee "$OUT/gpu_tests.txt"
fi
python benchmarks/bench_decode.py --attention ${ATTN_VARIANTS:-auto,fused,sdpa} --out "$OUT/decode_xl.json" 2>&1 | grep -v Warning | tail -8
python benchmarks/profile_decode.py --batch 1 --out "$OUT/prof_b1.txt" 2>&1 | grep "kernels per step"
python benchmarks/profile_decode.py --batch 32 --out "$OUT/prof_b32.txt" 2>&1 | grep "kernels per step"
