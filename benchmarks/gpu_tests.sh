#!/usr/bin/env bash
# The GPU tier of the test suite (every test marked `gpu`: tests/gpu/ and the CUDA cases elsewhere), in one
# device call. Run from the repo root on the GPU machine; torchao's wheel in .whl/ is optional.
#   bash benchmarks/gpu_tests.sh "$OUT"
set -u
OUT=${1:-/tmp/out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 python3 -m pytest -p no:cacheprovider -p no:warnings \
  -m gpu tests/ 2>&1 | tail -25 | tee "$OUT/gpu_tests.txt"
