"""Evaluate every saved iteration of a run: held-out loss and downstream tasks, as a CSV and a PNG of the curves.

    torchrun --nproc-per-node 2 tools/eval_checkpoints.py --load checkpoints/amber \\
        --eval-tasks tasks/arc_easy.jsonl tasks/hellaswag.jsonl \\
        --data-path data/heldout_text_document --split 0,1,0 --eval-iters 20 \\
        --tensor-model-parallel-size 2

Writes RUN_DIR/eval_checkpoints.csv (one row per iteration: consumed samples, validation_loss, TASK_acc,
TASK_acc_norm, seconds) and eval_checkpoints.png beside it (--csv/--png move them). Iterations already in
the CSV are skipped, so running it again after an interruption, or while the run saves more checkpoints,
evaluates only what is new. Every other flag is pretrain_llama.py's: the model and tokenizer come from the
checkpoint, the layout (TP/PP, DP from the process count) is this launch's, --micro-batch-size and
--global-batch-size size the held-out batches (--eval-iters of them, the same ones for every iteration) and
the tasks' micro-batches. --samples-dir DIR also writes each document's log-likelihoods and predictions.
Without --data-path (or --mock-data, random tokens for tests) only the tasks are scored.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--load", required=True, help="the run's checkpoint directory (its --save)")
    parser.add_argument("--csv", default=None, help="results table (default: LOAD/eval_checkpoints.csv)")
    parser.add_argument("--png", default=None, help="figure of the curves (default: the CSV's name with .png)")
    parser.add_argument("--samples-dir", default=None,
                        help="also write per-document results here: ITER/TASK.jsonl")
    parser.add_argument("--iterations", type=int, nargs="+", default=None,
                        help="evaluate only these saved iterations (default: all)")
    return parser


def _given(flags: list[str], name: str) -> bool:
    return any(a == name or a.startswith(name + "=") for a in flags)


def pretrain_argv(load: str, rest: list[str], saved: dict, world_size: int) -> list[str]:
    """pretrain_llama.py flags for the evaluation: the user's, plus what a run needs and evaluation does not
    choose (one training iteration, validation on, mock data when no --data-path, the checkpoint's precision)."""
    argv = ["--load", load, *rest]
    if not _given(rest, "--data-path") and not _given(rest, "--data-mix"):
        argv.append("--mock-data")
    if not _given(rest, "--train-iters") and not _given(rest, "--train-samples"):
        argv += ["--train-iters", "1"]
    if not _given(rest, "--eval-interval"):
        argv += ["--eval-interval", "1"]
    if not any(_given(rest, f) for f in ("--bf16", "--fp16")):
        argv += ["--bf16"] if saved.get("bf16") else ["--fp16"] if saved.get("fp16") else []
    if not _given(rest, "--micro-batch-size"):
        argv += ["--micro-batch-size", str(saved.get("micro_batch_size", 1))]
    if not _given(rest, "--global-batch-size"):
        tp_pp = int(saved.get("tensor_model_parallel_size", 1)) * int(saved.get("pipeline_model_parallel_size", 1))
        argv += ["--global-batch-size", str(saved.get("global_batch_size", world_size // tp_pp or 1))]
    return argv


def main(argv: list[str] | None = None) -> int:
    args, rest = build_parser().parse_known_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch's ShardedTensor notice, per load
    import torch.distributed as dist

    from megatron_ext.arguments import parse_config
    from megatron_ext.arguments.from_checkpoint import checkpoint_tokenizer_flags
    from megatron_ext.checkpoint.dist import read_checkpoint_args
    from megatron_ext.checkpoint.paths import has_checkpoint
    from megatron_ext.platform import init_distributed
    from megatron_ext.training.pretrain import _quiet_megatron

    _quiet_megatron()

    if not os.path.isdir(args.load) or not has_checkpoint(args.load):
        raise SystemExit(f"error: --load {args.load} holds no checkpoint: pass the --save directory of a "
                         "pretrain_llama.py run")
    _, common = read_checkpoint_args(args.load)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    flags = pretrain_argv(args.load, rest, common.get("args") or {}, world_size)
    # --mock-data (no held-out data) would skip the checkpoint's tokenizer: give it as defaults.
    config = parse_config(flags, world_size=world_size, defaults=checkpoint_tokenizer_flags(args.load))
    platform = init_distributed(config.parallel.device, config.parallel.distributed_timeout_minutes)
    try:
        from megatron_ext.evaluation.checkpoints import evaluate_checkpoints

        csv_path = args.csv or os.path.join(args.load, "eval_checkpoints.csv")
        png_path = args.png or os.path.splitext(csv_path)[0] + ".png"
        heldout = any(_given(rest, flag) for flag in ("--data-path", "--data-mix", "--mock-data"))
        evaluate_checkpoints(config, args.load, csv_path, png_path, args.samples_dir, args.iterations,
                             platform.device, heldout=heldout)
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
