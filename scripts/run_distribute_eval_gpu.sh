#!/usr/bin/env bash
# Sharded downstream evaluation (C3) on GPUs with mpirun (reference arguments):
#   bash scripts/run_distribute_eval_gpu.sh RANK_SIZE HOSTFILE STRATEGY TOKENIZER CKPT_PATH MODE PARAM_INIT_TYPE \
#        TASK_NAME EVAL_DATA_URL DEVICE_TARGET [predict.py args...]
# HOSTFILE lines look like "192.168.0.1 slots=8". Every layer is split over the RANK_SIZE GPUs; rank 0 logs
# top1_acc. Pass TASK_NAME "none" to generate text instead (predict.py args such as --prompt apply).
set -euo pipefail
if [ $# -lt 10 ]; then
    echo "Usage: bash $0 RANK_SIZE HOSTFILE STRATEGY TOKENIZER CKPT_PATH MODE PARAM_INIT_TYPE TASK_NAME" \
         "EVAL_DATA_URL DEVICE_TARGET [predict.py args...]" >&2
    exit 1
fi
RANK_SIZE=$1
HOSTFILE=$2
STRATEGY=$3
TOKENIZER=$4
CKPT_PATH=$5
MODE=$6
PARAM_INIT_TYPE=$7
TASK_NAME=$8
EVAL_DATA_URL=$9
DEVICE_TARGET=${10}
shift 10
[ -f "$HOSTFILE" ] || { echo "hostfile $HOSTFILE does not exist" >&2; exit 1; }
TASK_ARGS=()
if [ "$TASK_NAME" != "none" ]; then
    TASK_ARGS=(--eval_task="$TASK_NAME" --eval_data_url="$EVAL_DATA_URL")
fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mpirun --allow-run-as-root -x PATH -x NCCL_IB_HCA -x NCCL_SOCKET_IFNAME -x LD_LIBRARY_PATH -x PYTHONPATH \
    -x NCCL_DEBUG -x GLOG_v -n "$RANK_SIZE" --hostfile "$HOSTFILE" --output-filename log_output \
    --merge-stderr-to-stdout "${PYTHON:-python}" "$ROOT/predict.py" --distribute=true \
    --device_target="$DEVICE_TARGET" --strategy_load_ckpt_path="$STRATEGY" --tokenizer_path="$TOKENIZER" \
    --load_ckpt_path="$CKPT_PATH" --mode="$MODE" --run_type=predict --param_init_type="$PARAM_INIT_TYPE" \
    "${TASK_ARGS[@]}" "$@" > eval_log.txt 2>&1 &
echo "evaluation started in the background; see eval_log.txt and log_output/"
