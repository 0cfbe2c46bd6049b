"""Logging and evaluation flags."""

import argparse


def add_logging_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("logging and evaluation")
    g.add_argument("--log-interval", type=int, default=10,
                   help="print (and write to TensorBoard) every this many iterations")
    g.add_argument("--tensorboard-dir", default=None,
                   help="write TensorBoard scalars and the run's arguments here")
    g.add_argument("--eval-interval", type=int, default=None,
                   help="validate every this many iterations, and at the end (default: no validation)")
    g.add_argument("--eval-iters", type=int, default=10,
                   help="validation batches (of --global-batch-size) per evaluation")
    # Downstream multiple-choice tasks (megatron_ext/evaluation, docs/evaluation.md).
    g.add_argument("--eval-tasks", nargs="+", default=None, metavar="FILE",
                   help="multiple-choice task files (JSONL: context, choices, gold; tools/convert_eval_tasks.py "
                        "writes them) scored at --eval-interval: acc and acc_norm per task, as "
                        "lm-evaluation-harness computes them")
    g.add_argument("--eval-tasks-limit", type=int, default=None, metavar="N",
                   help="score only the first N documents of each --eval-tasks file (default: all)")
    g.add_argument("--peak-tflops", type=float, default=None,
                   help="per-device dense peak TFLOP/s for MFU; known for H100/A100/H200")
    g.add_argument("--log-json", default=None, help="also write each logged iteration as JSON lines here")
    g.add_argument("--log-throughput", action="store_true",
                   help="accepted for Megatron-LM scripts: throughput (tokens/s, TFLOP/s, MFU) is always logged")
    g.add_argument("--timing-log-level", type=int, choices=[0, 1, 2], default=0,
                   help="per-phase times on a line after each iteration line and in TensorBoard (NAME-time): "
                        "1: forward-backward, optimizer, evaluate, save-checkpoint; 2: also batch-generator. "
                        "Synchronises the GPU around each phase; 0 times nothing")
    g.add_argument("--wandb-project", default=None,
                   help="also log the TensorBoard scalars to this Weights & Biases project (needs wandb)")
    g.add_argument("--wandb-exp-name", default=None, help="W&B run name")
    g.add_argument("--wandb-save-dir", default=None, help="W&B run directory (default: wandb/ under --save)")
