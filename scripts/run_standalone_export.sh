#!/usr/bin/env bash
# Export a model for serving on one device, with the reference launcher's positional arguments:
#   bash scripts/run_standalone_export.sh STRATEGY CKPT_PATH MODE DEVICE_TARGET [EVAL_TASK] [export.py args...]
# CKPT_PATH is a model directory, a Hugging Face GPT-2 folder, a released PanGu-alpha folder (its 'filerted'
# sub-folder when present, as the reference) or a .ckpt file. The tokenizer is copied into the export from
# TOKENIZER_DIR (env, default ./tokenizer_path). Output: ./serving_increment/pangu_standalone/pangu/1/ (log in
# device0/log0.log). EVAL_TASK c3 also exports the scoring graph.
set -euo pipefail
if [ $# -lt 4 ]; then
    echo "Usage: bash $0 STRATEGY CKPT_PATH MODE DEVICE_TARGET [EVAL_TASK] [export.py args...]" >&2
    exit 1
fi
STRATEGY=$1
CKPT_PATH=$2
MODE=$3
DEVICE_TARGET=$4
shift 4
EVAL=()
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then
    EVAL=(--eval_task="$1")
    shift
fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p device0
"${PYTHON:-python}" "$ROOT/export.py" --strategy_load_ckpt_path="$STRATEGY" --load_ckpt_path="$CKPT_PATH" \
    --load_ckpt_name=filerted --mode="$MODE" --device_target="$DEVICE_TARGET" --param_init_type=fp32 \
    --distribute=false --tokenizer_path="${TOKENIZER_DIR:-./tokenizer_path}" --output_dir=. "${EVAL[@]}" "$@" \
    2>&1 | tee device0/log0.log
