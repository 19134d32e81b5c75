#!/usr/bin/env bash
# Training on GPUs with mpirun (reference arguments). The plan is the reference default, semi-auto parallel
# with model parallel 8; pass e.g. --op_level_model_parallel_num=1 or --parallel_mode=data_parallel to change it.
#   bash scripts/run_distribute_train_gpu.sh RANK_SIZE HOSTFILE DATASET PER_BATCH_SIZE MODE [train.py args...]
# HOSTFILE lines look like "192.168.0.1 slots=8".
set -euo pipefail
if [ $# -lt 5 ]; then
    echo "Usage: bash $0 RANK_SIZE HOSTFILE DATASET PER_BATCH_SIZE MODE [train.py args...]" >&2
    exit 1
fi
RANK_SIZE=$1
HOSTFILE=$2
DATASET=$3
PER_BATCH_SIZE=$4
MODE=$5
shift 5
[ -f "$HOSTFILE" ] || { echo "hostfile $HOSTFILE does not exist" >&2; exit 1; }
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mpirun --allow-run-as-root -x PATH -x NCCL_IB_HCA -x NCCL_SOCKET_IFNAME -x LD_LIBRARY_PATH -x PYTHONPATH \
    -x NCCL_DEBUG -x GLOG_v -n "$RANK_SIZE" --hostfile "$HOSTFILE" --output-filename log_output \
    --merge-stderr-to-stdout "${PYTHON:-python}" "$ROOT/train.py" --distribute=true --device_num="$RANK_SIZE" \
    --device_target=GPU --parallel_mode=semi_auto_parallel --op_level_model_parallel_num=8 \
    --data_url="$DATASET" --mode="$MODE" --per_batch_size="$PER_BATCH_SIZE" \
    --run_type=train "$@" > train_log.txt 2>&1 &
echo "training started in the background; see train_log.txt and log_output/"
