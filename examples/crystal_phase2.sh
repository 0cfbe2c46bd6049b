#!/usr/bin/env bash
# LLM360 Crystal, phase 2: continue a Crystal-architecture checkpoint (phase-1 weights, Hugging Face
# CrystalCoder layout) with phase 2's recipe, then export the result back to Hugging Face format.
#
#   1. convert HF_CKPT to a Megatron checkpoint in CONVERTED_DIR (skipped when it is there already);
#   2. train: μP values from the checkpoint (crystal-7b: embeddings x14.6, logits x2.22/m, attention / d),
#      base LR 0.0087825 after 86 warmup iterations, linear decay to 1.3679e-4 over 214,301 iterations,
#      seq 2048, global batch 2048, the phase-2 mix (SlimPajama 0.372 + StarCoder 0.628 with FIM 0.9 /
#      SPM 0.5), TP2 x PP4, sequence parallel, bf16, distributed optimizer, AdamW (0.9, 0.95) eps 1e-9,
#      weight decay 0.1, clip 1.0. Restarting the script resumes from SAVE_DIR's latest checkpoint;
#   3. export SAVE_DIR's latest checkpoint to EXPORT_DIR (EXPORT=0 skips it).
#
# One node:   bash examples/crystal_phase2.sh
# N nodes:    NNODES=N NODE_RANK=i MASTER_ADDR=host0 bash examples/crystal_phase2.sh   (on each node), or
#             sbatch --nodes N examples/slurm_multinode.sbatch examples/crystal_phase2.sh
# CPU smoke:  SMOKE=1 bash examples/crystal_phase2.sh   (tiny Crystal-shaped model, bundled corpus, TP2 on 2
#             processes: tokenizer, random HF checkpoint, preprocessing, conversion, train, resume, export)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

ex_var WORK            crystal_phase2      "$EX_REPO/smoke_out/crystal_phase2" "work directory (default parent of the paths below)"
ex_var HF_CKPT         "$WORK/hf_phase1"   "$WORK/hf_phase1"     "phase-1 Hugging Face checkpoint (CrystalCoder layout; SMOKE: created)"
ex_var CONVERTED_DIR   "$WORK/converted"   "$WORK/converted"     "HF_CKPT converted to Megatron format (made once)"
ex_var SAVE_DIR        "$WORK/checkpoints" "$WORK/checkpoints"   "training checkpoints; resumed from when it has one"
ex_var EXPORT          1                   1                     "1: export the final checkpoint to Hugging Face format"
ex_var EXPORT_DIR      "$WORK/hf_phase2"   "$WORK/hf_phase2"     "Hugging Face export of the result"
ex_var EXPORT_DTYPE    bf16                fp32                  "dtype of the exported weights"
ex_var TENSORBOARD_DIR "$WORK/tensorboard" "$WORK/tensorboard"   "TensorBoard logs"
ex_var LOG_JSON        "$WORK/train_log.jsonl" "$WORK/train_log.jsonl" "per-iteration JSON log"
ex_var DATA_MIX        data/mixes/crystal_phase2.json "$WORK/smoke_mix.json" "datamix JSON (--data-mix; SMOKE: generated)"
ex_var DATA_ROOT       /data               "$WORK/data"          "root of the mix's relative prefixes"
ex_var DATA_CACHE      "$WORK/data_cache"  "$WORK/data_cache"    "megatron-core dataset index cache"
ex_var SPLIT           998,2,0             95,5,0                "train,valid,test split of every source"
ex_var TOKENIZER_TYPE  SentencePieceTokenizer SentencePieceTokenizer "tokenizer class"
ex_var TOKENIZER_MODEL "$HF_CKPT/tokenizer.model" "$WORK/tokenizer/smoke.model" "tokenizer model (LLaMA's for Crystal)"
ex_var SPECIAL_TOKENS  crystal             crystal               "special tokens added after the base vocabulary"
ex_var GPUS_PER_NODE   8                   2                     "processes per node"
ex_var NNODES          1                   1                     "nodes (torchrun --nnodes)"
ex_var NODE_RANK       0                   0                     "this node's rank (torchrun --node-rank)"
ex_var MASTER_ADDR     127.0.0.1           127.0.0.1             "rendezvous host (node 0)"
ex_var MASTER_PORT     29500               $((29600 + RANDOM % 2000)) "rendezvous port"
ex_var DEVICE          cuda                cpu                   "cuda (NCCL) or cpu (gloo)"
ex_var TP              2                   2                     "tensor-parallel size"
ex_var PP              4                   1                     "pipeline-parallel size"
ex_var SEQUENCE_PARALLEL 1                 1                     "1: --sequence-parallel (needs TP > 1)"
ex_var DISTRIBUTED_OPTIMIZER 1             1                     "1: --use-distributed-optimizer"
ex_var PRECISION       bf16                bf16                  "bf16, fp16 or fp32"
ex_var SEQ_LENGTH      2048                64                    "sequence length"
ex_var MICRO_BATCH     1                   2                     "micro-batch size per process"
ex_var GLOBAL_BATCH    2048                8                     "global batch size (sequences)"
ex_var LR              0.0087825           0.0087825             "peak (base-width μP) learning rate"
ex_var MIN_LR          1.3679e-4           1.3679e-4             "final learning rate"
ex_var WARMUP_ITERS    86                  2                     "warmup iterations"
ex_var DECAY_ITERS     214301              4                     "linear-decay iterations after warmup"
ex_var TRAIN_ITERS     $((WARMUP_ITERS + DECAY_ITERS)) $((WARMUP_ITERS + DECAY_ITERS)) "total iterations"
ex_var SMOKE_FIRST_ITERS 3                 3                     "SMOKE: the first run stops here, the second resumes"
ex_var SAVE_INTERVAL   1000                3                     "checkpoint every N iterations (and at the end)"
ex_var EVAL_INTERVAL   2000                3                     "validation every N iterations"
ex_var EVAL_ITERS      10                  1                     "validation iterations"
ex_var LOG_INTERVAL    10                  1                     "log every N iterations"
ex_var SEED            1234                1234                  "random seed (data order, FIM)"
ex_var EXTRA_ARGS      ""                  ""                    "more pretrain_llama.py flags (word-split)"

if ex_help_requested "$@"; then ex_usage "examples/crystal_phase2.sh: Crystal phase-2 continued pretraining"; exit 0; fi
mkdir -p "$WORK"
export DATA_ROOT

# ---- SMOKE: everything the real run gets from outside, made from the bundled corpus ----------------
if [ "$SMOKE" = 1 ]; then
  TOKENIZER_MODEL=$(ex_smoke_tokenizer "$(dirname "$TOKENIZER_MODEL")")
  pids=()
  if [ ! -f "$HF_CKPT/config.json" ]; then
    ex_log "creating a tiny random Crystal-shaped HF checkpoint (phase-1 stand-in): $HF_CKPT"
    "$PYTHON" tools/make_tiny_hf.py --out "$HF_CKPT" --overwrite --arch crystalcoder --preset tiny-crystal \
      --seq-length "$SEQ_LENGTH" --tokenizer-model "$TOKENIZER_MODEL" --special-tokens "$SPECIAL_TOKENS" &
    pids+=($!)
  fi
  ex_smoke_preprocess "$DATA_ROOT" "$TOKENIZER_MODEL" "$SPECIAL_TOKENS"
  for pid in "${pids[@]}"; do wait "$pid"; done
  cat > "$DATA_MIX" <<EOF
{"comment": "smoke stand-in for data/mixes/crystal_phase2.json: prose plus code with phase 2's FIM rates",
 "data_root": "\$DATA_ROOT",
 "sources": [
   {"name": "english", "prefix": "english_text_document", "weight": 0.372},
   {"name": "code", "prefix": "code_text_document", "weight": 0.628, "fim_rate": 0.9, "fim_spm_rate": 0.5}]}
EOF
fi

# ---- 1. conversion ---------------------------------------------------------------------------------
if ! ex_has_checkpoint "$SAVE_DIR" && ! ex_has_checkpoint "$CONVERTED_DIR"; then
  if [ "$NODE_RANK" = 0 ]; then
    ex_log "converting $HF_CKPT -> $CONVERTED_DIR"
    "$PYTHON" tools/convert_from_hf.py --hf "$HF_CKPT" --save "$CONVERTED_DIR" --model-format crystalcoder \
      --make-vocab-size-divisible-by 32 --no-progress
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
    --lr-decay-style linear --lr-decay-iters "$((WARMUP_ITERS + DECAY_ITERS))"
    --optimizer adam --adam-beta1 0.9 --adam-beta2 0.95 --adam-eps 1e-9 --weight-decay 0.1 --clip-grad 1.0
    --data-mix "$DATA_MIX" --split "$SPLIT" --data-cache-path "$DATA_CACHE"
    --tokenizer-type "$TOKENIZER_TYPE" --tokenizer-model "$TOKENIZER_MODEL" --special-tokens "$SPECIAL_TOKENS"
    --save-interval "$SAVE_INTERVAL" --eval-interval "$EVAL_INTERVAL" --eval-iters "$EVAL_ITERS"
    --log-interval "$LOG_INTERVAL" --tensorboard-dir "$TENSORBOARD_DIR" --log-json "$LOG_JSON" --seed "$SEED"
    --exit-signal-handler)  # preemption or scancel: finish the step, save, exit 0
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
