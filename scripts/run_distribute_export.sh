#!/usr/bin/env bash
# Export a sharded model for serving on 8 Ascend devices (reference arguments), one process per device:
#   bash scripts/run_distribute_export.sh STRATEGY CKPT_PATH [EVAL_TASK] [export.py args...]
# As the reference: RANK_SIZE 8, the rank table serving_increment/pangu_distributed/hccl_8p.json (env
# RANK_TABLE_FILE overrides it), MODE 13B (env MODE overrides it), fp32. Each rank writes its slice of the graphs
# to serving_increment/pangu_distributed/models/device_<rank>/; process i runs in device_i/ (log device_i/log<i>.log).
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "Usage: bash $0 STRATEGY CKPT_PATH [EVAL_TASK] [export.py args...]" >&2
    exit 1
fi
STRATEGY=$1
CKPT_PATH=$2
shift 2
EVAL=()
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then
    EVAL=(--eval_task="$1")
    shift
fi
RANK_SIZE=8
RANK_TABLE_FILE=${RANK_TABLE_FILE:-serving_increment/pangu_distributed/hccl_8p.json}
MODE=${MODE:-13B}
[ -f "$RANK_TABLE_FILE" ] || { echo "rank table $RANK_TABLE_FILE does not exist" >&2; exit 1; }
RANK_TABLE_FILE=$(realpath "$RANK_TABLE_FILE")
export RANK_TABLE_FILE RANK_SIZE
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(pwd)
for ((i = 0; i < RANK_SIZE; i++)); do
    mkdir -p "device_$i"
    (
        cd "device_$i"
        export RANK_ID=$i DEVICE_ID=$i
        "${PYTHON:-python}" "$ROOT/export.py" --distribute=true --device_target=Ascend --device_id="$i" \
            --strategy_load_ckpt_path="$STRATEGY" --load_ckpt_path="$CKPT_PATH" --load_ckpt_name=filerted \
            --mode="$MODE" --param_init_type=fp32 --tokenizer_path="${TOKENIZER_DIR:-./tokenizer_path}" \
            --output_dir="$OUT" "${EVAL[@]}" "$@" > "log$i.log" 2>&1 &
    )
done
echo "started $RANK_SIZE export processes; logs in device_<i>/log<i>.log"
