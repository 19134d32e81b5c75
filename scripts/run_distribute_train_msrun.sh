#!/usr/bin/env bash
# Data-parallel training with msrun on one machine (CPU, GPU or Ascend).
#   bash scripts/run_distribute_train_msrun.sh RANK_SIZE DATASET MODE PER_BATCH [DEVICE_TARGET] [train.py args...]
# Logs go to msrun_log/worker_<rank>.log; checkpoints to <save_checkpoint_path>/rank_<rank>.
set -euo pipefail
if [ $# -lt 4 ]; then
    echo "Usage: bash $0 RANK_SIZE DATASET MODE PER_BATCH [DEVICE_TARGET] [train.py args...]" >&2
    exit 1
fi
RANK_SIZE=$1
DATASET=$2
MODE=$3
PER_BATCH=$4
DEVICE_TARGET=${5:-CPU}
shift $(( $# < 5 ? $# : 5 ))
ROOT=$(cd "$(dirname "$0")/.." && pwd)
msrun --worker_num="$RANK_SIZE" --local_worker_num="$RANK_SIZE" --master_port="${MASTER_PORT:-8118}" \
    --join=True --log_dir=msrun_log "$ROOT/train.py" --distribute=true --device_num="$RANK_SIZE" \
    --device_target="$DEVICE_TARGET" --data_url="$DATASET" --mode="$MODE" --per_batch_size="$PER_BATCH" \
    --run_type=train "$@"
