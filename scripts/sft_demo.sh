#!/usr/bin/env bash
# Fine-tune a small PanGu-alpha on the C3-derived SFT set end to end, on CPU:
# make the set, pack it, train with --stage sft, draw the loss curve, ask dev questions with the chat template.
#   bash scripts/sft_demo.sh OUT_DIR [STEPS]     e.g. bash scripts/sft_demo.sh output/sft_demo 1500
# DATA (default ../shared/data next to the repository) holds c3/ and pangu_tokenizer/.
set -euo pipefail
if [ $# -lt 1 ]; then
    echo "Usage: bash $0 OUT_DIR [STEPS]" >&2
    exit 1
fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$1
STEPS=${2:-1500}
DATA=${DATA:-$ROOT/../shared/data}
PYTHON=${PYTHON:-python}
PANGU=("$PYTHON" -m pangu_zoo.cli)
mkdir -p "$OUT"

"$PYTHON" "$ROOT/scripts/make_c3_sft.py" --data_dir "$DATA/c3" --out "$OUT/c3_train.jsonl"
"$PYTHON" "$ROOT/scripts/make_c3_sft.py" --data_dir "$DATA/c3" --splits c3-d-dev --out "$OUT/c3_dev.jsonl"
"${PANGU[@]}" sft-preprocess --input "$OUT/c3_train.jsonl" --tokenizer_path "$DATA/pangu_tokenizer" \
    --seq_length 256 --output_prefix "$OUT/data/c3" --num_workers 2 --no_progress
rm -rf "$OUT/checkpoints" "$OUT/train_log.jsonl"
"${PANGU[@]}" train --stage sft --mode self_define --model pangu_alpha --embedding_size 128 --num_layers 4 \
    --num_heads 8 --vocab_size 40000 --seq_length 256 --data_url "$OUT/data/c3" --per_batch_size 8 \
    --max_steps "$STEPS" --start_lr 2e-3 --end_lr 1e-4 --warmup_step 50 --decay_steps "$STEPS" --dropout_rate 0 \
    --save_checkpoint_path "$OUT/checkpoints" --save_checkpoint_steps "$STEPS" --log_file "$OUT/train_log.jsonl" \
    --save_pretrained "$OUT/model"
"${PANGU[@]}" plot-log "$OUT/train_log.jsonl" --out "$OUT/sft_loss.png" \
    --title "SFT on C3 (PanGu-alpha, hidden 128, 4 layers): response loss"
"$PYTHON" "$ROOT/scripts/sft_c3_check.py" --model_dir "$OUT/model" --tokenizer_path "$DATA/pangu_tokenizer" \
    --input "$OUT/c3_dev.jsonl" --limit 200 --show 8
