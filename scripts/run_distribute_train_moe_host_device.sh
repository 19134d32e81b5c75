#!/usr/bin/env bash
# MoE training with the optimizer on the host (heterogeneous host-device training, the reference's --opt_offload=1):
# the same 13 positional arguments as run_distribute_train_moe.sh. The fp32 Adam state of every parameter lives in
# host memory, so plan for it (the reference's 60B MoE needs about 1 TB of host memory on 8 devices).
#   bash scripts/run_distribute_train_moe_host_device.sh DATASET RANK_TABLE RANK_SIZE TYPE MODE STAGE_NUM \
#        MICRO_SIZE PER_BATCH RANK_START LOCAL_DEVICE_NUM EXPERT_NUM ENABLE_ALLTOALL EXPERT_PARALLEL_NUM [args...]
# e.g. bash scripts/run_distribute_train_moe_host_device.sh /data/mr /root/hccl_8p.json 8 fp32 2.6B 1 1 2 0 8 36 0 1
set -euo pipefail
if [ $# -lt 13 ]; then
    echo "Usage: bash $0 DATASET RANK_TABLE RANK_SIZE TYPE MODE STAGE_NUM MICRO_SIZE PER_BATCH RANK_START" \
         "LOCAL_DEVICE_NUM EXPERT_NUM ENABLE_ALLTOALL EXPERT_PARALLEL_NUM [train.py args...]" >&2
    exit 1
fi
export HCCL_EXEC_TIMEOUT=1500  # host-side updates make a step longer than HCCL's default wait
OPT_OFFLOAD=1 exec bash "$(dirname "$0")/run_distribute_train_moe.sh" "$@"
