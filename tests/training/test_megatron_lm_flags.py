"""Megatron-LM flags mean what they mean in Megatron-LM (megatron/training/arguments.py), or are refused
with a message saying why and what to use instead. Parser-level: no process starts."""

import pytest

from megatron_ext.arguments import build_parser, parse_args
from megatron_ext.models.config import transformer_config

BASE = ["--model-preset", "tiny", "--mock-data", "--device", "cpu", "--train-iters", "10"]


def test_recompute_activations_means_selective_even_with_granularity_full():
    # Megatron-LM: `if args.recompute_activations: args.recompute_granularity = 'selective'`, whatever the order.
    for flags in (["--recompute-activations", "--recompute-granularity", "full"],
                  ["--recompute-granularity", "full", "--recompute-activations"]):
        args = parse_args(BASE + flags, world_size=1)
        assert args.recompute_granularity == "selective", flags
        config = transformer_config(args, on_cpu=True)
        assert config.recompute_granularity == "selective" and config.recompute_method is None


def test_recompute_method_with_selective_is_refused():
    with pytest.raises(SystemExit, match="--recompute-method.*selective"):
        parse_args(BASE + ["--recompute-activations", "--recompute-method", "uniform"], world_size=1)


def test_full_recompute_still_works():
    args = parse_args(BASE + ["--recompute-granularity", "full"], world_size=1)
    assert (args.recompute_granularity, args.recompute_method, args.recompute_num_layers) == ("full", "uniform", 1)


def test_overlap_param_gather_needs_the_distributed_optimizer_and_overlap_grad_reduce():
    with pytest.raises(SystemExit, match="--overlap-param-gather.*--use-distributed-optimizer"):
        parse_args(BASE + ["--overlap-param-gather", "--overlap-grad-reduce"], world_size=2)
    with pytest.raises(SystemExit, match="--overlap-param-gather.*--overlap-grad-reduce"):
        parse_args(BASE + ["--overlap-param-gather", "--use-distributed-optimizer"], world_size=2)
    args = parse_args(BASE + ["--overlap-param-gather", "--use-distributed-optimizer", "--overlap-grad-reduce"],
                      world_size=2)
    assert args.overlap_param_gather


def test_swiglu_is_accepted_and_omitting_it_does_not_mean_gelu():
    for flags in ([], ["--swiglu"]):
        args = parse_args(BASE + flags, world_size=1)
        config = transformer_config(args, on_cpu=True)
        assert args.swiglu and config.gated_linear_unit and config.activation_func.__name__ == "silu"
    assert "GeLU" in flag_help("--swiglu")


def flag_help(flag: str) -> str:
    """The help text argparse shows for FLAG."""
    action = next(a for a in build_parser()._actions if flag in a.option_strings)
    return action.help or ""
