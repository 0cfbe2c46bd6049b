#!/usr/bin/env bash
# The embedded default behind `make demo`: tokenizer + preprocessing + a tiny LLaMA pretrained with
# tensor parallelism 2 on 2 CPU processes (gloo), on the bundled English + code corpus.
#   PYTHON=...  interpreter (default: .venv/bin/python)   OUT=...  output directory (default: demo_out)
#   ITERS=...   training iterations (default 300)          LAYOUT="--pipeline-model-parallel-size 2" for PP2
#   PORT=...    torchrun's rendezvous port (default: a free port picked now)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-demo_out}
ITERS=${ITERS:-300}
LAYOUT=${LAYOUT:---tensor-model-parallel-size 2}
mkdir -p "$OUT"

if [ ! -f "$OUT/tokenizer/demo.model" ]; then
  echo "== training a 4096-token sentencepiece tokenizer on data/corpus"
  "$PYTHON" tools/train_tokenizer.py --input data/corpus/english.jsonl data/corpus/code.jsonl \
    --model-prefix "$OUT/tokenizer/demo" --vocab-size 4096
fi
for part in english code; do
  if [ ! -f "$OUT/data/${part}_text_document.idx" ]; then
    echo "== preprocessing data/corpus/$part.jsonl"
    "$PYTHON" tools/preprocess_data.py --input "data/corpus/$part.jsonl" --output-prefix "$OUT/data/$part" \
      --tokenizer-type SentencePieceTokenizer --tokenizer-model "$OUT/tokenizer/demo.model" \
      --append-eod --workers 2 --no-progress
  fi
done

# A free port unless PORT is given: a fixed one collides with any other run on this machine.
PORT=${PORT:-$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
echo "== pretraining (2 CPU processes, $LAYOUT, $ITERS iterations, rendezvous port $PORT)"
rm -rf "$OUT/checkpoints" "$OUT/tensorboard"
"$PYTHON" -m torch.distributed.run --nproc-per-node 2 --master-addr 127.0.0.1 --master-port "$PORT" \
  pretrain_llama.py --device cpu --model-preset tiny-demo $LAYOUT \
  --tokenizer-type SentencePieceTokenizer --tokenizer-model "$OUT/tokenizer/demo.model" \
  --data-path 0.5 "$OUT/data/english_text_document" 0.5 "$OUT/data/code_text_document" --split 95,5,0 \
  --micro-batch-size 4 --global-batch-size 16 --train-iters "$ITERS" \
  --lr 3e-3 --min-lr 3e-4 --lr-warmup-iters 20 --lr-decay-style cosine --weight-decay 0.1 --clip-grad 1.0 \
  --eval-interval 100 --eval-iters 4 --log-interval 20 \
  --tensorboard-dir "$OUT/tensorboard" --save "$OUT/checkpoints" --save-interval "$ITERS"
