"""Megatron-LM flags mean what they mean in Megatron-LM (megatron/training/arguments.py), or are refused
with a message saying why and what to use instead. Parser-level: no process starts."""

import pytest

from megatron_ext.arguments import build_parser, parse_args, parse_config
from megatron_ext.arguments.configs import RunConfig
from megatron_ext.models.config import transformer_config

BASE = ["--model-preset", "tiny", "--mock-data", "--device", "cpu", "--train-iters", "10"]


def test_recompute_activations_means_selective_even_with_granularity_full():
    # Megatron-LM: `if args.recompute_activations: args.recompute_granularity = 'selective'`, whatever the order.
    for flags in (["--recompute-activations", "--recompute-granularity", "full"],
                  ["--recompute-granularity", "full", "--recompute-activations"]):
        args = parse_args(BASE + flags, world_size=1)
        assert args.recompute_granularity == "selective", flags
        config = transformer_config(RunConfig.from_flags(args), on_cpu=True)
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
        config = transformer_config(RunConfig.from_flags(args), on_cpu=True)
        assert args.swiglu and config.gated_linear_unit and config.activation_func.__name__ == "silu"
    assert "GeLU" in flag_help("--swiglu")


def flag_help(flag: str) -> str:
    """The help text argparse shows for FLAG."""
    action = next(a for a in build_parser()._actions if flag in a.option_strings)
    return action.help or ""


def test_llama2_tokenizer_is_sentencepiece_on_the_same_file():
    args = parse_args(["--model-preset", "tiny", "--data-path", "x", "--device", "cpu", "--train-iters", "10",
                       "--tokenizer-type", "Llama2Tokenizer", "--tokenizer-model", "tok.model"], world_size=1)
    assert (args.tokenizer_type, args.tokenizer_model) == ("SentencePieceTokenizer", "tok.model")


def test_accepted_megatron_lm_flags():
    args = parse_args(BASE + ["--no-position-embedding", "--transformer-impl", "local", "--log-throughput",
                              "--timing-log-level", "2", "--ckpt-format", "torch_dist",
                              "--use-mcore-models"], world_size=1)
    assert args.position_embedding_type == "rope" and args.ckpt_format == "torch_dist"
    assert args.timing_log_level == 2
    for level in ("0", "1"):
        assert parse_args(BASE + ["--timing-log-level", level], world_size=1).timing_log_level == int(level)


def test_transformer_engine_is_refused_with_the_alternative():
    with pytest.raises(SystemExit, match="transformer_engine.*--transformer-impl local"):
        parse_args(BASE + ["--transformer-impl", "transformer_engine"], world_size=1)


def test_wandb_without_the_package_is_refused_naming_the_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    with pytest.raises(SystemExit, match="pip install wandb"):
        parse_args(BASE + ["--wandb-project", "p", "--wandb-exp-name", "e", "--wandb-save-dir", "w"], world_size=1)


def _lr_at(args, samples):
    import torch

    from megatron_ext.training.optimizer import build_scheduler

    scheduler = build_scheduler(args, torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.lr))
    scheduler.num_steps = samples
    return scheduler.get_lr({})


def test_lr_warmup_fraction_and_samples_as_megatron_lm():
    iters = ["--model-preset", "tiny", "--mock-data", "--device", "cpu", "--global-batch-size", "4",
             "--lr", "1.0", "--min-lr", "0.0", "--lr-decay-style", "constant"]
    # iteration-based: warm-up = fraction x --lr-decay-iters x global batch (samples)
    args = parse_args(iters + ["--train-iters", "100", "--lr-warmup-fraction", "0.1"], world_size=1)
    assert args.lr_warmup_samples == 40
    assert _lr_at(args, 20) == pytest.approx(0.5) and _lr_at(args, 40) == pytest.approx(1.0)
    # sample-based: warm-up = fraction x --train-samples, or --lr-warmup-samples as given
    args = parse_args(iters + ["--train-samples", "400", "--lr-warmup-fraction", "0.05"], world_size=1)
    assert args.lr_warmup_samples == 20 and _lr_at(args, 10) == pytest.approx(0.5)
    args = parse_args(iters + ["--train-samples", "400", "--lr-warmup-samples", "80"], world_size=1)
    assert args.lr_warmup_samples == 80 and _lr_at(args, 40) == pytest.approx(0.5)
    # --lr-warmup-iters keeps its meaning
    args = parse_args(iters + ["--train-iters", "100", "--lr-warmup-iters", "10"], world_size=1)
    assert args.lr_warmup_samples == 40 and _lr_at(args, 20) == pytest.approx(0.5)
    with pytest.raises(SystemExit, match="--lr-warmup-fraction.*--lr-warmup-iters"):
        parse_args(iters + ["--train-iters", "100", "--lr-warmup-fraction", "0.1", "--lr-warmup-iters", "5"])
    with pytest.raises(SystemExit, match="--lr-warmup-samples.*--train-samples"):
        parse_args(iters + ["--train-iters", "100", "--lr-warmup-samples", "8"])


def test_lr_decay_samples_as_megatron_lm():
    """Sample-based runs decay over --lr-decay-samples (default --train-samples, not rounded up to whole
    iterations); the warm-up fraction applies to that length."""
    base = ["--model-preset", "tiny", "--mock-data", "--device", "cpu", "--global-batch-size", "4", "--lr", "1.0",
            "--min-lr", "0.0", "--lr-decay-style", "linear"]
    args = parse_args(base + ["--train-samples", "402"], world_size=1)
    assert (args.train_iters, args.lr_decay_samples) == (101, 402)
    assert _lr_at(args, 201) == pytest.approx(0.5)
    args = parse_args(base + ["--train-samples", "400", "--lr-decay-samples", "200", "--lr-warmup-fraction", "0.1"],
                      world_size=1)
    assert (args.lr_decay_samples, args.lr_warmup_samples) == (200, 20)
    assert _lr_at(args, 110) == pytest.approx(0.5) and _lr_at(args, 300) == pytest.approx(0.0)
    with pytest.raises(SystemExit, match="--lr-decay-samples goes with --train-samples"):
        parse_args(base + ["--train-iters", "100", "--lr-decay-samples", "200"])
    with pytest.raises(SystemExit, match="alternatives"):
        parse_args(base + ["--train-samples", "400", "--lr-decay-samples", "200", "--lr-decay-iters", "10"])


def test_dropout_flags_reach_the_model_config():
    config = transformer_config(parse_config(BASE, world_size=1), on_cpu=True)
    assert (config.hidden_dropout, config.attention_dropout) == (0.0, 0.0)  # LLaMA's; Megatron-LM defaults 0.1
    args = parse_args(BASE + ["--hidden-dropout", "0.1", "--attention-dropout", "0.2"], world_size=1)
    config = transformer_config(RunConfig.from_flags(args), on_cpu=True)
    assert (config.hidden_dropout, config.attention_dropout) == (0.1, 0.2)


def test_attention_applies_attention_dropout_in_training_only():
    import torch

    from megatron_ext.layers.attention import RotaryCoreAttention

    args = parse_args(BASE + ["--attention-dropout", "0.5"], world_size=1)
    config = transformer_config(RunConfig.from_flags(args), on_cpu=True)
    attention = RotaryCoreAttention(config, 1, None, None)
    heads, dim = config.num_attention_heads, config.kv_channels
    torch.manual_seed(0)
    q, k, v = (torch.randn(16, 2, heads, dim) for _ in range(3))
    attention.eval()
    reference = attention(q, k, v)
    config.attention_dropout = 0.0
    assert torch.equal(RotaryCoreAttention(config, 1, None, None).train()(q, k, v), reference)
    config.attention_dropout = 0.5
    attention.train()
    dropped = attention(q, k, v)
    assert not torch.allclose(dropped, reference)
