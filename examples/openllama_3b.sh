#!/usr/bin/env bash
# OpenLLaMA-3B shape (openllama-3b preset: hidden 3200, 26 layers, 32 heads of 100, FFN 8640, vocab 32000)
# pretrained from scratch with a LLaMA-style recipe, then exported to Hugging Face (LLaMA) format.
#
#   AdamW lr 3e-4, betas (0.9, 0.95), eps 1e-8, weight decay 0.1, clip 1.0, bf16; 2000 warmup iterations
#   then cosine to 3e-5; global batch 2048 x seq 2048 (~4.2M tokens/step) for 238,419 iterations (~1T
#   tokens, as OpenLLaMA). Schedule values beyond the shape are LLaMA's published ones, not read from
#   OpenLLaMA's logs. Data: DATA_PATH (RedPajama-style prefixes) or DATA_MIX. TP2 x PP1 x DP4 on 8 GPUs
#   per node (32 heads, 26 layers), sequence parallel, distributed optimizer. Restarting resumes from
#   SAVE_DIR; INIT_HF=dir (e.g. openlm-research/open_llama_3b) continues from a LLaMA HF checkpoint.
#
# One node:   bash examples/openllama_3b.sh
# N nodes:    NNODES=N NODE_RANK=i MASTER_ADDR=host0 bash examples/openllama_3b.sh   (on each node), or
#             sbatch --nodes N examples/slurm_multinode.sbatch examples/openllama_3b.sh
# CPU smoke:  SMOKE=1 bash examples/openllama_3b.sh   (tiny LLaMA, bundled corpus as a 0.5/0.5 --data-path blend, PP2 on 2 processes: train, resume, export)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib/llama_pretrain.sh"

PRESET_DEFAULT=openllama-3b
#             NAME        LR    MIN_LR WARMUP DECAY  ITERS  GBS  TP PP DATA_MIX DATA_PATH
ex_llama_vars openllama_3b 3e-4 3e-5   2000   cosine 238419 2048 2  1  ""       "\$DATA_ROOT/redpajama_text_document"
if ex_help_requested "$@"; then ex_usage "examples/openllama_3b.sh: OpenLLaMA-3B pretraining"; exit 0; fi
ex_llama_run
