#!/usr/bin/env bash
# CrystalChat: LLM360 Crystal's phase-2 checkpoint fine-tuned on instruction data mixed with plain text, with
# CrystalChat's recipe, from and to Hugging Face weights (examples/lib/sft.sh has the steps; docs/sft.md the
# details).
#
#   1. convert HF_CKPT (CrystalCoder_phase2_checkpoint_214387, CrystalCoder layout: μP values, Crystal's 22 code
#      tokens) to a Megatron checkpoint, or start from INIT_CKPT (e.g. examples/crystal_phase2.sh's SAVE_DIR);
#   2. preprocess SFT_INPUT in the crystalchat format (`<s> <|sys_start|> S <|sys_end|> <|im_start|> Q <|im_end|> A
#      ... </s>`; the four chat tokens the format needs are added after Crystal's, growing the embedding rows);
#      the plain text (CrystalChat's general textbooks and programming books, trained on every token) comes
#      as preprocessed prefixes in TEXT_DATA, weighted by the card's token counts: instruction data 621.3M
#      tokens (0.5635), textbooks 85.6M (0.0776), programming books 395.6M (0.3588) of 1.1025B;
#   3. fine-tune with CrystalChat's numbers (LLM360/CrystalChat card): global batch 1024, 1600 iterations, lr 2e-4
#      cosine to 2e-5, sequence 2048 (3.36B tokens, about 3 passes over the 1.1B-token mix). The μP settings come
#      from the checkpoint, and --lr is μP's base-width learning rate as in examples/crystal_phase2.sh (an
#      ASSUMPTION: the card does not say which). Warmup (16 iterations, 1%), AdamW (0.9, 0.95) eps 1e-9, weight
#      decay 0.1, clip 1.0 and the layout (TP2 x PP4, sequence parallel, as phase 2) are this recipe's CHOICE;
#   4. export for chat to EXPORT_DIR: CrystalCoder layout, tokenizer with the chat tokens, chat_template, eos </s>.
# Restarting the script resumes from SAVE_DIR's latest checkpoint.
#
# Get the inputs (once):
#   huggingface-cli download LLM360/CrystalCoder --revision CrystalCoder_phase2_checkpoint_214387 --local-dir $WORK/crystal_phase2
#   python tools/preprocess_data.py --input textbooks.jsonl --output-prefix $DATA_ROOT/textbooks \
#       --tokenizer-type SentencePieceTokenizer --tokenizer-model $WORK/crystal_phase2/tokenizer.model \
#       --special-tokens crystal --append-eod            (and the same for programming_books)
#
# One node:   SFT_INPUT="oasst1.jsonl slimorca.jsonl ..." bash examples/crystalchat_sft.sh
# N nodes:    NNODES=N NODE_RANK=i MASTER_ADDR=host0 ... bash examples/crystalchat_sft.sh   (on each node), or
#             sbatch --nodes N examples/slurm_multinode.sbatch examples/crystalchat_sft.sh
# CPU smoke:  SMOKE=1 bash examples/crystalchat_sft.sh   (tiny random Crystal-shaped model, the bundled data/sft
#             conversations mixed 0.7/0.3 with data/sft/smoke_textbook.jsonl, TP2 on 2 processes: conversion,
#             preprocessing, SFT with added tokens, export for chat)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib/sft.sh"
HF_REPO="LLM360/CrystalCoder --revision CrystalCoder_phase2_checkpoint_214387" SMOKE_ARCH=crystalcoder
SMOKE_PRESET=tiny-crystal SMOKE_TOKENIZER=sp

ex_var WORK            crystalchat         "$EX_REPO/smoke_out/crystalchat_sft" "work directory (default parent of the paths below)"
ex_var HF_CKPT         "$WORK/crystal_phase2" "$WORK/hf_base"    "phase-2 checkpoint, Hugging Face CrystalCoder layout (SMOKE: created)"
ex_var CONVERT_ARGS    "--model-format crystalcoder --make-vocab-size-divisible-by 32" \
                       "--model-format crystalcoder --make-vocab-size-divisible-by 32" "more tools/convert_from_hf.py flags"
ex_var SFT_INPUT       "$WORK/instructions.jsonl" "data/sft/smoke_conversations.jsonl" "conversation files (word-split)"
ex_var CHAT_FORMAT     crystalchat         crystalchat           "chat format of the data and the export"
ex_var TEXT_DATA       "0.0776 \$DATA_ROOT/textbooks_text_document 0.3588 \$DATA_ROOT/programming_books_text_document" "" \
                       "plain-text prefixes mixed in, every token trained: \"weight prefix ...\" (\$DATA_ROOT expands)"
ex_var SFT_WEIGHT      0.5635              0.7                   "blend weight of the conversations"
ex_var TEXT_INPUT      ""                  data/sft/smoke_textbook.jsonl "plain-text JSONL preprocessed here and mixed in (SMOKE: the textbook stand-in)"
ex_var TEXT_WEIGHT     0                   0.3                   "blend weight of TEXT_INPUT"
ex_var TOKENIZER_TYPE  SentencePieceTokenizer SentencePieceTokenizer "tokenizer class"
ex_var TOKENIZER_MODEL "$WORK/converted/tokenizer/tokenizer.model" "$WORK/converted/tokenizer/tokenizer.model" "tokenizer (LLaMA's; the converter copies HF_CKPT's to CONVERTED_DIR/tokenizer)"
ex_var SPECIAL_TOKENS  crystal             crystal               "Crystal's 22 code tokens, before the format's own"
ex_var VOCAB_PAD_TO    ""                  ""                    "--vocab-pad-to (empty: next multiple of 32)"
ex_var GPUS_PER_NODE   8                   2                     "processes per node"
ex_var TP              2                   2                     "tensor-parallel size"
ex_var PP              4                   1                     "pipeline-parallel size"
ex_var SEQ_LENGTH      2048                128                   "row length"
ex_var MICRO_BATCH     1                   4                     "micro-batch size per process"
ex_var GLOBAL_BATCH    1024                8                     "global batch size (rows; the card's)"
ex_var LR              2e-4                2e-3                  "peak learning rate (μP base-width; the card's)"
ex_var MIN_LR          2e-5                2e-4                  "final learning rate (the card's)"
ex_var LR_DECAY_STYLE  cosine              cosine                "learning-rate decay (the card's)"
ex_var WARMUP_FRACTION ""                  ""                    "warmup share of the run (empty: WARMUP_ITERS)"
ex_var WARMUP_ITERS    16                  1                     "warmup iterations (a choice)"
ex_var TRAIN_EPOCHS    ""                  ""                    "epochs (empty: TRAIN_ITERS, as the card counts)"
ex_var TRAIN_ITERS     1600                3                     "iterations (the card's)"
ex_var WEIGHT_DECAY    0.1                 0.1                   "AdamW weight decay"
ex_var ADAM_BETA2      0.95                0.95                  "AdamW beta2"
ex_var ADAM_EPS        1e-9                1e-9                  "AdamW eps"
ex_var CLIP_GRAD       1.0                 1.0                   "gradient clipping"
ex_sft_vars

if ex_help_requested "$@"; then ex_usage "examples/crystalchat_sft.sh: CrystalChat supervised fine-tuning from Crystal phase 2"; exit 0; fi
ex_sft_run
