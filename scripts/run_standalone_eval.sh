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
TASK_NAME=$7
EVAL_DATA_URL=$8
PREDICT_ARGS=("${@:1:6}")
shift 8
# the same run as run_standalone_predict.sh, with the evaluation task added
exec bash "$(dirname "$0")/run_standalone_predict.sh" "${PREDICT_ARGS[@]}" --eval_task="$TASK_NAME" \
    --eval_data_url="$EVAL_DATA_URL" "$@"
