#!/usr/bin/env bash
# FlexAttention on FlashAttention-4 kernels (train.attn_backend=flex_fa4) on the GPU machine.
#
# flash-attn-4 needs the CuTe DSL runtime, whose wheel (nvidia-cutlass-dsl-libs-cu13, 92 MB) is more
# than one device call may carry (64 MiB). So it travels split in two pieces, on two calls to the
# same warm machine (it stays warm about 30 s after a call, so send the second call at once):
#   here:    bash benchmarks/fa4_suite.sh pack               # downloads, splits into .fa4a/ and .fa4b/
#   call 1:  bash benchmarks/fa4_suite.sh stash .fa4a; ...   # carry .fa4a: keeps piece 1 in /tmp
#   call 2:  bash benchmarks/fa4_suite.sh run .fa4b "$OUT"   # carry .fa4b: joins, installs, measures
# `run` measures, each part with its own time limit (ATT_S, XL_S; 0 skips a part):
#   att  one attention layer call at XL width, 12,288-token rows: flex (Triton) against flex_fa4
#   xl   full XL, K = 5, 12,288-token rows, fp8: flex against flex_fa4 in the same call
set -u
cmd=${1:-}
STASH=/tmp/fa4_stash
case "$cmd" in
pack)  # here, with network: the wheels for the device's Python 3.12, the big one split in two
  set -e
  rm -rf .fa4a .fa4b /tmp/fa4_dl && mkdir -p .fa4a .fa4b /tmp/fa4_dl
  grep -qx '/.fa4a/' .git/info/exclude 2>/dev/null || printf '/.fa4a/\n/.fa4b/\n' >> .git/info/exclude
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d /tmp/fa4_dl flash-attn-4==4.0.0b40 nvidia-cutlass-dsl==4.8.1 \
    nvidia-cutlass-dsl-libs-base==4.8.1 nvidia-cutlass-dsl-libs-core==4.8.1 nvidia-cutlass-dsl-libs-cu13==4.8.1 \
    quack-kernels==0.6.5 apache-tvm-ffi==0.1.15.post2 torch-c-dlpack-ext==0.1.5
  big=$(ls /tmp/fa4_dl/nvidia_cutlass_dsl_libs_cu13-*.whl)
  (cd /tmp/fa4_dl && sha256sum "$(basename "$big")") > .fa4b/SHA256SUMS
  split -b 47000000 "$big" .fa4a/big.part.
  mv .fa4a/big.part.ab .fa4b/ && basename "$big" > .fa4b/big.name
  find /tmp/fa4_dl -name '*.whl' ! -name 'nvidia_cutlass_dsl_libs_cu13-*' -exec cp {} .fa4b/ \;
  du -sh .fa4a .fa4b ;;
stash)  # call 1: keep piece 1 on the machine for the next call
  mkdir -p "$STASH" && cp "${2:?folder}"/big.part.* "$STASH"/ && ls -la "$STASH" ;;
run)
  DIR=${2:?folder} OUT=${3:-/tmp/out}
  mkdir -p "$OUT"
  export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
  nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
  if ! ls "$STASH"/big.part.aa >/dev/null 2>&1; then
    echo "piece 1 is not on this machine ($STASH): the first call ran on another machine; stash again" | tee -a "$OUT/gpu.txt"
    exit 2
  fi
  mkdir -p /tmp/fa4_whl && cp "$DIR"/*.whl /tmp/fa4_whl/
  big=/tmp/fa4_whl/$(cat "$DIR/big.name")
  cat "$STASH"/big.part.aa "$DIR"/big.part.ab > "$big"
  sums=$(realpath "$DIR/SHA256SUMS")
  (cd /tmp/fa4_whl && sha256sum -c "$sums") || { echo "the joined wheel does not match its checksum" | tee -a "$OUT/gpu.txt"; exit 3; }
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/fa4site /tmp/fa4_whl/*.whl || exit 4
  # pip --target skips .pth files; nvidia-cutlass-dsl's puts its dsl_packages folder (`cutlass`) on the path
  export PYTHONPATH=$PYTHONPATH:/tmp/fa4site:/tmp/fa4site/nvidia_cutlass_dsl/dsl_packages
  python3 -c "import flash_attn.cute, cutlass, importlib.metadata as m; print('flash-attn-4', m.version('flash-attn-4'), 'cutlass-dsl', m.version('nvidia-cutlass-dsl'), 'cuda-bindings', m.version('cuda-bindings'))" 2>&1 | tail -3 | tee -a "$OUT/gpu.txt"
  ATT_S=${ATT_S:-180} XL_S=${XL_S:-330}
  limit() { if [ "$1" -gt 0 ]; then timeout "$@"; else echo "skipped (limit 0): ${*:2:3}"; fi; }
  limit "$ATT_S" python3 benchmarks/step_parts.py --only attention --attention-variant "flex (current" \
    --attention-variant "flex_fa4" --out "$OUT/att" 2>&1 | grep -v Warning | tail -25
  limit "$XL_S" python3 benchmarks/train_throughput.py --preset XL --tokens 12288 --K 5 --steps 5 \
    --variant ${XL_BASE:-fp8r1:fp8=true,recompute_calls=1} \
    --variant ${XL_FA4:-fp8r1_fa4:fp8=true,recompute_calls=1,attn_backend=flex_fa4} \
    ${XL_MORE:+--variant $XL_MORE} --variant-timeout ${XL_VT:-110} --out "$OUT/xl" 2>&1 | grep -v Warning | tail -12
  rm -f "$OUT/xl/rows.pt"
  ls -R "$OUT" ;;
*)
  echo "usage: $0 pack | stash DIR | run DIR [OUT]" >&2; exit 64 ;;
esac
