#!/usr/bin/env bash
# Continue training from a pretrained model on Ascend with a rank table (reference arguments).
#   bash scripts/run_distribute_incremental_train.sh DATASET RANK_TABLE RANK_SIZE TYPE MODE PER_BATCH \
#        STRATEGY_CKPT CKPT_PATH CKPT_NAME [train.py args...]
# CKPT_PATH is any layout predict.py takes: the released PanGu-alpha slices (e.g. .../checkpoint_file, merged
# with STRATEGY_CKPT and shaped by MODE), a model directory, a Hugging Face GPT-2 folder or a mindformers-named
# .ckpt file. CKPT_NAME picks a sub-directory of CKPT_PATH when one exists (the reference's "filitered" is a
# slice-name prefix, not a folder, and so leaves CKPT_PATH as it is).
set -euo pipefail
if [ $# -lt 9 ]; then
    echo "Usage: bash $0 DATASET RANK_TABLE RANK_SIZE TYPE MODE PER_BATCH STRATEGY_CKPT CKPT_PATH CKPT_NAME" >&2
    exit 1
fi
DATASET=$1
RANK_TABLE_FILE=$(realpath "$2")
RANK_SIZE=$3
PARAM_INIT_TYPE=$4
MODE=$5
PER_BATCH=$6
STRATEGY=$7
CKPT_PATH=$8
CKPT_NAME=$9
shift 9
[ -f "$RANK_TABLE_FILE" ] || { echo "rank table $RANK_TABLE_FILE does not exist" >&2; exit 1; }
export RANK_TABLE_FILE RANK_SIZE
ROOT=$(cd "$(dirname "$0")/.." && pwd)
for ((i = 0; i < RANK_SIZE; i++)); do
    mkdir -p "device$i"
    (
        cd "device$i"
        export RANK_ID=$i DEVICE_ID=$i
        "${PYTHON:-python}" "$ROOT/train.py" --distribute=true --device_num="$RANK_SIZE" --device_target=Ascend \
            --parallel_mode=semi_auto_parallel --op_level_model_parallel_num=8 --optimizer_shard=1 \
            --data_url="$DATASET" --run_type=train --param_init_type="$PARAM_INIT_TYPE" --mode="$MODE" \
            --per_batch_size="$PER_BATCH" --incremental_training=1 --strategy_load_ckpt_path="$STRATEGY" \
            --load_ckpt_path="$CKPT_PATH" --load_ckpt_name="$CKPT_NAME" "$@" > "log$i.log" 2>&1 &
    )
done
echo "started $RANK_SIZE processes; logs in device*/log*.log"
