"""Checkpoint flags."""

import argparse


def add_checkpoint_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("checkpointing")
    g.add_argument("--save", default=None, help="directory to save checkpoints to")
    g.add_argument("--load", default=None, help="directory to resume from (latest iteration)")
    g.add_argument("--save-interval", type=int, default=None,
                   help="save every this many iterations (the end of the run is always saved with --save)")
    g.add_argument("--no-load-optim", action="store_true",
                   help="load weights (and data position) but not the optimizer state and LR schedule")
    g.add_argument("--no-load-rng", action="store_true",
                   help="do not restore the RNG states from the checkpoint")
    g.add_argument("--pretrained-checkpoint", default=None, metavar="DIR",
                   help="start from this checkpoint's weights when --load has none (Megatron-LM's flag): "
                        "iteration, optimizer, schedule and data position start fresh; any TP/PP layout; a "
                        "tokenizer with added special tokens grows the embedding (new rows: the mean of the old)")
    g.add_argument("--finetune", action="store_true",
                   help="load weights only and restart iteration count, optimizer and schedule")
    g.add_argument("--ckpt-format", choices=["torch_dist"], default="torch_dist",
                   help="torch_dist (megatron-core's distributed checkpoint; the only format here)")
    g.add_argument("--overwrite", action="store_true",
                   help="allow --save into a directory that holds a checkpoint of a different model")
    g.add_argument("--no-verify-checkpoint", action="store_true",
                   help="load without checking every file against the checksums written at save (faster)")
