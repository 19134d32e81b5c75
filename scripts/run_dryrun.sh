#!/usr/bin/env bash
# Compile a sharded training plan on this machine (no devices needed): one rank per pipeline stage by default.
#   bash scripts/run_dryrun.sh MODE DEVICE_NUM MODEL_PARALLEL STAGE_NUM MICRO_SIZE PER_BATCH [pangu dryrun args...]
# e.g. bash scripts/run_dryrun.sh 13B 64 8 4 4 4 --optimizer_shard 1 --json dryrun_13b.json
set -euo pipefail
if [ $# -lt 6 ]; then
    echo "Usage: bash $0 MODE DEVICE_NUM MODEL_PARALLEL STAGE_NUM MICRO_SIZE PER_BATCH [pangu dryrun args...]" >&2
    exit 1
fi
MODE=$1
DEVICE_NUM=$2
MODEL_PARALLEL=$3
STAGE_NUM=$4
MICRO_SIZE=$5
PER_BATCH=$6
shift 6
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p dryrun_log
PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" "${PYTHON:-python}" -m pangu_zoo.cli dryrun --mode="$MODE" \
    --device_num="$DEVICE_NUM" --op_level_model_parallel_num="$MODEL_PARALLEL" --stage_num="$STAGE_NUM" \
    --micro_size="$MICRO_SIZE" --per_batch_size="$PER_BATCH" "$@" 2>&1 | tee dryrun_log/dryrun.log
