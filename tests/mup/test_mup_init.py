"""init_: sampled statistics match the rules, at two widths, and the helper is pure."""

import math

import pytest
import torch

from mup import TRUNC_NORMAL_STD_FACTOR, MuPConfig, MuPRules, StandardRules, init_


def _cfg(width):
    return MuPConfig(hidden_size=width, base_hidden_size=64, num_layers=4, ffn_hidden_size=4 * width,
                     num_attention_heads=width // 32, head_dim=32, base_init_std=0.073)


def _shapes(width, vocab=1000):
    return {
        "embedding.word_embeddings.weight": (vocab, width),
        "output_layer.weight": (vocab, width),
        "decoder.layers.0.self_attention.linear_qkv.weight": (3 * width, width),
        "decoder.layers.0.self_attention.linear_proj.weight": (width, width),
        "decoder.layers.0.mlp.linear_fc1.weight": (8 * width, width),  # gated: 2 x ffn
        "decoder.layers.0.mlp.linear_fc2.weight": (width, 4 * width),
    }


def test_truncated_normal_std_factor():
    # Known closed form for a standard normal truncated at +-2.
    assert TRUNC_NORMAL_STD_FACTOR == pytest.approx(0.87962, abs=1e-5)


@pytest.mark.parametrize("width", [128, 512])
def test_sampled_std_matches_rule(width):
    rules = MuPRules(_cfg(width))
    gen = torch.Generator().manual_seed(width)
    for name, shape in _shapes(width).items():
        t = init_(torch.empty(shape), name, rules, gen)
        sigma = rules.init_std(name)
        assert t.std().item() == pytest.approx(sigma * TRUNC_NORMAL_STD_FACTOR, rel=0.03), name
        assert abs(t.mean().item()) < 0.05 * sigma, name
        assert t.abs().max().item() <= 2 * sigma * (1 + 1e-6), name  # cut at +-2 sigma
    m = width / 64
    # the width dependence itself: hidden sigma_base/sqrt(m), residual sigma_base/sqrt(2 m L)
    assert rules.init_std("decoder.layers.0.mlp.linear_fc1.weight") == pytest.approx(0.073 / math.sqrt(m))
    assert rules.init_std("decoder.layers.0.mlp.linear_fc2.weight") == pytest.approx(
        0.073 / math.sqrt(2 * m * 4))


def test_biases_zero_norms_one_any_dtype():
    rules = MuPRules(_cfg(256))
    gen = torch.Generator().manual_seed(0)
    b = init_(torch.full((256,), 7.0, dtype=torch.bfloat16), "decoder.layers.0.mlp.linear_fc1.bias",
              rules, gen)
    g = init_(torch.zeros(256), "decoder.final_layernorm.weight", rules, gen)
    ln_b = init_(torch.ones(256), "decoder.layers.1.input_layernorm.bias", rules, gen)
    assert b.eq(0).all() and g.eq(1).all() and ln_b.eq(0).all()


def test_pure_and_dtype_independent():
    rules = MuPRules(_cfg(256))
    name = "decoder.layers.0.self_attention.linear_qkv.weight"
    a = init_(torch.empty(768, 256), name, rules, torch.Generator().manual_seed(5))
    b = init_(torch.empty(768, 256, dtype=torch.bfloat16), name, rules, torch.Generator().manual_seed(5))
    assert torch.equal(a.to(torch.bfloat16), b)  # same values, only rounded


def test_rejects_a_shard():
    rules = MuPRules(_cfg(256))
    with pytest.raises(ValueError, match="global fan-in"):
        # a row-parallel linear_fc2 shard (TP=2) has half the fan-in
        init_(torch.empty(256, 512), "decoder.layers.0.mlp.linear_fc2.weight", rules,
              torch.Generator().manual_seed(0))


def test_standard_rules_init():
    rules = StandardRules(init_std=0.02, num_layers=8)
    gen = torch.Generator().manual_seed(1)
    t = init_(torch.empty(2048, 512), "decoder.layers.0.mlp.linear_fc1.weight", rules, gen)
    assert t.std().item() == pytest.approx(0.02 * TRUNC_NORMAL_STD_FACTOR, rel=0.03)
    t = init_(torch.empty(512, 2048), "decoder.layers.0.mlp.linear_fc2.weight", rules, gen)
    assert t.std().item() == pytest.approx(0.02 / 4 * TRUNC_NORMAL_STD_FACTOR, rel=0.03)
