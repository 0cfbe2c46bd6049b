# LLaMA pretraining from scratch (or from INIT_HF), shared by examples/amber_7b.sh and examples/openllama_3b.sh.
# Sourced after lib/common.sh; the caller sets PRESET and the recipe's defaults through ex_llama_vars.

ex_llama_vars() {  # NAME LR MIN_LR WARMUP DECAY_STYLE TRAIN_ITERS GLOBAL_BATCH TP PP DATA_MIX DATA_PATH
  ex_var WORK            "$1"                "$EX_REPO/smoke_out/$1"  "work directory (default parent of the paths below)"
  ex_var PRESET          "$PRESET_DEFAULT"   tiny                  "--model-preset (SMOKE: tiny, the same LLaMA layout)"
  ex_var INIT_HF         ""                  ""                    "optional LLaMA Hugging Face checkpoint to start from (converted once)"
  ex_var CONVERTED_DIR   "$WORK/converted"   "$WORK/converted"     "INIT_HF converted to Megatron format"
  ex_var SAVE_DIR        "$WORK/checkpoints" "$WORK/checkpoints"   "training checkpoints; resumed from when it has one"
  ex_var EXPORT          1                   1                     "1: export the final checkpoint to Hugging Face format"
  ex_var EXPORT_DIR      "$WORK/hf"          "$WORK/hf"            "Hugging Face export of the result"
  ex_var EXPORT_DTYPE    bf16                fp32                  "dtype of the exported weights"
  ex_var TENSORBOARD_DIR "$WORK/tensorboard" "$WORK/tensorboard"   "TensorBoard logs"
  ex_var LOG_JSON        "$WORK/train_log.jsonl" "$WORK/train_log.jsonl" "per-iteration JSON log"
  ex_var MOCK_DATA       0                   0                     "1: --mock-data (random tokens) instead of DATA_MIX/DATA_PATH"
  # SMOKE stands in for the recipe's data with the bundled corpus: a mix file becomes a generated two-source
  # mix weighted by token counts; a --data-path becomes Megatron-style weights over the two parts.
  ex_var DATA_MIX        "${10}"             "${10:+$WORK/smoke_mix.json}" "datamix JSON (--data-mix); empty: use DATA_PATH"
  ex_var DATA_PATH       "${11}"             "${11:+0.5 \$DATA_ROOT/english_text_document 0.5 \$DATA_ROOT/code_text_document}" \
                                                                   "--data-path (weights and prefixes) when DATA_MIX is empty"
  ex_var DATA_ROOT       /data               "$WORK/data"          "root of the mix's and DATA_PATH's prefixes"
  ex_var DATA_CACHE      "$WORK/data_cache"  "$WORK/data_cache"    "megatron-core dataset index cache"
  ex_var SPLIT           998,2,0             95,5,0                "train,valid,test split of every source"
  ex_var TOKENIZER_TYPE  SentencePieceTokenizer SentencePieceTokenizer "tokenizer class"
  ex_var TOKENIZER_MODEL "$WORK/tokenizer.model" "$WORK/tokenizer/smoke.model" "tokenizer model (LLaMA's 32000-piece model; SMOKE: trained)"
  ex_var GPUS_PER_NODE   8                   2                     "processes per node"
  ex_var NNODES          1                   1                     "nodes (torchrun --nnodes)"
  ex_var NODE_RANK       0                   0                     "this node's rank (torchrun --node-rank)"
  ex_var MASTER_ADDR     127.0.0.1           127.0.0.1             "rendezvous host (node 0)"
  ex_var MASTER_PORT     29500               $((29600 + RANDOM % 2000)) "rendezvous port"
  ex_var DEVICE          cuda                cpu                   "cuda (NCCL) or cpu (gloo)"
  ex_var TP              "$8"                1                     "tensor-parallel size"
  ex_var PP              "$9"                2                     "pipeline-parallel size"
  ex_var SEQUENCE_PARALLEL 1                 1                     "1: --sequence-parallel (when TP > 1)"
  ex_var DISTRIBUTED_OPTIMIZER 1             1                     "1: --use-distributed-optimizer"
  ex_var PRECISION       bf16                bf16                  "bf16, fp16 or fp32"
  ex_var SEQ_LENGTH      2048                64                    "sequence length"
  ex_var MICRO_BATCH     1                   2                     "micro-batch size per process"
  ex_var GLOBAL_BATCH    "$7"                8                     "global batch size (sequences)"
  ex_var LR              "$2"                "$2"                  "peak learning rate"
  ex_var MIN_LR          "$3"                "$3"                  "final learning rate"
  ex_var WARMUP_ITERS    "$4"                2                     "warmup iterations"
  ex_var DECAY_STYLE     "$5"                "$5"                  "learning-rate decay (cosine, linear)"
  ex_var TRAIN_ITERS     "$6"                6                     "total iterations (= decay iterations)"
  ex_var SMOKE_FIRST_ITERS 3                 3                     "SMOKE: the first run stops here, the second resumes"
  ex_var SAVE_INTERVAL   1000                3                     "checkpoint every N iterations (and at the end)"
  ex_var EVAL_INTERVAL   2000                4                     "validation every N iterations"
  ex_var EVAL_ITERS      10                  1                     "validation iterations"
  ex_var LOG_INTERVAL    10                  1                     "log every N iterations"
  ex_var SEED            1234                1234                  "random seed"
  ex_var EXTRA_ARGS      ""                  ""                    "more pretrain_llama.py flags (word-split)"
}

ex_llama_run() {
  mkdir -p "$WORK"
  export DATA_ROOT
  DATA_PATH=${DATA_PATH//\$DATA_ROOT/$DATA_ROOT}  # defaults name $DATA_ROOT literally
  if [ "$SMOKE" = 1 ] && [ "$MOCK_DATA" != 1 ]; then
    TOKENIZER_MODEL=$(ex_smoke_tokenizer "$(dirname "$TOKENIZER_MODEL")")
    ex_smoke_preprocess "$DATA_ROOT" "$TOKENIZER_MODEL"
    if [ -n "$DATA_MIX" ] && [ ! -f "$DATA_MIX" ]; then
      cat > "$DATA_MIX" <<EOF
{"comment": "smoke stand-in for the recipe's mix: the bundled prose and code, weighted by token counts",
 "data_root": "\$DATA_ROOT",
 "sources": [
   {"name": "english", "prefix": "english_text_document", "tokens": 3.0e6},
   {"name": "code", "prefix": "code_text_document", "tokens": 1.0e6}]}
EOF
    fi
  fi
  local init=""
  if [ -n "$INIT_HF" ]; then
    init=$CONVERTED_DIR
    if ! ex_has_checkpoint "$SAVE_DIR" && ! ex_has_checkpoint "$CONVERTED_DIR"; then
      if [ "$NODE_RANK" = 0 ]; then
        ex_log "converting $INIT_HF -> $CONVERTED_DIR"
        "$PYTHON" tools/convert_from_hf.py --hf "$INIT_HF" --save "$CONVERTED_DIR" --model-format llama --no-progress
      else
        ex_wait_for_checkpoint "$CONVERTED_DIR" 3600
      fi
    fi
  fi

  _ex_llama_train() {  # ITERS
    local load
    load=$(ex_load_dir "$SAVE_DIR" "$init")
    ex_log "training to iteration $1 from ${load:-scratch} (latest: $(ex_latest_iteration "${load:-/nonexistent}"))"
    local flags=(--device "$DEVICE" --save "$SAVE_DIR"
      --tensor-model-parallel-size "$TP" --pipeline-model-parallel-size "$PP"
      --seq-length "$SEQ_LENGTH" --micro-batch-size "$MICRO_BATCH" --global-batch-size "$GLOBAL_BATCH"
      --train-iters "$1" --lr "$LR" --min-lr "$MIN_LR" --lr-warmup-iters "$WARMUP_ITERS"
      --lr-decay-style "$DECAY_STYLE" --lr-decay-iters "$TRAIN_ITERS"
      --optimizer adam --adam-beta1 0.9 --adam-beta2 0.95 --adam-eps 1e-8 --weight-decay 0.1 --clip-grad 1.0
      --save-interval "$SAVE_INTERVAL" --eval-interval "$EVAL_INTERVAL" --eval-iters "$EVAL_ITERS"
      --log-interval "$LOG_INTERVAL" --tensorboard-dir "$TENSORBOARD_DIR" --log-json "$LOG_JSON" --seed "$SEED"
      --exit-signal-handler)  # preemption or scancel: finish the step, save, exit 0
    if [ -n "$load" ]; then flags+=(--load "$load"); else flags+=(--model-preset "$PRESET"); fi
    if [ "$MOCK_DATA" = 1 ]; then
      flags+=(--mock-data)
    else
      if [ -n "$DATA_MIX" ]; then flags+=(--data-mix "$DATA_MIX")
      else read -r -a dp <<< "$DATA_PATH"; flags+=(--data-path "${dp[@]}"); fi
      flags+=(--split "$SPLIT" --data-cache-path "$DATA_CACHE")
    fi
    [ -n "$TOKENIZER_MODEL" ] && flags+=(--tokenizer-type "$TOKENIZER_TYPE" --tokenizer-model "$TOKENIZER_MODEL")
    [ "$SEQUENCE_PARALLEL" = 1 ] && [ "$TP" -gt 1 ] && flags+=(--sequence-parallel)
    [ "$DISTRIBUTED_OPTIMIZER" = 1 ] && flags+=(--use-distributed-optimizer)
    case "$PRECISION" in bf16) flags+=(--bf16) ;; fp16) flags+=(--fp16) ;; fp32) ;;
      *) echo "error: PRECISION=$PRECISION; use bf16, fp16 or fp32" >&2; return 2 ;; esac
    # shellcheck disable=SC2086
    ex_torchrun "${flags[@]}" $EXTRA_ARGS
  }

  if [ "$SMOKE" = 1 ] && ! ex_has_checkpoint "$SAVE_DIR"; then
    _ex_llama_train "$SMOKE_FIRST_ITERS"  # a first run that stops early; the next one resumes from it
  fi
  _ex_llama_train "$TRAIN_ITERS"

  if [ "$EXPORT" = 1 ] && [ "$NODE_RANK" = 0 ]; then
    ex_export_hf "$SAVE_DIR" "$EXPORT_DIR" --dtype "$EXPORT_DTYPE"
  fi
  ex_log "done: checkpoints in $SAVE_DIR (iteration $(ex_latest_iteration "$SAVE_DIR"))$([ "$EXPORT" = 1 ] && echo ", Hugging Face export in $EXPORT_DIR")"
}
