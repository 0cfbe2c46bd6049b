#!/usr/bin/env bash
# DCLM-1B-IT: DCLM-1B (open_lm layout, GPT-NeoX-20B tokenizer) instruction-tuned with DCLM-1B-IT's recipe, from
# and to Hugging Face weights in open_lm's layout (examples/lib/sft.sh has the steps; docs/sft.md the details).
#
#   1. convert HF_CKPT (TRI-ML/DCLM-1B) to a Megatron checkpoint, or start from INIT_CKPT (e.g.
#      examples/dclm_1b.sh's SAVE_DIR); the tokenizer files are copied to CONVERTED_DIR/tokenizer;
#   2. preprocess SFT_INPUT in the dclm-it format (`Below is an instruction that describes a task.\n\nWrite a
#      response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:`,
#      the reply ending at <|endoftext|>, GPT-NeoX's own token: no vocabulary growth);
#   3. fine-tune with DCLM-1B-IT's numbers (its card): AdamW, lr 2e-5 peak, weight decay 0.1, batch 2048
#      sequences of 2048 tokens, 10 epochs (8.4B tokens: about 200 steps an epoch). The schedule's shape is
#      not on the card: warmup 2% then cosine to 0, AdamW (0.9, 0.95) eps 1e-8 and clip 1.0 are this recipe's
#      CHOICE. Layout as examples/dclm_1b.sh: TP1 x PP1 x DP8, micro-batch 4 (64 accumulation steps);
#   4. export for chat to EXPORT_DIR: open_lm's layout, tokenizer.json, chat_template, eos <|endoftext|>.
# Restarting the script resumes from SAVE_DIR's latest checkpoint.
#
# Get the inputs (once):
#   huggingface-cli download TRI-ML/DCLM-1B --local-dir $WORK/DCLM-1B
#   (instruction data as JSONL: Alpaca {"instruction", "input", "output"}, ShareGPT or messages records)
#
# One node:   SFT_INPUT=dclm_it_mix.jsonl bash examples/dclm_it_sft.sh
# N nodes:    NNODES=N NODE_RANK=i MASTER_ADDR=host0 ... bash examples/dclm_it_sft.sh   (on each node), or
#             sbatch --nodes N examples/slurm_multinode.sbatch examples/dclm_it_sft.sh
# CPU smoke:  SMOKE=1 bash examples/dclm_it_sft.sh   (tiny random DCLM-architecture model with a 384-token
#             GPT-NeoX-style BPE padded to 512 rows, the bundled data/sft conversations, one process:
#             conversion, preprocessing, SFT, export for chat in open_lm's layout)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib/sft.sh"
HF_REPO=TRI-ML/DCLM-1B SMOKE_ARCH=openlm SMOKE_PRESET=tiny-dclm SMOKE_TOKENIZER=neox

ex_var WORK            dclm_it             "$EX_REPO/smoke_out/dclm_it_sft" "work directory (default parent of the paths below)"
ex_var HF_CKPT         "$WORK/DCLM-1B"     "$WORK/hf_base"       "base model, open_lm HF layout (SMOKE: created)"
ex_var CONVERT_ARGS    ""                  ""                    "more tools/convert_from_hf.py flags (open_lm's layout is detected)"
ex_var SFT_INPUT       "$WORK/instructions.jsonl" "data/sft/smoke_conversations.jsonl" "conversation files (word-split)"
ex_var CHAT_FORMAT     dclm-it             dclm-it               "chat format of the data and the export"
ex_var TOKENIZER_TYPE  HuggingFaceTokenizer HuggingFaceTokenizer "tokenizer class"
ex_var TOKENIZER_MODEL "$WORK/converted/tokenizer" "$WORK/converted/tokenizer" "tokenizer directory (the converter copies HF_CKPT's tokenizer.json there)"
ex_var SPECIAL_TOKENS  ""                  ""                    "--special-tokens before the format's own"
ex_var VOCAB_PAD_TO    50432               512                   "--vocab-pad-to: DCLM-1B's 50432 rows (SMOKE: 384 ids to 512)"
ex_var GPUS_PER_NODE   8                   1                     "processes per node"
ex_var TP              1                   1                     "tensor-parallel size"
ex_var PP              1                   1                     "pipeline-parallel size"
ex_var SEQ_LENGTH      2048                128                   "row length (the card's)"
ex_var MICRO_BATCH     4                   4                     "micro-batch size per process"
ex_var GLOBAL_BATCH    2048                8                     "global batch size (rows; the card's)"
ex_var LR              2e-5                1e-3                  "peak learning rate (the card's)"
ex_var MIN_LR          0                   0                     "final learning rate (a choice)"
ex_var LR_DECAY_STYLE  cosine              cosine                "learning-rate decay (a choice)"
ex_var WARMUP_FRACTION 0.02                0.02                  "warmup share of the run (a choice)"
ex_var TRAIN_EPOCHS    10                  1                     "epochs (the card's); empty: TRAIN_ITERS"
ex_var TRAIN_ITERS     ""                  ""                    "iterations, when TRAIN_EPOCHS is empty"
ex_var WEIGHT_DECAY    0.1                 0.1                   "AdamW weight decay (the card's)"
ex_var ADAM_BETA2      0.95                0.95                  "AdamW beta2"
ex_var ADAM_EPS        1e-8                1e-8                  "AdamW eps"
ex_var CLIP_GRAD       1.0                 1.0                   "gradient clipping"
ex_sft_vars

if ex_help_requested "$@"; then ex_usage "examples/dclm_it_sft.sh: DCLM-1B-IT instruction tuning from DCLM-1B"; exit 0; fi
ex_sft_run
