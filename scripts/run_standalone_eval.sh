#!/usr/bin/env bash
# Downstream evaluation (C3) on one device, with the reference launcher's positional arguments:
#   bash scripts/run_standalone_eval.sh STRATEGY TOKENIZER CKPT_PATH CKPT_NAME MODE DEVICE_TARGET TASK_NAME EVAL_DATA_URL
# CKPT_PATH/CKPT_NAME (or CKPT_PATH itself) is a model directory; TASK_NAME is c3; EVAL_DATA_URL holds
# c3-d-dev.json. STRATEGY is accepted and ignored on one device. PARAM_INIT_TYPE (env) defaults to fp16 as in
# the reference, fp32 on CPU. The log goes to device0/log0.log.
set -euo pipefail
if [ $# -lt 8 ]; then
    echo "Usage: bash $0 STRATEGY TOKENIZER CKPT_PATH CKPT_NAME MODE DEVICE_TARGET TASK_NAME EVAL_DATA_URL" >&2
    exit 1
fi
STRATEGY=$1
TOKENIZER=$2
CKPT_PATH=$3
CKPT_NAME=$4
MODE=$5
DEVICE_TARGET=$6
TASK_NAME=$7
EVAL_DATA_URL=$8
shift 8
if [ "$DEVICE_TARGET" = "CPU" ]; then
    PARAM_INIT_TYPE=${PARAM_INIT_TYPE:-fp32}
else
    PARAM_INIT_TYPE=${PARAM_INIT_TYPE:-fp16}
fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p device0
"${PYTHON:-python}" "$ROOT/predict.py" --strategy_load_ckpt_path="$STRATEGY" --tokenizer_path="$TOKENIZER" \
    --load_ckpt_path="$CKPT_PATH" --load_ckpt_name="$CKPT_NAME" --mode="$MODE" --run_type=predict \
    --param_init_type="$PARAM_INIT_TYPE" --distribute=false --device_target="$DEVICE_TARGET" \
    --eval_task="$TASK_NAME" --eval_data_url="$EVAL_DATA_URL" "$@" 2>&1 | tee device0/log0.log
