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
# the whole log to a file as it runs (a run cut short by a time limit still leaves it), its end to stdout;
# one line per test (-v twice: pyproject's -q cancels one), so a cut-short log names the test it
# stopped in; the 8 slowest at the end; and a test still running after 150 s dumps every thread's stack there
PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 python3 -m pytest -p no:cacheprovider -p no:warnings -rfE --durations=8 -v -v \
  -o faulthandler_timeout=150 -m gpu tests/ > "$OUT/gpu_tests.txt" 2>&1
status=$?
tail -25 "$OUT/gpu_tests.txt"
exit $status
