#!/usr/bin/env bash
# Sharded downstream evaluation (C3) on Ascend with a rank table (reference arguments):
#   bash scripts/run_distribute_eval.sh RANK_SIZE RANK_TABLE STRATEGY TOKENIZER CKPT_PATH MODE PARAM_INIT_TYPE \
#        TASK_NAME EVAL_DATA_URL [predict.py args...]
# CKPT_PATH is the model or released-checkpoint folder; TASK_NAME is c3; EVAL_DATA_URL holds c3-d-dev.json.
# The same run as run_distribute_predict.sh with the task added; rank 0 logs top1_acc in device_0/log0.log.
set -euo pipefail
if [ $# -lt 9 ]; then
    echo "Usage: bash $0 RANK_SIZE RANK_TABLE STRATEGY TOKENIZER CKPT_PATH MODE PARAM_INIT_TYPE TASK_NAME" \
         "EVAL_DATA_URL [predict.py args...]" >&2
    exit 1
fi
TASK_NAME=$8
EVAL_DATA_URL=$9
# CKPT_NAME (empty) goes between CKPT_PATH and MODE in run_distribute_predict.sh's order
PREDICT_ARGS=("$1" "$2" "$3" "$4" "$5" "" "$6" "$7")
shift 9
exec bash "$(dirname "$0")/run_distribute_predict.sh" "${PREDICT_ARGS[@]}" --eval_task="$TASK_NAME" \
    --eval_data_url="$EVAL_DATA_URL" "$@"
