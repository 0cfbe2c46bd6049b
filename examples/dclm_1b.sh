#!/usr/bin/env bash
# DCLM-1B (TRI-ML/DCLM-1B, open_lm's open_lm_1b_swiglutorch: 24 layers, hidden 2048, 16 heads, gain-only
# LayerNorm, full-width query/key norm, SwiGLU 5632, untied, GPT-NeoX-20B tokenizer padded to 50432 ids):
# continued pretraining from its Hugging Face weights on your data mix, then export back to open_lm's layout.
#
#   1. convert HF_CKPT (open_lm layout: config.json with open_lm's flat keys, safetensors, tokenizer.json) to a
#      Megatron checkpoint in CONVERTED_DIR (skipped when it is there already); the model flags come from it and
#      the tokenizer files are copied to CONVERTED_DIR/tokenizer, which the run uses (HuggingFaceTokenizer,
#      <|endoftext|> ends each document; --vocab-pad-to 50432 keeps the embedding rows DCLM-1B has);
#   2. train on DATA_MIX (a datamix JSON) or DATA_PATH (Megatron-style weights and prefixes), preprocessed
#      with the same tokenizer. Restarting the script resumes from SAVE_DIR's latest checkpoint;
#   3. export SAVE_DIR's latest checkpoint to EXPORT_DIR in open_lm's HF layout (EXPORT=0 skips it).
#
# Schedule. DCLM published no continued-pretraining schedule (its pretraining: AdamW peak LR 1e-2, weight decay
# 1e-2, 2048 x 2048-token batches, per the DCLM-1B-v0 card; its instruction tuning: LR 2e-5, weight decay 0.1).
# The defaults here are this recipe's CHOICE, not DCLM's numbers: a re-warmup of 1000 iterations to 3e-4 (3% of
# the pretraining peak, to limit forgetting), cosine to 3e-5 over TRAIN_ITERS = 20,000 iterations of 512 x 2048
# tokens (~1M tokens a step, ~21B tokens: set TRAIN_ITERS to your mix's size), AdamW (0.9, 0.95) eps 1e-8,
# weight decay 0.1, clip 1.0, bf16. Layout on 8 GPUs: TP1 x PP1 x DP8 (a 1.4B model fits one H100; the
# distributed optimizer shards its state), micro-batch 4 (16 accumulation steps; a guess, not measured here:
# raise MICRO_BATCH if memory allows), flash attention (--attention-backend auto).
#
# Get the weights and prepare data (once):
#   huggingface-cli download TRI-ML/DCLM-1B --local-dir $WORK/DCLM-1B
#   python tools/preprocess_data.py --input web.jsonl --output-prefix $DATA_ROOT/web/web \
#       --tokenizer-type HuggingFaceTokenizer --tokenizer-model $WORK/DCLM-1B --append-eod
#
# One node:   DATA_MIX=my_mix.json bash examples/dclm_1b.sh
# N nodes:    NNODES=N NODE_RANK=i MASTER_ADDR=host0 DATA_MIX=... bash examples/dclm_1b.sh   (on each node), or
#             sbatch --nodes N examples/slurm_multinode.sbatch examples/dclm_1b.sh
# CPU smoke:  SMOKE=1 bash examples/dclm_1b.sh   (tiny DCLM-architecture model, bundled corpus, TP2 + sequence
#             parallel on 2 processes: a 384-token GPT-NeoX-style BPE padded to 512 rows, a random open_lm-layout
#             HF checkpoint, preprocessing, conversion, train, resume, export)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

ex_var WORK            dclm_1b             "$EX_REPO/smoke_out/dclm_1b" "work directory (default parent of the paths below)"
ex_var HF_CKPT         "$WORK/DCLM-1B"     "$WORK/hf_dclm"       "DCLM-1B Hugging Face checkpoint (open_lm layout; SMOKE: created)"
ex_var CONVERTED_DIR   "$WORK/converted"   "$WORK/converted"     "HF_CKPT converted to Megatron format (made once)"
ex_var SAVE_DIR        "$WORK/checkpoints" "$WORK/checkpoints"   "training checkpoints; resumed from when it has one"
ex_var EXPORT          1                   1                     "1: export the final checkpoint to Hugging Face format"
ex_var EXPORT_DIR      "$WORK/hf"          "$WORK/hf"            "Hugging Face export of the result (open_lm layout)"
ex_var EXPORT_DTYPE    bf16                fp32                  "dtype of the exported weights"
ex_var TENSORBOARD_DIR "$WORK/tensorboard" "$WORK/tensorboard"   "TensorBoard logs"
ex_var LOG_JSON        "$WORK/train_log.jsonl" "$WORK/train_log.jsonl" "per-iteration JSON log"
ex_var DATA_MIX        ""                  "$WORK/smoke_mix.json" "datamix JSON (--data-mix; SMOKE: generated); or DATA_PATH"
ex_var DATA_PATH       ""                  ""                    "--data-path weights and prefixes, when DATA_MIX is empty"
ex_var DATA_ROOT       /data               "$WORK/data"          "root of the mix's relative prefixes"
ex_var DATA_CACHE      "$WORK/data_cache"  "$WORK/data_cache"    "megatron-core dataset index cache"
ex_var SPLIT           998,2,0             95,5,0                "train,valid,test split of every source"
ex_var TOKENIZER_TYPE  HuggingFaceTokenizer HuggingFaceTokenizer "tokenizer class"
ex_var TOKENIZER_MODEL "$CONVERTED_DIR/tokenizer" "$CONVERTED_DIR/tokenizer" "tokenizer directory (the converter copies HF_CKPT's tokenizer.json there)"
ex_var VOCAB_PAD_TO    50432               512                   "--vocab-pad-to: GPT-NeoX's 50277 ids padded to DCLM-1B's 50432 rows (SMOKE: 384 to 512)"
ex_var GPUS_PER_NODE   8                   2                     "processes per node"
ex_var NNODES          1                   1                     "nodes (torchrun --nnodes)"
ex_var NODE_RANK       0                   0                     "this node's rank (torchrun --node-rank)"
ex_var MASTER_ADDR     127.0.0.1           127.0.0.1             "rendezvous host (node 0)"
ex_var MASTER_PORT     29500               $((29600 + RANDOM % 2000)) "rendezvous port"
ex_var DEVICE          cuda                cpu                   "cuda (NCCL) or cpu (gloo)"
ex_var TP              1                   2                     "tensor-parallel size"
ex_var PP              1                   1                     "pipeline-parallel size"
ex_var SEQUENCE_PARALLEL 1                 1                     "1: --sequence-parallel (when TP > 1)"
ex_var DISTRIBUTED_OPTIMIZER 1             1                     "1: --use-distributed-optimizer"
ex_var PRECISION       bf16                bf16                  "bf16, fp16 or fp32"
ex_var ATTENTION_BACKEND auto              auto                  "--attention-backend (auto: flash-attn on CUDA with bf16 when installed)"
ex_var SEQ_LENGTH      2048                64                    "sequence length"
ex_var MICRO_BATCH     4                   2                     "micro-batch size per process"
ex_var GLOBAL_BATCH    512                 8                     "global batch size (sequences)"
ex_var LR              3e-4                3e-4                  "peak learning rate (a choice, see the header)"
ex_var MIN_LR          3e-5                3e-5                  "final learning rate"
ex_var WARMUP_ITERS    1000                2                     "re-warmup iterations"
ex_var TRAIN_ITERS     20000               6                     "total iterations (cosine decay over all of them)"
ex_var WEIGHT_DECAY    0.1                 0.1                   "AdamW weight decay"
ex_var SMOKE_FIRST_ITERS 3                 3                     "SMOKE: the first run stops here, the second resumes"
ex_var SAVE_INTERVAL   1000                3                     "checkpoint every N iterations (and at the end)"
ex_var EVAL_INTERVAL   1000                3                     "validation every N iterations"
ex_var EVAL_ITERS      10                  1                     "validation iterations"
ex_var LOG_INTERVAL    10                  1                     "log every N iterations"
ex_var SEED            1234                1234                  "random seed (data order)"
ex_var EXTRA_ARGS      ""                  ""                    "more pretrain_llama.py flags (word-split)"

if ex_help_requested "$@"; then ex_usage "examples/dclm_1b.sh: DCLM-1B continued pretraining"; exit 0; fi
if [ -z "$DATA_MIX" ] && [ -z "$DATA_PATH" ]; then
  echo "error: set DATA_MIX (a datamix JSON, see docs/recipes.md) or DATA_PATH (\"0.7 /d/web_text_document 0.3" \
       "/d/code_text_document\"): the data to continue DCLM-1B on, preprocessed with its tokenizer" >&2
  exit 2
fi
mkdir -p "$WORK"
export DATA_ROOT
DATA_PATH=${DATA_PATH//\$DATA_ROOT/$DATA_ROOT}

# ---- SMOKE: everything the real run gets from outside, made from the bundled corpus ----------------
if [ "$SMOKE" = 1 ]; then
  smoke_tokenizer=$(ex_smoke_neox_tokenizer "$WORK/tokenizer")
  pids=()
  if [ ! -f "$HF_CKPT/config.json" ]; then
    ex_log "creating a tiny random DCLM-architecture HF checkpoint (open_lm layout): $HF_CKPT"
    "$PYTHON" tools/make_tiny_hf.py --out "$HF_CKPT" --overwrite --arch openlm --preset tiny-dclm \
      --seq-length "$SEQ_LENGTH" --tokenizer-model "$smoke_tokenizer" ${VOCAB_PAD_TO:+--vocab-pad-to "$VOCAB_PAD_TO"} &
    pids+=($!)
  fi
  ex_smoke_preprocess "$DATA_ROOT" "$smoke_tokenizer"
  for pid in "${pids[@]}"; do wait "$pid"; done
  cat > "$DATA_MIX" <<EOF
{"comment": "smoke stand-in for your data mix: the bundled prose and code",
 "data_root": "\$DATA_ROOT",
 "sources": [
   {"name": "english", "prefix": "english_text_document", "weight": 0.7},
   {"name": "code", "prefix": "code_text_document", "weight": 0.3}]}
EOF
fi

# ---- 1. conversion ---------------------------------------------------------------------------------
if ! ex_has_checkpoint "$SAVE_DIR" && ! ex_has_checkpoint "$CONVERTED_DIR"; then
  if [ "$NODE_RANK" = 0 ]; then
    if [ ! -f "$HF_CKPT/config.json" ]; then
      echo "error: $HF_CKPT has no config.json; download the weights first:" \
           "huggingface-cli download TRI-ML/DCLM-1B --local-dir $HF_CKPT" >&2
      exit 2
    fi
    ex_log "converting $HF_CKPT -> $CONVERTED_DIR"
    # open_lm's layout is recognised from config.json (model_type openlm)
    "$PYTHON" tools/convert_from_hf.py --hf "$HF_CKPT" --save "$CONVERTED_DIR" --no-progress
  else
    ex_wait_for_checkpoint "$CONVERTED_DIR" 3600
  fi
fi

# ---- 2. training (resumes from SAVE_DIR when it has a checkpoint) ---------------------------------
train() {  # ITERS
  local load
  load=$(ex_load_dir "$SAVE_DIR" "$CONVERTED_DIR")
  ex_log "training to iteration $1 from $load (latest: $(ex_latest_iteration "$load"))"
  local flags=(--device "$DEVICE" --load "$load" --save "$SAVE_DIR"
    --tensor-model-parallel-size "$TP" --pipeline-model-parallel-size "$PP"
    --seq-length "$SEQ_LENGTH" --micro-batch-size "$MICRO_BATCH" --global-batch-size "$GLOBAL_BATCH"
    --train-iters "$1" --lr "$LR" --min-lr "$MIN_LR" --lr-warmup-iters "$WARMUP_ITERS"
    --lr-decay-style cosine --lr-decay-iters "$TRAIN_ITERS"
    --optimizer adam --adam-beta1 0.9 --adam-beta2 0.95 --adam-eps 1e-8 --weight-decay "$WEIGHT_DECAY"
    --clip-grad 1.0 --attention-backend "$ATTENTION_BACKEND"
    --split "$SPLIT" --data-cache-path "$DATA_CACHE"
    --tokenizer-type "$TOKENIZER_TYPE" --tokenizer-model "$TOKENIZER_MODEL"
    --save-interval "$SAVE_INTERVAL" --eval-interval "$EVAL_INTERVAL" --eval-iters "$EVAL_ITERS"
    --log-interval "$LOG_INTERVAL" --tensorboard-dir "$TENSORBOARD_DIR" --log-json "$LOG_JSON" --seed "$SEED"
    --exit-signal-handler)  # preemption or scancel: finish the step, save, exit 0
  if [ -n "$DATA_MIX" ]; then flags+=(--data-mix "$DATA_MIX")
  else read -r -a dp <<< "$DATA_PATH"; flags+=(--data-path "${dp[@]}"); fi
  [ -n "$VOCAB_PAD_TO" ] && flags+=(--vocab-pad-to "$VOCAB_PAD_TO")
  [ "$SEQUENCE_PARALLEL" = 1 ] && [ "$TP" -gt 1 ] && flags+=(--sequence-parallel)
  [ "$DISTRIBUTED_OPTIMIZER" = 1 ] && flags+=(--use-distributed-optimizer)
  case "$PRECISION" in bf16) flags+=(--bf16) ;; fp16) flags+=(--fp16) ;; fp32) ;;
    *) echo "error: PRECISION=$PRECISION; use bf16, fp16 or fp32" >&2; return 2 ;; esac
  # shellcheck disable=SC2086
  ex_torchrun "${flags[@]}" $EXTRA_ARGS
}

if [ "$SMOKE" = 1 ] && ! ex_has_checkpoint "$SAVE_DIR"; then
  train "$SMOKE_FIRST_ITERS"  # a first run that stops early; the next one must resume from its checkpoint
fi
train "$TRAIN_ITERS"

# ---- 3. export --------------------------------------------------------------------------------------
if [ "$EXPORT" = 1 ] && [ "$NODE_RANK" = 0 ]; then
  ex_export_hf "$SAVE_DIR" "$EXPORT_DIR" --dtype "$EXPORT_DTYPE"
fi
ex_log "done: checkpoints in $SAVE_DIR (iteration $(ex_latest_iteration "$SAVE_DIR"))$([ "$EXPORT" = 1 ] && echo ", Hugging Face export in $EXPORT_DIR")"
