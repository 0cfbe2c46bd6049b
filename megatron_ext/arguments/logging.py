"""Logging and evaluation flags."""

import argparse


def add_logging_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("logging and evaluation")
    g.add_argument("--log-interval", type=int, default=10)
    g.add_argument("--tensorboard-dir", default=None)
    g.add_argument("--eval-interval", type=int, default=None)
    g.add_argument("--eval-iters", type=int, default=10)
    g.add_argument("--peak-tflops", type=float, default=None,
                   help="per-device dense peak TFLOP/s for MFU; known for H100/A100/H200")
    g.add_argument("--log-json", default=None, help="also write each logged iteration as JSON lines here")
