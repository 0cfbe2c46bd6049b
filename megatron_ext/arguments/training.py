"""Batch, schedule, optimizer, precision and recomputation flags."""

import argparse


def add_training_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("batch")
    g.add_argument("--micro-batch-size", type=int, default=1)
    g.add_argument("--global-batch-size", type=int, default=None, help="default: micro batch x DP")
    g.add_argument("--seq-length", type=int)
    g.add_argument("--train-iters", type=int)
    g.add_argument("--train-samples", type=int)

    g = parser.add_argument_group("learning-rate schedule")
    g.add_argument("--lr", type=float, default=3e-4)
    g.add_argument("--min-lr", type=float, default=0.0)
    g.add_argument("--lr-decay-style", choices=["cosine", "linear", "constant"], default="cosine")
    g.add_argument("--lr-warmup-iters", type=int, default=0, help="linear warm-up length in iterations")
    g.add_argument("--lr-warmup-fraction", type=float, default=None,
                   help="warm-up as a fraction of the decay length (--lr-decay-iters, or --train-samples "
                        "for sample-based runs), as Megatron-LM")
    g.add_argument("--lr-warmup-samples", type=int, default=0,
                   help="warm-up length in samples; with --train-samples (Megatron-LM's rule)")
    g.add_argument("--lr-warmup-init", type=float, default=0.0)
    g.add_argument("--lr-decay-iters", type=int, default=None, help="default: --train-iters")

    g = parser.add_argument_group("optimizer")
    g.add_argument("--optimizer", choices=["adam"], default="adam")
    g.add_argument("--weight-decay", type=float, default=0.1)
    g.add_argument("--adam-beta1", type=float, default=0.9)
    g.add_argument("--adam-beta2", type=float, default=0.95)
    g.add_argument("--adam-eps", type=float, default=1e-8)
    g.add_argument("--clip-grad", type=float, default=1.0)

    g = parser.add_argument_group("precision and memory")
    g.add_argument("--bf16", action="store_true")
    g.add_argument("--fp16", action="store_true")
    g.add_argument("--initial-loss-scale", type=float, default=2.0**16)
    g.add_argument("--recompute-granularity", choices=["full", "selective"], default=None,
                   help="activation recomputation: full (whole layers) or selective (core attention)")
    g.add_argument("--recompute-method", choices=["uniform", "block"], default=None,
                   help="with --recompute-granularity full: how layers are grouped (default uniform)")
    g.add_argument("--recompute-num-layers", type=int, default=None,
                   help="with --recompute-granularity full: layers per recompute group (default 1)")
    g.add_argument("--recompute-activations", action="store_true",
                   help="selective recomputation, as in Megatron-LM: overrides --recompute-granularity full")
    g.add_argument("--seed", type=int, default=1234)

    g = parser.add_argument_group("stopping early")
    g.add_argument("--exit-signal-handler", action="store_true",
                   help="on SIGTERM/SIGINT (Slurm's preemption, Ctrl-C) finish the step, save and exit 0")
    g.add_argument("--exit-interval", type=int, default=None,
                   help="save and exit at the first iteration divisible by this")
    g.add_argument("--exit-duration-in-mins", type=float, default=None,
                   help="save and exit once the run has trained this long (leave time for the save)")
    g.add_argument("--check-for-nan-in-loss-and-grad", action=argparse.BooleanOptionalAction, default=True,
                   help="stop, without saving, when the loss or gradient norm is NaN/Inf (default: on)")
