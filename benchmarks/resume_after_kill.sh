#!/usr/bin/env bash
# Time a resume after kill -9: run the quickstart until fine-tuning wrote its first epoch checkpoint, where the
# training loop kills itself with SIGKILL (VTPDEPLOY_CRASH_AFTER_CHECKPOINT: no polling, no race), then time
# the same command again (it resumes from that checkpoint).
#   bash benchmarks/resume_after_kill.sh [RUN_DIR]
set -euo pipefail
run="${1:-runs/resume_demo}"
rm -rf "$run"
status=0
VTPDEPLOY_CRASH_AFTER_CHECKPOINT=finetune:1 vtpdeploy pipeline recipes/quickstart.yaml --out "$run" \
    >/dev/null 2>&1 || status=$?
if [ "$status" -ne 137 ]; then
    echo "expected the pipeline to be killed (exit 137) after the first finetune checkpoint, got exit $status" >&2
    exit 1
fi
echo "killed (SIGKILL) right after the first finetune checkpoint"
start=$(date +%s.%N)
vtpdeploy pipeline recipes/quickstart.yaml --out "$run" 2>&1 | grep -E "resuming|val top-1"
echo "resume wall: $(echo "$(date +%s.%N) - $start" | bc) s"
