"""Parallel-layout and device flags."""

import argparse


def add_parallel_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("parallelism")
    g.add_argument("--tensor-model-parallel-size", type=int, default=1,
                   help="tensor parallelism (TP): split each layer over this many ranks")
    g.add_argument("--pipeline-model-parallel-size", type=int, default=1,
                   help="pipeline parallelism (PP): split the layers into this many stages")
    g.add_argument("--num-layers-per-virtual-pipeline-stage", type=int, default=None,
                   help="interleaved pipeline: layers per virtual stage (PP > 1)")
    g.add_argument("--sequence-parallel", action="store_true",
                   help="with TP > 1, split norms and dropout along the sequence (ignored at TP 1)")
    g.add_argument("--use-distributed-optimizer", action="store_true",
                   help="shard the optimizer state over data-parallel ranks (ZeRO-1)")
    g.add_argument("--overlap-grad-reduce", action="store_true",
                   help="overlap the data-parallel gradient reduction with the backward pass")
    g.add_argument("--overlap-param-gather", action="store_true",
                   help="overlap the distributed optimizer's parameter all-gather with the forward (needs --use-distributed-optimizer and --overlap-grad-reduce)")
    g.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto",
                   help="cuda (NCCL) or cpu (gloo); auto picks cuda when available")
    g.add_argument("--distributed-timeout-minutes", type=int, default=10,
                   help="timeout of collective operations")
