#!/usr/bin/env bash
# One device call of the `hrm-text study` grid (docs/STUDIES.md): resume the grid, stop cleanly
# before MINUTES, and put the small results into $OUT (7 files: the device tool returns at most 8).
#
#   bash benchmarks/study_gpu.sh 8.5 [more `hrm-text study` options, e.g. --scale-budgets 0.6]
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
PYTHONPATH=src python -m hrm_text.cli study "$GRID" --out "$DIR" --time-limit "$MIN" "$@" >> "$OUT/study_log.txt" 2>&1
rc=$?
tail -n 40 "$OUT/study_log.txt"
for f in results.md results.json plan.json loss_curves.png bars.png; do
  [ -f "$DIR/$f" ] && cp "$DIR/$f" "$OUT/"
done
(cd "$DIR" && ls runs/*/study_result.json runs/*/metrics.jsonl runs/*/config.yaml 2>/dev/null) > /tmp/study_state.list
tar czf "$OUT/study_state.tgz" -C "$DIR" -T /tmp/study_state.list
echo "study exit code $rc (0 = grid complete, 75 = stopped at the time limit: run again)"
exit $rc
