"""Full-size presets carry the published architectures (the models' config.json on the Hugging Face Hub,
restated here), and flags that reshape a run resolve as Megatron-LM's do."""

import pytest

from megatron_ext.arguments import parse_args
from megatron_ext.arguments.configs import RunConfig
from megatron_ext.models.config import transformer_config

DATA = ["--mock-data", "--device", "cpu", "--train-iters", "10"]

# (layers, hidden, heads, query groups, FFN, vocab, context, norm, eps, biases, rotary %, interleaved, tied)
PUBLISHED = {
    "amber-7b": (32, 4096, 32, 32, 11008, 32000, 2048, "RMSNorm", 1e-6, False, 1.0, False, False),
    "openllama-3b": (26, 3200, 32, 32, 8640, 32000, 2048, "RMSNorm", 1e-6, False, 1.0, False, False),
    "llama2-7b-gqa": (32, 4096, 32, 8, 11008, 32000, 4096, "RMSNorm", 1e-5, False, 1.0, False, False),
    "crystal-7b": (32, 4096, 32, 32, 10922, 32032, 2048, "LayerNorm", 1e-5, True, 0.25, True, True),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_full_size_preset_matches_the_published_architecture(name):
    layers, hidden, heads, groups, ffn, vocab, ctx, norm, eps, bias, rotary, interleaved, tied = PUBLISHED[name]
    args = parse_args(["--model-preset", name] + DATA, world_size=8)
    model = args.model_identity
    assert (model.num_layers, model.hidden_size, model.num_attention_heads, model.ffn_hidden_size) == \
        (layers, hidden, heads, ffn)
    assert model.num_query_groups == groups
    assert (args.vocab_size, args.seq_length, model.max_position_embeddings) == (vocab, ctx, ctx)
    assert (model.normalization, model.norm_epsilon, model.add_bias_linear) == (norm, eps, bias)
    assert (model.rotary_percent, model.rotary_interleaved, model.tie_embeddings) == (rotary, interleaved, tied)
    assert args.swiglu and model.rotary_base == 10000.0
    config = transformer_config(RunConfig.from_flags(args), on_cpu=True)
    assert config.kv_channels == hidden // heads  # 100 for OpenLLaMA-3B: not a power of two
    assert config.num_query_groups == groups
    assert config.layernorm_epsilon == eps and config.add_bias_linear == bias


def test_crystal_preset_has_crystals_mup():
    model = parse_args(["--model-preset", "crystal-7b"] + DATA, world_size=8).model_identity
    assert model.use_mup and model.mup_base_hidden_size == 256 and model.mup_base_init_std == 0.073
    assert (model.mup_embeddings_scale, model.mup_output_alpha, model.mup_scale_qk_dot_by_d) == (14.6, 2.22, True)


def test_any_flag_overrides_a_preset():
    args = parse_args(["--model-preset", "amber-7b", "--num-layers", "8", "--rotary-percent", "0.5",
                       "--group-query-attention", "--num-query-groups", "4"] + DATA, world_size=1)
    model = args.model_identity
    assert (model.num_layers, model.rotary_percent, model.num_query_groups, model.hidden_size) == (8, 0.5, 4, 4096)


def test_train_samples_sets_the_iterations():
    base = ["--model-preset", "tiny", "--mock-data", "--device", "cpu", "--micro-batch-size", "2",
            "--global-batch-size", "8"]
    assert parse_args(base + ["--train-samples", "100"], world_size=2).train_iters == 13  # ceil(100 / 8)
    assert parse_args(base + ["--train-samples", "96"], world_size=2).train_iters == 12
    with pytest.raises(SystemExit, match="exactly one of --train-iters and --train-samples"):
        parse_args(base + ["--train-samples", "96", "--train-iters", "5"])
