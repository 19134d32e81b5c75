#!/usr/bin/env bash
# Ascend MoE training with a rank table (the reference's 13 positional arguments): run_distribute_train.sh with a
# mixture-of-experts FFN in every ordinary block (docs/moe.md).
#   bash scripts/run_distribute_train_moe.sh DATASET RANK_TABLE RANK_SIZE TYPE MODE STAGE_NUM MICRO_SIZE PER_BATCH \
#        RANK_START LOCAL_DEVICE_NUM EXPERT_NUM ENABLE_ALLTOALL EXPERT_PARALLEL_NUM [train.py args...]
# e.g. bash scripts/run_distribute_train_moe.sh /data/mr /root/hccl_8p.json 8 fp32 2.6B 1 1 1 0 8 36 0 1
# OPT_OFFLOAD=1 keeps the optimizer state and update on the host (run_distribute_train_moe_host_device.sh).
set -euo pipefail
if [ $# -lt 13 ]; then
    echo "Usage: bash $0 DATASET RANK_TABLE RANK_SIZE TYPE MODE STAGE_NUM MICRO_SIZE PER_BATCH RANK_START" \
         "LOCAL_DEVICE_NUM EXPERT_NUM ENABLE_ALLTOALL EXPERT_PARALLEL_NUM [train.py args...]" >&2
    exit 1
fi
EXPERT_NUM=${11}
ENABLE_ALLTOALL=${12}
EXPERT_PARALLEL_NUM=${13}
exec bash "$(dirname "$0")/run_distribute_train.sh" "${@:1:10}" --gradient_aggregation_group=2 \
    --opt_offload="${OPT_OFFLOAD:-0}" --use_moe=1 --expert_num="$EXPERT_NUM" --enable_alltoall="$ENABLE_ALLTOALL" \
    --expert_parallel_num="$EXPERT_PARALLEL_NUM" "${@:14}"
