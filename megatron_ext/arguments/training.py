"""Batch, schedule, optimizer, precision and recomputation flags."""

import argparse


def add_training_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("batch")
    g.add_argument("--micro-batch-size", type=int, default=1,
                   help="sequences per forward/backward on each data-parallel rank")
    g.add_argument("--global-batch-size", type=int, default=None, help="default: micro batch x DP")
    g.add_argument("--seq-length", type=int,
                   help="tokens per sequence (preset: from --model-preset)")
    g.add_argument("--train-iters", type=int,
                   help="training iterations (or give --train-samples)")
    g.add_argument("--train-samples", type=int,
                   help="training samples (sequences); sets the iterations (or give --train-iters)")
    g.add_argument("--train-epochs", type=int, default=None,
                   help="fine-tuning: passes over the conversation data (packed rows of every --data-path source's "
                        "training split, reshuffled each epoch from --seed); sets --train-samples")

    g = parser.add_argument_group("learning-rate schedule")
    g.add_argument("--lr", type=float, default=3e-4,
                   help="peak learning rate")
    g.add_argument("--min-lr", type=float, default=0.0,
                   help="learning rate at the end of the decay")
    g.add_argument("--lr-decay-style", choices=["cosine", "linear", "constant"], default="cosine",
                   help="learning-rate decay after the warm-up")
    g.add_argument("--lr-warmup-iters", type=int, default=0, help="linear warm-up length in iterations")
    g.add_argument("--lr-warmup-fraction", type=float, default=None,
                   help="warm-up as a fraction of the decay length (--lr-decay-iters, or --train-samples "
                        "for sample-based runs), as Megatron-LM")
    g.add_argument("--lr-warmup-samples", type=int, default=0,
                   help="warm-up length in samples; with --train-samples (Megatron-LM's rule)")
    g.add_argument("--lr-warmup-init", type=float, default=0.0,
                   help="learning rate at the start of the warm-up")
    g.add_argument("--lr-decay-iters", type=int, default=None, help="default: --train-iters")
    g.add_argument("--lr-decay-samples", type=int, default=None,
                   help="decay length in samples, with --train-samples (Megatron-LM's rule; default: "
                        "--train-samples)")

    g = parser.add_argument_group("optimizer")
    g.add_argument("--optimizer", choices=["adam"], default="adam",
                   help="Adam (AdamW-style decoupled weight decay, as megatron-core)")
    g.add_argument("--weight-decay", type=float, default=0.1,
                   help="weight decay (not applied to biases and norms)")
    g.add_argument("--adam-beta1", type=float, default=0.9,
                   help="Adam beta1")
    g.add_argument("--adam-beta2", type=float, default=0.95,
                   help="Adam beta2")
    g.add_argument("--adam-eps", type=float, default=1e-8,
                   help="Adam epsilon")
    g.add_argument("--clip-grad", type=float, default=1.0,
                   help="clip the global gradient norm to this (0: off)")

    g = parser.add_argument_group("precision and memory")
    g.add_argument("--bf16", action="store_true",
                   help="bf16 parameters and activations, fp32 main weights in the optimizer")
    g.add_argument("--fp16", action="store_true",
                   help="fp16 with dynamic loss scaling, fp32 main weights in the optimizer")
    g.add_argument("--initial-loss-scale", type=float, default=2.0**16,
                   help="fp16: starting loss scale")
    g.add_argument("--recompute-granularity", choices=["full", "selective"], default=None,
                   help="activation recomputation: full (whole layers) or selective (core attention)")
    g.add_argument("--recompute-method", choices=["uniform", "block"], default=None,
                   help="with --recompute-granularity full: how layers are grouped (default uniform)")
    g.add_argument("--recompute-num-layers", type=int, default=None,
                   help="with --recompute-granularity full: layers per recompute group (default 1)")
    g.add_argument("--recompute-activations", action="store_true",
                   help="selective recomputation, as in Megatron-LM: overrides --recompute-granularity full")
    g.add_argument("--seed", type=int, default=1234,
                   help="seed of the initialisation, dropout and data order")

    g = parser.add_argument_group("stopping early")
    g.add_argument("--exit-signal-handler", action="store_true",
                   help="on SIGTERM/SIGINT (Slurm's preemption, Ctrl-C) finish the step, save and exit 0")
    g.add_argument("--exit-interval", type=int, default=None,
                   help="save and exit at the first iteration divisible by this")
    g.add_argument("--exit-duration-in-mins", type=float, default=None,
                   help="save and exit once this many minutes have passed since the process started "
                        "(leave time for the save)")
    g.add_argument("--check-for-nan-in-loss-and-grad", action=argparse.BooleanOptionalAction, default=True,
                   help="stop, without saving, when the loss or gradient norm is NaN/Inf (default: on)")
