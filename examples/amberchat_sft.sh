#!/usr/bin/env bash
# AmberChat: LLM360 Amber (LLaMA-7B shape) fine-tuned on conversations with AmberChat's recipe, from and to
# Hugging Face weights (examples/lib/sft.sh has the steps; docs/sft.md the details).
#
#   1. convert HF_CKPT (LLM360/Amber, LLaMA layout) to a Megatron checkpoint (or start from INIT_CKPT);
#   2. preprocess SFT_INPUT (AmberChat's data: WizardLM evol_instruct V2 143k rows + ShareGPT Vicuna
#      unfiltered 90k rows; ShareGPT/Alpaca/messages layouts are detected per line) in the amberchat format
#      (FastChat's "### Human:" / "### Assistant:" template with its system line; replies end with </s>);
#   3. fine-tune with AmberChat's hyperparameters (LLM360/AmberChat card): lr 2e-5, 3 epochs, warmup ratio
#      0.04, max length 2048, per-device batch 2 with gradient accumulation 16. The card's run was FastChat
#      (FSDP: every GPU a data-parallel rank); here a data-parallel rank is TP x PP GPUs, so GLOBAL_BATCH =
#      MICRO_BATCH x GRAD_ACCUM x data-parallel size (2 x 16 x 4 = 128 at TP2 on 8 GPUs; 32N on N GPUs of
#      the card's setup). Cosine decay to 0 and weight decay 0 are FastChat's training command's (the card
#      does not list them). Conversations are packed into 2048-token rows (SFT_PACKING=pad: one per row);
#   4. export for chat to EXPORT_DIR: LLaMA layout, tokenizer, chat_template, eos = </s>.
# Restarting the script resumes from SAVE_DIR's latest checkpoint.
#
# Get the inputs (once):
#   huggingface-cli download LLM360/Amber --local-dir $WORK/Amber
#   (the conversations as JSONL or JSON; e.g. ShareGPT_V3_unfiltered_cleaned_split.json, WizardLM_evol_instruct_V2_143k.json)
#
# One node:   SFT_INPUT="sharegpt.json wizardlm.json" bash examples/amberchat_sft.sh
# N nodes:    NNODES=N NODE_RANK=i MASTER_ADDR=host0 ... bash examples/amberchat_sft.sh   (on each node), or
#             sbatch --nodes N examples/slurm_multinode.sbatch examples/amberchat_sft.sh
# CPU smoke:  SMOKE=1 bash examples/amberchat_sft.sh   (tiny random LLaMA with a 490-piece tokenizer, the bundled
#             data/sft conversations, one process: conversion, preprocessing, SFT, export for chat)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib/sft.sh"
HF_REPO=LLM360/Amber SMOKE_ARCH=llama SMOKE_PRESET=tiny SMOKE_TOKENIZER=sp

ex_var WORK            amberchat           "$EX_REPO/smoke_out/amberchat_sft" "work directory (default parent of the paths below)"
ex_var HF_CKPT         "$WORK/Amber"       "$WORK/hf_base"       "base model, Hugging Face LLaMA layout (SMOKE: created)"
ex_var CONVERT_ARGS    ""                  ""                    "more tools/convert_from_hf.py flags"
ex_var SFT_INPUT       "$WORK/sharegpt.json $WORK/wizardlm.json" "data/sft/smoke_conversations.jsonl" "conversation files (word-split)"
ex_var CHAT_FORMAT     amberchat           amberchat             "chat format of the data and the export"
ex_var TOKENIZER_TYPE  SentencePieceTokenizer SentencePieceTokenizer "tokenizer class"
ex_var TOKENIZER_MODEL "$WORK/converted/tokenizer/tokenizer.model" "$WORK/converted/tokenizer/tokenizer.model" "tokenizer (the converter copies HF_CKPT's to CONVERTED_DIR/tokenizer)"
ex_var SPECIAL_TOKENS  ""                  ""                    "--special-tokens before the format's own"
ex_var VOCAB_PAD_TO    ""                  ""                    "--vocab-pad-to (empty: the tokenizer's rule)"
ex_var GPUS_PER_NODE   8                   1                     "processes per node"
ex_var TP              2                   1                     "tensor-parallel size"
ex_var PP              1                   1                     "pipeline-parallel size"
ex_var SEQ_LENGTH      2048                256                   "row length (AmberChat's max length)"
ex_var MICRO_BATCH     2                   4                     "micro-batch size per data-parallel rank (the card's per-device batch)"
ex_var GRAD_ACCUM      16                  2                     "gradient accumulation steps (the card's)"
ex_var GLOBAL_BATCH    $((MICRO_BATCH * GRAD_ACCUM * GPUS_PER_NODE * ${NNODES:-1} / (TP * PP))) \
                       $((MICRO_BATCH * GRAD_ACCUM * GPUS_PER_NODE / (TP * PP))) "global batch (rows) = MICRO_BATCH x GRAD_ACCUM x data-parallel size"
ex_var LR              2e-5                1e-3                  "peak learning rate (the card's)"
ex_var MIN_LR          0                   0                     "final learning rate"
ex_var LR_DECAY_STYLE  cosine              cosine                "learning-rate decay"
ex_var WARMUP_FRACTION 0.04                0.04                  "warmup share of the run (the card's warmup ratio)"
ex_var TRAIN_EPOCHS    3                   1                     "epochs (the card's); empty: TRAIN_ITERS"
ex_var TRAIN_ITERS     ""                  ""                    "iterations, when TRAIN_EPOCHS is empty"
ex_var WEIGHT_DECAY    0                   0                     "AdamW weight decay"
ex_var ADAM_BETA2      0.999               0.999                 "AdamW beta2 (transformers' default, as FastChat)"
ex_var ADAM_EPS        1e-8                1e-8                  "AdamW eps"
ex_var CLIP_GRAD       1.0                 1.0                   "gradient clipping"
ex_sft_vars

if ex_help_requested "$@"; then ex_usage "examples/amberchat_sft.sh: AmberChat supervised fine-tuning from Amber"; exit 0; fi
ex_sft_run
