#!/usr/bin/env bash
# Ascend training with a rank table (reference arguments), one process per local device.
#   bash scripts/run_distribute_train.sh DATASET RANK_TABLE RANK_SIZE TYPE MODE STAGE_NUM MICRO_SIZE PER_BATCH \
#        RANK_START LOCAL_DEVICE_NUM [train.py args...]
# e.g. bash scripts/run_distribute_train.sh /data/mr /root/hccl_8p.json 8 fp32 2.6B 1 1 8 0 8
set -euo pipefail
if [ $# -lt 10 ]; then
    echo "Usage: bash $0 DATASET RANK_TABLE RANK_SIZE TYPE MODE STAGE_NUM MICRO_SIZE PER_BATCH RANK_START" \
         "LOCAL_DEVICE_NUM [train.py args...]" >&2
    exit 1
fi
DATASET=$1
RANK_TABLE_FILE=$(realpath "$2")
RANK_SIZE=$3
PARAM_INIT_TYPE=$4
MODE=$5
STAGE_NUM=$6
MICRO_SIZE=$7
PER_BATCH=$8
RANK_START=$9
LOCAL_DEVICE_NUM=${10}
shift 10
[ -f "$RANK_TABLE_FILE" ] || { echo "rank table $RANK_TABLE_FILE does not exist" >&2; exit 1; }
export RANK_TABLE_FILE RANK_SIZE
ROOT=$(cd "$(dirname "$0")/.." && pwd)
for ((i = 0; i < LOCAL_DEVICE_NUM; i++)); do
    mkdir -p "device$i"
    (
        cd "device$i"
        export RANK_ID=$((i + RANK_START)) DEVICE_ID=$i
        "${PYTHON:-python}" "$ROOT/train.py" --distribute=true --device_num="$RANK_SIZE" --device_target=Ascend \
            --parallel_mode=semi_auto_parallel --op_level_model_parallel_num=8 --optimizer_shard=1 \
            --data_url="$DATASET" --run_type=train --param_init_type="$PARAM_INIT_TYPE" --mode="$MODE" \
            --stage_num="$STAGE_NUM" --micro_size="$MICRO_SIZE" --per_batch_size="$PER_BATCH" "$@" \
            > "log$i.log" 2>&1 &
    )
done
echo "started $LOCAL_DEVICE_NUM processes; logs in device*/log*.log"
