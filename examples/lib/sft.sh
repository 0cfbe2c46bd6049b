# Supervised fine-tuning, the steps shared by examples/{amberchat,crystalchat,dclm_it,mamba_gpt}_sft.sh.
# Sourced after lib/common.sh. A recipe sets its own variables with ex_var (the model, tokenizer, chat format,
# data and hyperparameters: see any of the four), then calls ex_sft_vars (the variables below, the same in
# every recipe) and ex_sft_run:
#
#   0. SMOKE only: a tokenizer on the bundled corpus, a tiny random HF checkpoint of the recipe's architecture
#      (tools/make_tiny_hf.py), the bundled conversations data/sft/smoke_conversations.jsonl;
#   1. HF_CKPT -> CONVERTED_DIR (tools/convert_from_hf.py), unless INIT_CKPT names a Megatron checkpoint to
#      start from (any TP/PP layout) or SAVE_DIR already has the run's own checkpoint;
#   2. SFT_INPUT -> DATA_PREFIX_conversation (tools/preprocess_sft.py, CHAT_FORMAT; the tokens the format adds
#      are read back from its .json sidecar and passed to training as --special-tokens); TEXT_INPUT (plain
#      JSONL, optional) -> DATA_PREFIX_text (tools/preprocess_data.py), blended by SFT_WEIGHT / TEXT_WEIGHT;
#      TEXT_DATA adds already preprocessed plain-text prefixes ("weight prefix ...");
#   3. pretrain_llama.py --pretrained-checkpoint INIT --load SAVE_DIR --save SAVE_DIR: weights only on the first
#      launch, an exact resume of SAVE_DIR on every later one;
#   4. SAVE_DIR's latest checkpoint -> EXPORT_DIR (tools/convert_to_hf.py --chat-format CHAT_FORMAT: the
#      chat_template, the added tokens and generation_config's end of reply). docs/sft.md has the details.

_ex_sft_var() {  # as ex_var, but a name the recipe registered already (its own default) is kept as it is
  local entry
  for entry in "${EX_VARS[@]}"; do [ "${entry%%$'\t'*}" = "$1" ] && return 0; done
  ex_var "$@"
}

ex_sft_vars() {
  _ex_sft_var SMOKE_TOKENIZER_DIR "$WORK/tokenizer" "$WORK/tokenizer" "SMOKE: where the trained stand-in tokenizer is cached"
  _ex_sft_var INIT_CKPT       ""                  ""                    "a Megatron checkpoint to start from instead of HF_CKPT (any layout)"
  _ex_sft_var CONVERTED_DIR   "$WORK/converted"   "$WORK/converted"     "HF_CKPT converted to Megatron format (made once)"
  _ex_sft_var SAVE_DIR        "$WORK/checkpoints" "$WORK/checkpoints"   "fine-tuning checkpoints; resumed from when it has one"
  _ex_sft_var DATA_PREFIX     "$WORK/data/sft"    "$WORK/data/sft"      "preprocessed data: PREFIX_conversation (and PREFIX_text)"
  _ex_sft_var INPUT_FORMAT    auto                auto                  "tools/preprocess_sft.py --input-format (messages, sharegpt, alpaca, pair)"
  _ex_sft_var TRAIN_ON_PROMPT 0                   0                     "1: train on every token, not only the replies"
  _ex_sft_var PREPROCESS_WORKERS 8                1                     "preprocessing processes"
  _ex_sft_var TEXT_INPUT      ""                  ""                    "plain-text JSONL ({\"text\": ...}) mixed in, every token trained (empty: none)"
  _ex_sft_var TEXT_WEIGHT     0                   0                     "blend weight of TEXT_INPUT"
  _ex_sft_var TEXT_DATA       ""                  ""                    "more plain-text prefixes, preprocessed: \"weight prefix ...\" (\$DATA_ROOT expands)"
  _ex_sft_var DATA_ROOT       /data               "$WORK/data"          "root of TEXT_DATA's prefixes"
  _ex_sft_var SFT_WEIGHT      1                   1                     "blend weight of the conversations (with TEXT_INPUT or TEXT_DATA)"
  _ex_sft_var SPLIT           98,2,0              10,90,0               "train,valid,test split of every source (SMOKE: 10% trained, so an epoch is a few steps)"
  _ex_sft_var SFT_PACKING     pack                pack                  "--sft-packing: pack conversations into rows, or pad"
  _ex_sft_var SFT_OVERLONG    truncate            truncate              "--sft-overlong: truncate or drop conversations over SEQ_LENGTH"
  _ex_sft_var EXPORT          1                   1                     "1: export the final checkpoint to Hugging Face format for chat"
  _ex_sft_var EXPORT_DIR      "$WORK/hf"          "$WORK/hf"            "Hugging Face export (chat_template, end of reply, added tokens)"
  _ex_sft_var EXPORT_DTYPE    bf16                fp32                  "dtype of the exported weights"
  _ex_sft_var TENSORBOARD_DIR "$WORK/tensorboard" "$WORK/tensorboard"   "TensorBoard logs (loss, trained tokens/s, padding fraction)"
  _ex_sft_var LOG_JSON        "$WORK/train_log.jsonl" "$WORK/train_log.jsonl" "per-iteration JSON log"
  _ex_sft_var NNODES          1                   1                     "nodes (torchrun --nnodes)"
  _ex_sft_var NODE_RANK       0                   0                     "this node's rank (torchrun --node-rank)"
  _ex_sft_var MASTER_ADDR     127.0.0.1           127.0.0.1             "rendezvous host (node 0)"
  _ex_sft_var MASTER_PORT     29500               $((29600 + RANDOM % 2000)) "rendezvous port"
  _ex_sft_var DEVICE          cuda                cpu                   "cuda (NCCL) or cpu (gloo)"
  _ex_sft_var SEQUENCE_PARALLEL 1                 1                     "1: --sequence-parallel (when TP > 1)"
  _ex_sft_var DISTRIBUTED_OPTIMIZER 1             1                     "1: --use-distributed-optimizer"
  _ex_sft_var PRECISION       bf16                fp32                  "bf16, fp16 or fp32"
  _ex_sft_var SAVE_INTERVAL   200                 1000                  "checkpoint every N iterations (and at the end)"
  _ex_sft_var EVAL_INTERVAL   200                 1000                  "validation every N iterations"
  _ex_sft_var EVAL_ITERS      10                  1                     "validation iterations"
  _ex_sft_var LOG_INTERVAL    1                   1                     "log every N iterations"
  _ex_sft_var SEED            1234                1234                  "random seed (data order, per epoch)"
  _ex_sft_var EXTRA_ARGS      ""                  ""                    "more pretrain_llama.py flags (word-split)"
}

# The recipe's SMOKE stand-ins: SMOKE_ARCH (make_tiny_hf.py --arch), SMOKE_PRESET, SMOKE_TOKENIZER (sp: a
# 490-piece SentencePiece model; neox: a 384-token byte-level BPE), read from the recipe's plain variables.
_ex_sft_smoke_inputs() {
  local tok extra=()
  if [ "$SMOKE_TOKENIZER" = neox ]; then tok=$(ex_smoke_neox_tokenizer "$SMOKE_TOKENIZER_DIR")
  else tok=$(ex_smoke_tokenizer "$SMOKE_TOKENIZER_DIR"); fi
  [ -n "$SPECIAL_TOKENS" ] && extra+=(--special-tokens "$SPECIAL_TOKENS")
  [ -n "$VOCAB_PAD_TO" ] && extra+=(--vocab-pad-to "$VOCAB_PAD_TO")
  if [ ! -f "$HF_CKPT/config.json" ] && [ -z "$INIT_CKPT" ]; then
    ex_log "creating a tiny random $SMOKE_ARCH HF checkpoint ($SMOKE_PRESET, the base-model stand-in): $HF_CKPT"
    "$PYTHON" tools/make_tiny_hf.py --out "$HF_CKPT" --overwrite --arch "$SMOKE_ARCH" --preset "$SMOKE_PRESET" \
      --seq-length "$SEQ_LENGTH" --tokenizer-model "$tok" "${extra[@]}"
  fi
}

_ex_sft_convert() {
  if [ -n "$INIT_CKPT" ]; then
    if ! ex_has_checkpoint "$INIT_CKPT"; then
      echo "error: INIT_CKPT=$INIT_CKPT holds no pretrain_llama.py checkpoint (latest_checkpointed_iteration.txt)" >&2
      return 2
    fi
    return 0
  fi
  ex_has_checkpoint "$SAVE_DIR" && return 0
  ex_has_checkpoint "$CONVERTED_DIR" && return 0
  if [ "$NODE_RANK" != 0 ]; then ex_wait_for_checkpoint "$CONVERTED_DIR" 3600; return; fi
  if [ ! -f "$HF_CKPT/config.json" ]; then
    echo "error: HF_CKPT=$HF_CKPT has no config.json; download the base model first: huggingface-cli download" \
         "$HF_REPO --local-dir $HF_CKPT (or set INIT_CKPT to a Megatron checkpoint)" >&2
    return 2
  fi
  ex_log "converting $HF_CKPT -> $CONVERTED_DIR"
  # shellcheck disable=SC2086
  "$PYTHON" tools/convert_from_hf.py --hf "$HF_CKPT" --save "$CONVERTED_DIR" --no-progress $CONVERT_ARGS
}

_ex_sft_tokenizer_flags() {  # the tokenizer flags both preprocessing tools and training take
  SFT_TOKENIZER_FLAGS=(--tokenizer-type "$TOKENIZER_TYPE" --tokenizer-model "$TOKENIZER_MODEL")
  [ -n "$VOCAB_PAD_TO" ] && SFT_TOKENIZER_FLAGS+=(--vocab-pad-to "$VOCAB_PAD_TO")
  return 0
}

_ex_sft_wait_file() {  # FILE: up to an hour
  local waited=0
  until [ -f "$1" ]; do
    if [ "$waited" -ge 3600 ]; then echo "error: $1 was not written by node 0 within an hour" >&2; return 1; fi
    sleep 10; waited=$((waited + 10))
  done
}

_ex_sft_preprocess() {
  local conv=${DATA_PREFIX}_conversation flags=()
  mkdir -p "$(dirname "$DATA_PREFIX")"
  if [ ! -f "$conv.idx" ]; then
    if [ "$NODE_RANK" != 0 ]; then  # node 0 preprocesses (a shared file system); the others wait for it
      _ex_sft_wait_file "$conv.json" && _ex_sft_wait_file "$conv.idx" && _ex_sft_wait_file "${conv}_loss_mask.idx"
    else
      read -r -a inputs <<< "$SFT_INPUT"
      [ -n "$SPECIAL_TOKENS" ] && flags+=(--special-tokens "$SPECIAL_TOKENS")
      [ "$TRAIN_ON_PROMPT" = 1 ] && flags+=(--train-on-prompt)
      ex_log "preprocessing ${inputs[*]} ($CHAT_FORMAT) -> $conv"
      "$PYTHON" tools/preprocess_sft.py --input "${inputs[@]}" --input-format "$INPUT_FORMAT" \
        --chat-format "$CHAT_FORMAT" "${SFT_TOKENIZER_FLAGS[@]}" "${flags[@]}" --output-prefix "$DATA_PREFIX" \
        --workers "$PREPROCESS_WORKERS" --no-progress
    fi
  fi
  # The tokens the format needed beyond the tokenizer's (recorded by preprocess_sft.py): training adds the
  # same ones, at the same ids, growing the embedding rows of the starting checkpoint.
  SFT_SPECIAL_TOKENS=$("$PYTHON" -c "import json,sys; print(','.join(json.load(open(sys.argv[1]))['special_tokens']))" \
                       "$conv.json")
  SFT_DATA_PATH=("$SFT_WEIGHT" "$conv")
  if [ -n "$TEXT_INPUT" ]; then
    local text=${DATA_PREFIX}_text
    if [ ! -f "${text}_text_document.idx" ] && [ "$NODE_RANK" != 0 ]; then
      _ex_sft_wait_file "${text}_text_document.idx"
    elif [ ! -f "${text}_text_document.idx" ]; then
      ex_log "preprocessing plain text $TEXT_INPUT -> ${text}_text_document"
      local special=()
      [ -n "$SFT_SPECIAL_TOKENS" ] && special=(--special-tokens "$SFT_SPECIAL_TOKENS")
      "$PYTHON" tools/preprocess_data.py --input "$TEXT_INPUT" --output-prefix "$text" "${SFT_TOKENIZER_FLAGS[@]}" \
        "${special[@]}" --append-eod --workers "$PREPROCESS_WORKERS" --no-progress
    fi
    SFT_DATA_PATH+=("$TEXT_WEIGHT" "${text}_text_document")
  fi
  if [ -n "$TEXT_DATA" ]; then
    local more
    read -r -a more <<< "${TEXT_DATA//\$DATA_ROOT/$DATA_ROOT}"
    SFT_DATA_PATH+=("${more[@]}")
  fi
}

_ex_sft_train() {
  local init=${INIT_CKPT:-$CONVERTED_DIR}
  ex_log "fine-tuning $init -> $SAVE_DIR (latest: $(ex_latest_iteration "$SAVE_DIR"))"
  local flags=(--device "$DEVICE" --pretrained-checkpoint "$init" --load "$SAVE_DIR" --save "$SAVE_DIR"
    --tensor-model-parallel-size "$TP" --pipeline-model-parallel-size "$PP"
    --seq-length "$SEQ_LENGTH" --micro-batch-size "$MICRO_BATCH" --global-batch-size "$GLOBAL_BATCH"
    --lr "$LR" --min-lr "$MIN_LR" --lr-decay-style "$LR_DECAY_STYLE"
    --optimizer adam --adam-beta1 0.9 --adam-beta2 "$ADAM_BETA2" --adam-eps "$ADAM_EPS"
    --weight-decay "$WEIGHT_DECAY" --clip-grad "$CLIP_GRAD"
    --data-path "${SFT_DATA_PATH[@]}" --split "$SPLIT" --chat-format "$CHAT_FORMAT"
    --sft-packing "$SFT_PACKING" --sft-overlong "$SFT_OVERLONG" "${SFT_TOKENIZER_FLAGS[@]}"
    --save-interval "$SAVE_INTERVAL" --eval-interval "$EVAL_INTERVAL" --eval-iters "$EVAL_ITERS"
    --log-interval "$LOG_INTERVAL" --tensorboard-dir "$TENSORBOARD_DIR" --log-json "$LOG_JSON" --seed "$SEED"
    --exit-signal-handler)  # preemption or scancel: finish the step, save, exit 0
  if [ -n "$TRAIN_EPOCHS" ]; then flags+=(--train-epochs "$TRAIN_EPOCHS")
  else flags+=(--train-iters "$TRAIN_ITERS"); fi
  if [ -n "$WARMUP_FRACTION" ]; then flags+=(--lr-warmup-fraction "$WARMUP_FRACTION")
  else flags+=(--lr-warmup-iters "${WARMUP_ITERS:-0}"); fi
  [ -n "$SFT_SPECIAL_TOKENS" ] && flags+=(--special-tokens "$SFT_SPECIAL_TOKENS")
  [ "$SEQUENCE_PARALLEL" = 1 ] && [ "$TP" -gt 1 ] && flags+=(--sequence-parallel)
  [ "$DISTRIBUTED_OPTIMIZER" = 1 ] && flags+=(--use-distributed-optimizer)
  case "$PRECISION" in bf16) flags+=(--bf16) ;; fp16) flags+=(--fp16) ;; fp32) ;;
    *) echo "error: PRECISION=$PRECISION; use bf16, fp16 or fp32" >&2; return 2 ;; esac
  # shellcheck disable=SC2086
  ex_torchrun "${flags[@]}" $EXTRA_ARGS
}

ex_sft_run() {
  mkdir -p "$WORK"
  export DATA_ROOT
  if [ "$SMOKE" = 1 ]; then _ex_sft_smoke_inputs; fi
  _ex_sft_convert
  _ex_sft_tokenizer_flags
  if [ ! -e "$TOKENIZER_MODEL" ]; then
    echo "error: TOKENIZER_MODEL=$TOKENIZER_MODEL does not exist (the converter copies HF_CKPT's tokenizer to" \
         "CONVERTED_DIR/tokenizer; with INIT_CKPT, point TOKENIZER_MODEL at that checkpoint's tokenizer)" >&2
    return 2
  fi
  _ex_sft_preprocess
  _ex_sft_train
  if [ "$EXPORT" = 1 ] && [ "$NODE_RANK" = 0 ]; then
    ex_export_hf "$SAVE_DIR" "$EXPORT_DIR" --dtype "$EXPORT_DTYPE" --chat-format "$CHAT_FORMAT"
  fi
  ex_log "done: checkpoints in $SAVE_DIR (iteration $(ex_latest_iteration "$SAVE_DIR"))$([ "$EXPORT" = 1 ] && echo ", Hugging Face export for chat ($CHAT_FORMAT) in $EXPORT_DIR")"
}
