"""Downstream multiple-choice evaluation (issue 17): local JSONL tasks (tasks.py), converters from
lm-evaluation-harness's document formats (converters.py), log-likelihood scoring with the parallel model at
any TP/PP/DP (scoring.py), the in-loop hook of pretrain_llama.py (in_loop.py) and the weights of one saved
iteration for tools/eval_checkpoints.py (checkpoints.py). docs/evaluation.md describes the format and tools."""
