#!/usr/bin/env bash
# mamba-gpt-3b: OpenLLaMA-3B fine-tuned on instructions in mamba-gpt's format, from and to Hugging Face
# weights (examples/lib/sft.sh has the steps; docs/sft.md the details).
#
#   1. convert HF_CKPT (openlm-research/open_llama_3b, LLaMA layout) to a Megatron checkpoint, or start from
#      INIT_CKPT (e.g. examples/openllama_3b.sh's SAVE_DIR);
#   2. preprocess SFT_INPUT in the mamba-gpt format (`<|prompt|>{prompt}</s><|answer|>{reply}</s>`, the card's
#      prompt; its markers are plain text to OpenLLaMA's tokenizer, the reply ends at </s>);
#   3. fine-tune. The mamba-gpt-3b card publishes the base model, the prompt and lm-eval results, no training
#      hyperparameters: the values here are this recipe's CHOICE, AmberChat's FastChat-style ones (lr 2e-5,
#      3 epochs, warmup 4%, cosine to 0, weight decay 0, max length 2048), global batch 128, TP2 x DP4 on 8
#      GPUs (32 heads, 26 layers), sequence parallel, bf16, distributed optimizer;
#   4. export for chat to EXPORT_DIR: LLaMA layout, tokenizer, chat_template, eos </s>.
# Restarting the script resumes from SAVE_DIR's latest checkpoint.
#
# Get the inputs (once):
#   huggingface-cli download openlm-research/open_llama_3b --local-dir $WORK/open_llama_3b
#
# One node:   SFT_INPUT=instructions.jsonl bash examples/mamba_gpt_sft.sh
# N nodes:    NNODES=N NODE_RANK=i MASTER_ADDR=host0 ... bash examples/mamba_gpt_sft.sh   (on each node), or
#             sbatch --nodes N examples/slurm_multinode.sbatch examples/mamba_gpt_sft.sh
# CPU smoke:  SMOKE=1 bash examples/mamba_gpt_sft.sh   (the demo model's shape, tiny-demo, random, with a 490-piece
#             tokenizer, the bundled data/sft conversations, one process: conversion, preprocessing, SFT,
#             export for chat)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib/sft.sh"
HF_REPO=openlm-research/open_llama_3b SMOKE_ARCH=llama SMOKE_PRESET=${SMOKE_PRESET:-tiny-demo} SMOKE_TOKENIZER=sp

ex_var WORK            mamba_gpt           "$EX_REPO/smoke_out/mamba_gpt_sft" "work directory (default parent of the paths below)"
ex_var HF_CKPT         "$WORK/open_llama_3b" "$WORK/hf_base"     "base model, Hugging Face LLaMA layout (SMOKE: created)"
ex_var CONVERT_ARGS    ""                  ""                    "more tools/convert_from_hf.py flags"
ex_var SFT_INPUT       "$WORK/instructions.jsonl" "data/sft/smoke_conversations.jsonl" "conversation files (word-split)"
ex_var CHAT_FORMAT     mamba-gpt           mamba-gpt             "chat format of the data and the export"
ex_var TOKENIZER_TYPE  SentencePieceTokenizer SentencePieceTokenizer "tokenizer class"
ex_var TOKENIZER_MODEL "$WORK/converted/tokenizer/tokenizer.model" "$WORK/converted/tokenizer/tokenizer.model" "tokenizer (OpenLLaMA's; the converter copies HF_CKPT's to CONVERTED_DIR/tokenizer)"
ex_var SPECIAL_TOKENS  ""                  ""                    "--special-tokens before the format's own"
ex_var VOCAB_PAD_TO    ""                  ""                    "--vocab-pad-to (empty: the tokenizer's rule)"
ex_var GPUS_PER_NODE   8                   1                     "processes per node"
ex_var TP              2                   1                     "tensor-parallel size"
ex_var PP              1                   1                     "pipeline-parallel size"
ex_var SEQ_LENGTH      2048                128                   "row length"
ex_var MICRO_BATCH     4                   4                     "micro-batch size per process"
ex_var GLOBAL_BATCH    128                 8                     "global batch size (rows; a choice)"
ex_var LR              2e-5                1e-3                  "peak learning rate (a choice)"
ex_var MIN_LR          0                   0                     "final learning rate"
ex_var LR_DECAY_STYLE  cosine              cosine                "learning-rate decay"
ex_var WARMUP_FRACTION 0.04                0.04                  "warmup share of the run"
ex_var TRAIN_EPOCHS    3                   1                     "epochs; empty: TRAIN_ITERS"
ex_var TRAIN_ITERS     ""                  ""                    "iterations, when TRAIN_EPOCHS is empty"
ex_var WEIGHT_DECAY    0                   0                     "AdamW weight decay"
ex_var ADAM_BETA2      0.999               0.999                 "AdamW beta2"
ex_var ADAM_EPS        1e-8                1e-8                  "AdamW eps"
ex_var CLIP_GRAD       1.0                 1.0                   "gradient clipping"
ex_sft_vars

if ex_help_requested "$@"; then ex_usage "examples/mamba_gpt_sft.sh: mamba-gpt-3b instruction tuning from OpenLLaMA-3B"; exit 0; fi
ex_sft_run
