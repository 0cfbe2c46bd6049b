#!/usr/bin/env bash
# LLM360 Amber: LLaMA-7B shape (amber-7b preset) pretrained from scratch with Amber's recipe, then exported
# to Hugging Face (LLaMA) format.
#
#   AdamW lr 3e-4, betas (0.9, 0.95), eps 1e-8, weight decay 0.1, clip 1.0, bf16; 2000 warmup iterations
#   then cosine to 3e-5 over 274,320 iterations; global batch 2240 x seq 2048 (~4.6M tokens/step);
#   Amber's data mix (data/mixes/amber.json: Arxiv, Book, C4, RefinedWeb, StarCoder, StackExchange,
#   Wikipedia, weighted by their token counts; prefixes under DATA_ROOT); TP2 x PP2 x DP2 on 8 GPUs per node,
#   sequence parallel, distributed optimizer. Restarting the script resumes from SAVE_DIR's latest
#   checkpoint. INIT_HF=dir starts from a LLaMA HF checkpoint instead of random weights.
#
# One node:   bash examples/amber_7b.sh
# N nodes:    NNODES=N NODE_RANK=i MASTER_ADDR=host0 bash examples/amber_7b.sh   (on each node), or
#             sbatch --nodes N examples/slurm_multinode.sbatch examples/amber_7b.sh
# CPU smoke:  SMOKE=1 bash examples/amber_7b.sh   (tiny LLaMA, bundled corpus as a two-source token-count mix, PP2 on 2 processes: train, resume, export)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib/llama_pretrain.sh"

PRESET_DEFAULT=amber-7b
#             NAME     LR    MIN_LR WARMUP DECAY  ITERS  GBS  TP PP DATA_MIX                DATA_PATH
ex_llama_vars amber_7b 3e-4  3e-5   2000   cosine 274320 2240 2  2  data/mixes/amber.json   ""
if ex_help_requested "$@"; then ex_usage "examples/amber_7b.sh: LLM360 Amber pretraining"; exit 0; fi
ex_llama_run
