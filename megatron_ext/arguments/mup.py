"""μP flags, in the style LLM360 used with Megatron-LM."""

import argparse


def add_mup_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("μP (maximal update parametrization)")
    g.add_argument("--use-mup", action="store_true", default=None,
                   help="μP: width-scaled initialisation, learning rates and multipliers (docs/mup.md)")
    g.add_argument("--mup-base-hidden-size", type=int,
                   help="μP base width the hyperparameters were tuned at")
    g.add_argument("--mup-width-scale", type=float, help="base hidden / hidden (alternative to the above)")
    g.add_argument("--mup-base-ffn-hidden-size", type=int,
                   help="μP base MLP width (see docs/mup.md)")
    g.add_argument("--mup-base-num-attention-heads", type=int,
                   help="μP base number of attention heads (see docs/mup.md)")
    g.add_argument("--mup-base-head-dim", type=int,
                   help="μP base head dim, when width grew through head dim (default: the model's; docs/mup.md)")
    g.add_argument("--mup-embeddings-scale", type=float,
                   help="μP multiplier on the embedding output")
    g.add_argument("--mup-output-alpha", type=float,
                   help="μP output multiplier alpha (see docs/mup.md)")
    g.add_argument("--mup-scale-qk-dot-by-d", action="store_true", default=None,
                   help="μP attention scale 1/d instead of 1/sqrt(d)")
    g.add_argument("--mup-base-init-std", type=float,
                   help="μP initialisation std at the base width")
    g.add_argument("--mup-scale-adam-eps", action="store_true", default=None,
                   help="μP: scale Adam's epsilon with the width")
    g.add_argument("--mup-scale-weight-decay", action="store_true", default=None,
                   help="μP: divide each decayed group's weight decay by its LR multiplier (hidden matrices: wd x m), "
                        "so the decoupled decay per step, lr x wd, does not depend on width (docs/mup.md)")
    g.add_argument("--mup-base-num-layers", type=int,
                   help="depth-μP: the proxy's depth; residual branches are multiplied by 1/sqrt(layers / this) "
                        "and the layers' LRs by sqrt(this / layers). Without it, tune on a proxy of the target's "
                        "depth (docs/mup.md)")
    g.add_argument("--mup-zero-init-query", action="store_true", default=None,
                   help="μP: initialise the query projection (the q rows of linear_qkv) to zero")
    g.add_argument("--mup-zero-init-readout", action="store_true", default=None,
                   help="μP: initialise the (untied) output layer to zero")
