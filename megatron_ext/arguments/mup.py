"""μP flags, in the style LLM360 used with Megatron-LM."""

import argparse


def add_mup_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("μP (maximal update parametrization)")
    g.add_argument("--use-mup", action="store_true", default=None)
    g.add_argument("--mup-base-hidden-size", type=int)
    g.add_argument("--mup-width-scale", type=float, help="base hidden / hidden (alternative to the above)")
    g.add_argument("--mup-base-ffn-hidden-size", type=int)
    g.add_argument("--mup-base-num-attention-heads", type=int)
    g.add_argument("--mup-embeddings-scale", type=float)
    g.add_argument("--mup-output-alpha", type=float)
    g.add_argument("--mup-scale-qk-dot-by-d", action="store_true", default=None)
    g.add_argument("--mup-base-init-std", type=float)
    g.add_argument("--mup-scale-adam-eps", action="store_true", default=None)
