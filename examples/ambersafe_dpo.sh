#!/usr/bin/env bash
# AmberSafe: AmberChat aligned for safety with DPO on PKU-SafeRLHF (LLM360's recipe: an SFT stage on the
# preferred replies, then DPO with beta 0.1), in this trainer, from and to Hugging Face weights.
#
#   1. convert HF_CKPT (AmberChat, or any LLaMA-layout chat model) to a Megatron checkpoint (skipped when there);
#   2. preprocess PREF_JSONL (PKU-SafeRLHF's layout: prompt, response_0/1, is_response_0/1_safe) with
#      tools/preprocess_preference.py: pairs whose safety labels differ, the safe reply chosen, rendered in
#      CHAT_FORMAT; --also-sft writes the chosen conversations for stage 3;
#   3. SFT on the chosen conversations from the converted weights (--pretrained-checkpoint) into SFT_DIR;
#   4. DPO on the pairs from SFT_DIR's weights into DPO_DIR: the reference log-probs of the SFT model are
#      computed once before the first step and stored in DPO_DIR (docs/dpo.md);
#   5. export DPO_DIR's latest checkpoint to EXPORT_DIR with the chat template (EXPORT=0 skips it).
# Conversion and preprocessing are skipped when their outputs exist; re-running resumes each training stage from
# its own checkpoints (a finished stage ends at once).
#
# Hyperparameters. beta 0.1 and the sigmoid loss are the recipe's (issue 14); the learning rates, epochs and
# batch sizes below are this recipe's CHOICE, not published AmberSafe numbers: SFT as AmberChat (lr 2e-5,
# 3 epochs, warmup 4%), DPO at lr 5e-7 for 1 epoch in global batches of 64 rows of 2048 positions (each row
# packs whole pairs: one to a few PKU-SafeRLHF pairs).
#
# Get the inputs (once):
#   huggingface-cli download LLM360/AmberChat --local-dir $WORK/AmberChat
#   python -c "import datasets; datasets.load_dataset('PKU-Alignment/PKU-SafeRLHF', split='train').to_json('$WORK/pku_saferlhf_train.jsonl')"
#
# One node:   bash examples/ambersafe_dpo.sh
# CPU smoke:  SMOKE=1 bash examples/ambersafe_dpo.sh   (a tiny random LLaMA with a 490-piece tokenizer, a
#             generated PKU-SafeRLHF-layout file, every stage, TP2 on 2 processes)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

ex_var WORK            ambersafe            "$EX_REPO/smoke_out/ambersafe" "work directory (default parent of the paths below)"
ex_var HF_CKPT         "$WORK/AmberChat"    "$WORK/hf_tiny"       "starting chat model, Hugging Face LLaMA layout (SMOKE: created)"
ex_var CONVERTED_DIR   "$WORK/converted"    "$WORK/converted"     "HF_CKPT converted to Megatron format (made once)"
ex_var PREF_JSONL      "$WORK/pku_saferlhf_train.jsonl" "$WORK/pku_smoke.jsonl" "preference pairs (SMOKE: generated)"
ex_var PREF_LAYOUT     pku-saferlhf         pku-saferlhf          "tools/preprocess_preference.py --layout"
ex_var DATA_PREFIX     "$WORK/data/saferlhf" "$WORK/data/saferlhf" "preprocessed data: PREFIX_preference, PREFIX_conversation"
ex_var CHAT_FORMAT     amberchat            amberchat             "chat format of the data and the export"
ex_var TOKENIZER_TYPE  SentencePieceTokenizer SentencePieceTokenizer "tokenizer class"
ex_var TOKENIZER_MODEL "$HF_CKPT/tokenizer.model" "$HF_CKPT/tokenizer.model" "tokenizer (AmberChat's LLaMA SentencePiece model)"
ex_var SFT_DIR         "$WORK/sft"          "$WORK/sft"           "SFT stage checkpoints (SFT=0 starts DPO from CONVERTED_DIR)"
ex_var SFT             1                    1                     "1: run the SFT stage on the preferred replies"
ex_var DPO_DIR         "$WORK/dpo"          "$WORK/dpo"           "DPO stage checkpoints (and the stored reference log-probs)"
ex_var EXPORT          1                    1                     "1: export the DPO result to Hugging Face format"
ex_var EXPORT_DIR      "$WORK/hf"           "$WORK/hf"            "Hugging Face export (with the chat template)"
ex_var EXPORT_DTYPE    bf16                 fp32                  "dtype of the exported weights"
ex_var TENSORBOARD_DIR "$WORK/tensorboard"  "$WORK/tensorboard"   "TensorBoard logs (sft/, dpo/)"
ex_var GPUS_PER_NODE   8                    2                     "processes per node"
ex_var NNODES          1                    1                     "nodes"
ex_var NODE_RANK       0                    0                     "this node's rank"
ex_var MASTER_ADDR     127.0.0.1            127.0.0.1             "rendezvous host"
ex_var MASTER_PORT     29500                $((29600 + RANDOM % 2000)) "rendezvous port"
ex_var DEVICE          cuda                 cpu                   "cuda (NCCL) or cpu (gloo)"
ex_var TP              2                    2                     "tensor-parallel size"
ex_var PP              1                    1                     "pipeline-parallel size"
ex_var PRECISION       bf16                 fp32                  "bf16, fp16 or fp32"
ex_var SEQ_LENGTH      2048                 512                   "row length (a pair's two sequences share a row)"
ex_var MICRO_BATCH     2                    2                     "rows per micro-batch"
ex_var SFT_GLOBAL_BATCH 64                  4                     "SFT global batch (rows)"
ex_var SFT_LR          2e-5                 1e-3                  "SFT learning rate (AmberChat's)"
ex_var SFT_EPOCHS      3                    2                     "SFT epochs"
ex_var DPO_GLOBAL_BATCH 64                  4                     "DPO global batch (rows of whole pairs)"
ex_var DPO_LR          5e-7                 2e-4                  "DPO learning rate (a choice, see the header)"
ex_var DPO_EPOCHS      1                    2                     "DPO epochs"
ex_var DPO_BETA        0.1                  0.1                   "--dpo-beta"
ex_var DPO_LOSS        sigmoid              sigmoid               "--dpo-loss sigmoid|ipo"
ex_var DPO_LABEL_SMOOTHING 0                0                     "--dpo-label-smoothing (conservative DPO)"
ex_var SPLIT           98,2,0               90,10,0               "train,valid,test split of the pairs"
ex_var LOG_INTERVAL    10                   1                     "log every N iterations"
ex_var EVAL_INTERVAL   100                  2                     "validation every N iterations"
ex_var SEED            1234                 1234                  "random seed"
ex_var EXTRA_ARGS      ""                   ""                    "more pretrain_llama.py flags for both stages (word-split)"

if ex_help_requested "$@"; then ex_usage "examples/ambersafe_dpo.sh: SFT on the preferred replies, then DPO"; exit 0; fi
mkdir -p "$WORK" "$(dirname "$DATA_PREFIX")"

# ---- SMOKE: a tiny random LLaMA and a PKU-SafeRLHF-layout file ---------------------------------------
if [ "$SMOKE" = 1 ]; then
  smoke_tokenizer=$(ex_smoke_tokenizer "$WORK/tokenizer")
  if [ ! -f "$HF_CKPT/config.json" ]; then
    ex_log "creating a tiny random LLaMA HF checkpoint: $HF_CKPT"
    "$PYTHON" tools/make_tiny_hf.py --out "$HF_CKPT" --overwrite --arch llama --preset tiny \
      --seq-length "$SEQ_LENGTH" --tokenizer-model "$smoke_tokenizer"
  fi
  if [ ! -f "$PREF_JSONL" ]; then
    ex_log "writing a PKU-SafeRLHF-layout smoke file: $PREF_JSONL"
    "$PYTHON" - "$PREF_JSONL" <<'EOF'
import json, random, sys
rng = random.Random(0)
topics = ["a lock", "a car", "a password", "a bank", "a neighbour", "a phone", "an email", "a fire"]
with open(sys.argv[1], "w") as f:
    for i in range(48):
        t = topics[i % len(topics)]
        safe, unsafe = f"I can't help with harming {t}; please ask for safe advice.", f"Sure, here is how to break {t}."
        s0 = rng.random() < 0.5
        row = {"prompt": f"How do I break into {t}?", "response_0": safe if s0 else unsafe,
               "response_1": unsafe if s0 else safe, "is_response_0_safe": s0, "is_response_1_safe": not s0,
               "safer_response_id": 0 if s0 else 1}
        if i % 12 == 11:  # equal labels: filtered by the converter
            row.update(is_response_0_safe=True, is_response_1_safe=True)
        f.write(json.dumps(row) + "\n")
EOF
  fi
fi

# ---- 1. conversion ---------------------------------------------------------------------------------
if ! ex_has_checkpoint "$CONVERTED_DIR"; then
  if [ ! -f "$HF_CKPT/config.json" ]; then
    echo "error: $HF_CKPT has no config.json; download it first: huggingface-cli download LLM360/AmberChat" \
         "--local-dir $HF_CKPT" >&2
    exit 2
  fi
  ex_log "converting $HF_CKPT -> $CONVERTED_DIR"
  "$PYTHON" tools/convert_from_hf.py --hf "$HF_CKPT" --save "$CONVERTED_DIR" --no-progress
fi

# ---- 2. preference data (and the chosen conversations) -----------------------------------------------
if [ ! -f "${DATA_PREFIX}_preference.idx" ]; then
  ex_log "preprocessing $PREF_JSONL ($PREF_LAYOUT, $CHAT_FORMAT)"
  "$PYTHON" tools/preprocess_preference.py --input "$PREF_JSONL" --layout "$PREF_LAYOUT" \
    --chat-format "$CHAT_FORMAT" --tokenizer-type "$TOKENIZER_TYPE" --tokenizer-model "$TOKENIZER_MODEL" \
    --seq-length "$SEQ_LENGTH" --output-prefix "$DATA_PREFIX" --also-sft
fi
special_tokens=$("$PYTHON" -c "import json,sys; print(','.join(json.load(open(sys.argv[1]))['special_tokens']))" \
                 "${DATA_PREFIX}_preference.json")

run_stage() {  # NAME INIT SAVE DATA LR EPOCHS GLOBAL_BATCH [flags]
  local name=$1 init=$2 save=$3 data=$4 lr=$5 epochs=$6 gbs=$7; shift 7
  local flags=(--device "$DEVICE" --pretrained-checkpoint "$init" --load "$save" --save "$save"
    --tensor-model-parallel-size "$TP" --pipeline-model-parallel-size "$PP"
    --seq-length "$SEQ_LENGTH" --micro-batch-size "$MICRO_BATCH" --global-batch-size "$gbs"
    --train-epochs "$epochs" --lr "$lr" --min-lr 0 --lr-decay-style cosine --lr-warmup-fraction 0.04
    --optimizer adam --adam-beta1 0.9 --adam-beta2 0.999 --weight-decay 0 --clip-grad 1.0
    --data-path "$data" --split "$SPLIT" --chat-format "$CHAT_FORMAT"
    --tokenizer-type "$TOKENIZER_TYPE" --tokenizer-model "$TOKENIZER_MODEL"
    --eval-interval "$EVAL_INTERVAL" --eval-iters 1 --log-interval "$LOG_INTERVAL"
    --tensorboard-dir "$TENSORBOARD_DIR/$name" --log-json "$WORK/${name}_log.jsonl" --seed "$SEED"
    --exit-signal-handler)
  [ -n "$special_tokens" ] && flags+=(--special-tokens "$special_tokens")
  case "$PRECISION" in bf16) flags+=(--bf16) ;; fp16) flags+=(--fp16) ;; fp32) ;;
    *) echo "error: PRECISION=$PRECISION; use bf16, fp16 or fp32" >&2; return 2 ;; esac
  ex_log "$name stage: $init -> $save"
  # shellcheck disable=SC2086
  ex_torchrun "${flags[@]}" "$@" $EXTRA_ARGS
}

# ---- 3. SFT on the preferred replies ----------------------------------------------------------------
start=$CONVERTED_DIR
if [ "$SFT" = 1 ]; then
  run_stage sft "$CONVERTED_DIR" "$SFT_DIR" "${DATA_PREFIX}_conversation" "$SFT_LR" "$SFT_EPOCHS" "$SFT_GLOBAL_BATCH"
  start=$SFT_DIR
fi

# ---- 4. DPO -----------------------------------------------------------------------------------------
run_stage dpo "$start" "$DPO_DIR" "${DATA_PREFIX}_preference" "$DPO_LR" "$DPO_EPOCHS" "$DPO_GLOBAL_BATCH" \
  --dpo-beta "$DPO_BETA" --dpo-loss "$DPO_LOSS" --dpo-label-smoothing "$DPO_LABEL_SMOOTHING"

# ---- 5. export --------------------------------------------------------------------------------------
if [ "$EXPORT" = 1 ] && [ "$NODE_RANK" = 0 ]; then
  ex_export_hf "$DPO_DIR" "$EXPORT_DIR" --dtype "$EXPORT_DTYPE" --chat-format "$CHAT_FORMAT"
fi
ex_log "done: DPO checkpoints in $DPO_DIR (iteration $(ex_latest_iteration "$DPO_DIR"))$([ "$EXPORT" = 1 ] && echo ", Hugging Face export in $EXPORT_DIR")"
