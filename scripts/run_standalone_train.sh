#!/usr/bin/env bash
# Train on one device.
#   bash scripts/run_standalone_train.sh DATASET MODE PER_BATCH [DEVICE_TARGET] [train.py args...]
# e.g. bash scripts/run_standalone_train.sh output/demo/data pangu_alpha_tiny 8 CPU --seq_length 64 --max_steps 100
set -euo pipefail
if [ $# -lt 3 ]; then
    echo "Usage: bash $0 DATASET MODE PER_BATCH [DEVICE_TARGET] [train.py args...]" >&2
    exit 1
fi
DATASET=$1
MODE=$2
PER_BATCH=$3
DEVICE_TARGET=${4:-CPU}
shift $(( $# < 4 ? $# : 4 ))
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p device0
"${PYTHON:-python}" "$ROOT/train.py" --distribute=false --device_target="$DEVICE_TARGET" --data_url="$DATASET" \
    --mode="$MODE" --per_batch_size="$PER_BATCH" --run_type=train "$@" 2>&1 | tee device0/log0.log
