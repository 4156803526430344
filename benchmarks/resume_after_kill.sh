#!/usr/bin/env bash
# Time a resume after kill -9: run the quickstart, kill it once fine-tuning wrote its first epoch
# checkpoint, then time the same command again (it resumes) and compare with a full run's time.
#   bash benchmarks/resume_after_kill.sh [RUN_DIR]
set -euo pipefail
run="${1:-runs/resume_demo}"
rm -rf "$run"
vtpdeploy pipeline recipes/quickstart.yaml --out "$run" >/dev/null 2>&1 &
pid=$!
while [ ! -f "$run/ckpt/finetune.pt" ]; do
    kill -0 "$pid" 2>/dev/null || { echo "pipeline ended before the kill" >&2; exit 1; }
    sleep 0.2
done
sleep 2
kill -9 "$pid"
wait "$pid" 2>/dev/null || true
echo "killed during finetune"
start=$(date +%s.%N)
vtpdeploy pipeline recipes/quickstart.yaml --out "$run" 2>&1 | grep -E "resuming|val top-1"
echo "resume wall: $(echo "$(date +%s.%N) - $start" | bc) s"
