#!/usr/bin/env bash
# Sharded generation on Ascend with a rank table (reference arguments), one process per device:
#   bash scripts/run_distribute_predict.sh RANK_SIZE RANK_TABLE STRATEGY TOKENIZER_DIR CKPT_PATH CKPT_NAME MODE \
#        PARAM_INIT_TYPE [predict.py args...]
# Every layer is split over the RANK_SIZE devices (model parallel); each rank loads the weights and keeps its
# slice. STRATEGY is the strategy file of released slices ("" to find it in the checkpoint folder).
# Process i runs in device_i/ with RANK_ID=DEVICE_ID=i; rank 0 prints the text (device_0/log0.log).
# e.g. bash scripts/run_distribute_predict.sh 8 /root/hccl_8p.json "" ./tokenizer /ckpt 13B_part 13B fp16
set -euo pipefail
if [ $# -lt 8 ]; then
    echo "Usage: bash $0 RANK_SIZE RANK_TABLE STRATEGY TOKENIZER_DIR CKPT_PATH CKPT_NAME MODE PARAM_INIT_TYPE" \
         "[predict.py args...]" >&2
    exit 1
fi
RANK_SIZE=$1
RANK_TABLE_FILE=$2
STRATEGY=$3
TOKENIZER=$4
CKPT_PATH=$5
CKPT_NAME=$6
MODE=$7
PARAM_INIT_TYPE=$8
shift 8
[ -f "$RANK_TABLE_FILE" ] || { echo "rank table $RANK_TABLE_FILE does not exist" >&2; exit 1; }
RANK_TABLE_FILE=$(realpath "$RANK_TABLE_FILE")
export RANK_TABLE_FILE RANK_SIZE
ROOT=$(cd "$(dirname "$0")/.." && pwd)
for ((i = 0; i < RANK_SIZE; i++)); do
    mkdir -p "device_$i"
    (
        cd "device_$i"
        export RANK_ID=$i DEVICE_ID=$i
        "${PYTHON:-python}" "$ROOT/predict.py" --distribute=true --device_target=Ascend --device_id="$i" \
            --strategy_load_ckpt_path="$STRATEGY" --tokenizer_path="$TOKENIZER" --load_ckpt_path="$CKPT_PATH" \
            --load_ckpt_name="$CKPT_NAME" --mode="$MODE" --run_type=predict --param_init_type="$PARAM_INIT_TYPE" \
            "$@" > "log$i.log" 2>&1 &
    )
done
echo "started $RANK_SIZE processes; rank 0 prints to device_0/log0.log"
