#!/usr/bin/env bash
# One device call of the `hrm-text study` grid (docs/STUDIES.md): resume the grid, stop cleanly
# before MINUTES, and put the small results into $OUT (7 files: the device tool returns at most 8).
#
#   PLAN=1 bash benchmarks/study_gpu.sh 8.5     first call: measure step times, fit the budgets, start
#   bash benchmarks/study_gpu.sh 8.5            later calls (after extracting study_state.tgz, below)
# (8 files come back with PLAN=1: the 7 below and study_steptime.json)
#
# Before a later call, extract the returned study_state.tgz into the study folder on the machine
# that drives the calls and carry that folder (without checkpoints it is data + JSON, < 64 MiB):
#   mkdir -p runs/study_hrm_vs_tf && tar xzf <files_at>/study_state.tgz -C runs/study_hrm_vs_tf
# Finished runs are then skipped (their study_result.json is there); a run cut by the time limit
# restarts (its checkpoint stays on the GPU machine), so the study does not start a run predicted
# not to fit the time left.
set -uo pipefail
MIN=${1:-8.5}
shift || true
GRID=${GRID:-src/hrm_text/configs/study_hrm_vs_transformer.yaml}
DIR=${STUDY_DIR:-runs/study_hrm_vs_tf}
OUT=${OUT:-/tmp/study_out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/study_log.txt" 2>&1 || true
mkdir -p "$DIR"
# PLAN=1 (first call): time one step of every grid model, and scale the budgets so the grid fits
# TARGET minutes (default 12); the scale is kept in the study folder, so later calls reuse it.
if [ "${PLAN:-0}" = "1" ] && [ ! -f "$DIR/budget_scale.txt" ]; then
  PYTHONPATH=src python benchmarks/study_steptime.py "$GRID" --target-minutes "${TARGET:-12}" \
      --out "$OUT/study_steptime.json" >> "$OUT/study_log.txt" 2>&1 || exit 1
  python -c "import json,sys; s=json.load(open(sys.argv[1]))['budget_scale_to_fit_target']; print(f'{min(4.0, max(0.1, s)):.2g}')" \
      "$OUT/study_steptime.json" > "$DIR/budget_scale.txt" || exit 1
fi
SCALE=()
if [ -f "$DIR/budget_scale.txt" ]; then
  SCALE=(--scale-budgets "$(cat "$DIR/budget_scale.txt")")
  echo "budgets scaled by $(cat "$DIR/budget_scale.txt")" >> "$OUT/study_log.txt"
fi
PYTHONPATH=src python -m hrm_text.cli study "$GRID" --out "$DIR" --time-limit "$MIN" "${SCALE[@]}" "$@" >> "$OUT/study_log.txt" 2>&1
rc=$?
tr "\r" "\n" < "$OUT/study_log.txt" | grep -v "%|" | tail -n 40
for f in results.md results.json plan.json loss_curves.png bars.png; do
  [ -f "$DIR/$f" ] && cp "$DIR/$f" "$OUT/"
done
(cd "$DIR" && ls budget_scale.txt runs/*/study_result.json runs/*/metrics.jsonl runs/*/config.yaml 2>/dev/null) > /tmp/study_state.list
tar czf "$OUT/study_state.tgz" -C "$DIR" -T /tmp/study_state.list
echo "study exit code $rc (0 = grid complete, 75 = stopped at the time limit: run again)"
exit $rc
