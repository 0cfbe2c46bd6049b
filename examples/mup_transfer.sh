#!/usr/bin/env bash
# μTransfer check: sweep the learning rate at several widths on the bundled corpus, under standard
# parametrization (SP) and μP, and report the best LR per width. Under μP the best LR should stay
# put as the model widens; under SP it should move (down). Results: $OUT/transfer.md (table),
# $OUT/transfer.png (loss vs LR per width), $OUT/transfer.json. See docs/mup_transfer.md.
#
# The default (docs/mup_transfer.md) is sized for ~35 min on one CPU core (JOBS=1): widths 32 to 256 (8x), base
# 32, 6 LRs an octave apart, 3 seeds, 80 steps of 16 x 64 tokens. One seed of such short runs is noisy enough
# to move the best LR by a grid step either way; the report averages the seeds and shows their spread.
#   PYTHON=...   interpreter (default .venv/bin/python)     OUT=...     output dir (build/mup_transfer)
#   WIDTHS="32 64 128 256"   hidden sizes (head_dim fixed at HEAD_DIM=16, FFN = 2.75 x width)
#   LRS="..."    base learning rates (μP: the LR of the base width; SP: the LR of every parameter)
#   PARAMS="sp mup"   BASE=32 (μP base width)   LAYERS=2   ITERS=80   WARMUP=8   SEQ=64   GBS=16
#   VOCAB=1024 (tokenizer size)   INIT_STD=0.02 (SP std = μP sigma_base)
#   SEEDS="1 2 3"   one run per seed (init and data order); the report gives the mean and spread across seeds
#   JOBS=1 (runs in parallel; one thread each)   DEVICE=cpu|cuda   MUP_EXTRA="--mup-output-alpha 2 ..."
# Bigger, e.g. on a GPU: DEVICE=cuda WIDTHS="128 256 512 1024 2048" BASE=128 LAYERS=4 ITERS=1000 SEQ=256 GBS=32 JOBS=1
# Runs already finished in $OUT/runs are reused, so an interrupted sweep resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-build/mup_transfer}
WIDTHS=${WIDTHS:-32 64 128 256}
LRS=${LRS:-1.25e-3 2.5e-3 5e-3 1e-2 2e-2 4e-2}
PARAMS=${PARAMS:-sp mup}
BASE=${BASE:-32}
HEAD_DIM=${HEAD_DIM:-16}
LAYERS=${LAYERS:-2}
ITERS=${ITERS:-80}
WARMUP=${WARMUP:-8}
SEQ=${SEQ:-64}
GBS=${GBS:-16}
MBS=${MBS:-$GBS}
VOCAB=${VOCAB:-1024}
INIT_STD=${INIT_STD:-0.02}
SEEDS=${SEEDS:-${SEED:-1 2 3}}  # SEED=... (one seed) still works
JOBS=${JOBS:-1}
DEVICE=${DEVICE:-cpu}
MUP_EXTRA=${MUP_EXTRA:-}
mkdir -p "$OUT/runs"

# Tokenizer and preprocessing exactly as examples/demo.sh, with a smaller vocabulary: at these
# widths a 4096-token embedding and head would cost more than the transformer layers.
TOK="$OUT/tokenizer/corpus$VOCAB"
if [ ! -f "$TOK.model" ]; then
  echo "== training a $VOCAB-token sentencepiece tokenizer on data/corpus"
  "$PYTHON" tools/train_tokenizer.py --input data/corpus/english.jsonl data/corpus/code.jsonl \
    --model-prefix "$TOK" --vocab-size "$VOCAB"
fi
for part in english code; do
  if [ ! -f "$OUT/data/${part}_${VOCAB}_text_document.idx" ]; then
    echo "== preprocessing data/corpus/$part.jsonl"
    "$PYTHON" tools/preprocess_data.py --input "data/corpus/$part.jsonl" --output-prefix "$OUT/data/${part}_$VOCAB" \
      --tokenizer-type SentencePieceTokenizer --tokenizer-model "$TOK.model" --append-eod --workers 2 --no-progress
  fi
done

# One training run; its JSON log is the only output kept. For one seed: same data order, init seed, schedule and
# validation batches in every run, so runs differ only in width, LR and parametrization.
# At the base width μP is exactly SP (same init, every multiplier 1), so the SP run serves both.
# Logs are named PARAM_wWIDTH_lrLR_sSEED.jsonl (tools/mup_transfer_report.py groups them by seed).
mup_base_reuses_sp() {
  [ "$1" = "$BASE" ] && [ -z "$MUP_EXTRA" ] && [[ " $PARAMS " == *" sp "* && " $PARAMS " == *" mup "* ]]
}

run_one() {
  local param=$1 width=$2 lr=$3 seed=$4
  if [ "$param" = mup ] && mup_base_reuses_sp "$width"; then return 0; fi  # the SP job copies its log
  train_one "$param" "$width" "$lr" "$seed"
  # The copy is made by the job that wrote the log, so it never races the sweep's final wait.
  if [ "$param" = sp ] && mup_base_reuses_sp "$width"; then
    cp "$OUT/runs/sp_w${width}_lr${lr}_s${seed}.jsonl" "$OUT/runs/mup_w${width}_lr${lr}_s${seed}.jsonl.tmp"
    mv "$OUT/runs/mup_w${width}_lr${lr}_s${seed}.jsonl.tmp" "$OUT/runs/mup_w${width}_lr${lr}_s${seed}.jsonl"
  fi
}

train_one() {
  local param=$1 width=$2 lr=$3 seed=$4
  local log="$OUT/runs/${param}_w${width}_lr${lr}_s${seed}.jsonl"
  if [ -f "$log" ] && grep -q '"final validation lm loss"' "$log"; then return 0; fi
  local flags=(--init-method-std "$INIT_STD")
  if [ "$param" = mup ]; then
    flags+=(--use-mup --mup-base-hidden-size "$BASE" --mup-base-init-std "$INIT_STD" $MUP_EXTRA)
  fi
  rm -f "$log"
  # LR decays to a tenth of its peak, so min-lr scales with the swept LR.
  local min_lr
  min_lr=$(awk -v lr="$lr" 'BEGIN { printf "%.6g", lr / 10 }')
  if ! OMP_NUM_THREADS=1 "$PYTHON" pretrain_llama.py --device "$DEVICE" --model-preset tiny --seed "$seed" \
      --num-layers "$LAYERS" --hidden-size "$width" --ffn-hidden-size $((width * 11 / 4)) \
      --num-attention-heads $((width / HEAD_DIM)) --kv-channels "$HEAD_DIM" \
      --seq-length "$SEQ" --max-position-embeddings "$SEQ" \
      --tokenizer-type SentencePieceTokenizer --tokenizer-model "$TOK.model" \
      --data-path 0.5 "$OUT/data/english_${VOCAB}_text_document" 0.5 "$OUT/data/code_${VOCAB}_text_document" --split 95,5,0 \
      --micro-batch-size "$MBS" --global-batch-size "$GBS" --train-iters "$ITERS" \
      --lr "$lr" --min-lr "$min_lr" --lr-warmup-iters "$WARMUP" --lr-decay-style cosine \
      --weight-decay 0.1 --clip-grad 1.0 --eval-interval "$ITERS" --eval-iters 8 \
      --log-interval 10 --log-json "$log" "${flags[@]}" > "$log.out" 2>&1; then
    echo "   $param width $width lr $lr seed $seed FAILED (see $log.out); reported as diverged" >&2
  fi
  echo "   $param width $width lr $lr seed $seed: $(grep -o 'final validation loss.*' "$log.out" || echo 'no final loss')"
}

echo "== sweep: widths [$WIDTHS] x lrs [$LRS] x [$PARAMS] x seeds [$SEEDS], $ITERS iterations each, $JOBS at a time"
start=$(date +%s)
pids=()
for seed in $SEEDS; do
  for width in $WIDTHS; do
    for lr in $LRS; do
      for param in $PARAMS; do
        while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
        run_one "$param" "$width" "$lr" "$seed" &
        pids+=($!)
      done
    done
  done
done
# Wait on each run by pid: the report must not start while any run is still writing its log.
for pid in "${pids[@]}"; do wait "$pid" || true; done
echo "== sweep took $(( $(date +%s) - start )) s"

"$PYTHON" tools/mup_transfer_report.py --runs "$OUT/runs" --out "$OUT" --base-width "$BASE" \
  --title "$LAYERS layers, $ITERS steps x $GBS x $SEQ tokens, vocab $VOCAB, bundled corpus"
