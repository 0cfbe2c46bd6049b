"""MuPConfig validation and the per-class rules, including Crystal's published numbers."""

import math

import pytest

from mup import MuPConfig, MuPRules, ParamClass, StandardRules, classify, crystal_7b

LAYER = "decoder.layers.7"
NAMES = {
    "embedding.word_embeddings.weight": ParamClass.EMBEDDING,
    "embedding.position_embeddings.weight": ParamClass.EMBEDDING,
    "output_layer.weight": ParamClass.OUTPUT,
    f"{LAYER}.self_attention.linear_qkv.weight": ParamClass.HIDDEN,
    f"{LAYER}.self_attention.linear_qkv.bias": ParamClass.BIAS,
    f"{LAYER}.self_attention.linear_proj.weight": ParamClass.RESIDUAL_OUT,
    f"{LAYER}.self_attention.linear_proj.bias": ParamClass.BIAS,
    f"{LAYER}.mlp.linear_fc1.weight": ParamClass.HIDDEN,
    f"{LAYER}.mlp.linear_fc1.bias": ParamClass.BIAS,
    f"{LAYER}.mlp.linear_fc2.weight": ParamClass.RESIDUAL_OUT,
    f"{LAYER}.mlp.linear_fc2.bias": ParamClass.BIAS,
    f"{LAYER}.input_layernorm.weight": ParamClass.NORM,
    f"{LAYER}.input_layernorm.bias": ParamClass.BIAS,
    f"{LAYER}.pre_mlp_layernorm.weight": ParamClass.NORM,
    f"{LAYER}.pre_mlp_layernorm.bias": ParamClass.BIAS,
    f"{LAYER}.self_attention.q_layernorm.weight": ParamClass.NORM,
    # Transformer Engine folds the norm into the next linear:
    f"{LAYER}.self_attention.linear_qkv.layer_norm_weight": ParamClass.NORM,
    f"{LAYER}.mlp.linear_fc1.layer_norm_bias": ParamClass.BIAS,
    "decoder.final_layernorm.weight": ParamClass.NORM,
    "decoder.final_layernorm.bias": ParamClass.BIAS,
}


@pytest.mark.parametrize("name,expected", sorted(NAMES.items()))
def test_classify_megatron_names_with_and_without_ddp_prefix(name, expected):
    assert classify(name) is expected
    assert classify("module." + name) is expected
    assert classify("module.module." + name) is expected


@pytest.mark.parametrize("bad", ["decoder.layers.0.mlp.router.weight", "foo", "embedding.weight"])
def test_classify_rejects_unknown_names(bad):
    with pytest.raises(ValueError, match="cannot classify"):
        classify(bad)


def test_crystal_derived_numbers():
    cfg = crystal_7b()
    rules = MuPRules(cfg)
    assert cfg.width_multiplier == 16 and cfg.width_scale == 0.0625
    assert rules.init_std(ParamClass.EMBEDDING) == pytest.approx(0.073)
    assert rules.init_std(ParamClass.HIDDEN) == pytest.approx(0.01825, rel=1e-12)
    assert rules.init_std(ParamClass.RESIDUAL_OUT) == pytest.approx(0.00228125, rel=1e-12)
    for name in ("decoder.layers.0.self_attention.linear_proj.weight",
                 "decoder.layers.0.mlp.linear_fc2.weight"):
        assert rules.init_std(name) == pytest.approx(0.00228125, rel=1e-12)
        assert rules.lr_multiplier(name) == pytest.approx(0.0625)
    assert rules.output_multiplier == pytest.approx(0.13875, rel=1e-12)
    assert rules.embedding_multiplier == 14.6
    assert rules.softmax_scale() == 1 / 128
    assert rules.lr_multiplier(ParamClass.HIDDEN) == 0.0625
    for cls in (ParamClass.EMBEDDING, ParamClass.OUTPUT, ParamClass.BIAS, ParamClass.NORM):
        assert rules.lr_multiplier(cls) == 1.0
        assert rules.adam_eps_multiplier(cls) == 1.0
    # Crystal did not scale Adam eps.
    assert rules.adam_eps_multiplier(ParamClass.HIDDEN) == 1.0


def test_output_layer_follows_embedding_convention():
    # An untied head gets exactly what a tied one would: sigma_base init, base LR, decay.
    rules = MuPRules(crystal_7b())
    for attr in ("init_std", "lr_multiplier", "adam_eps_multiplier", "weight_decay_applies"):
        assert getattr(rules, attr)("output_layer.weight") == getattr(rules, attr)(
            "embedding.word_embeddings.weight")


def test_constant_inits_and_weight_decay():
    for rules in (MuPRules(crystal_7b()), StandardRules(0.02, num_layers=4)):
        for name, cls in NAMES.items():
            expected_fill = {ParamClass.BIAS: 0.0, ParamClass.NORM: 1.0}.get(cls)
            assert rules.init_fill(name) == expected_fill
            assert rules.weight_decay_applies(name) == (cls not in (ParamClass.BIAS, ParamClass.NORM))


def test_adam_eps_scaling_flag():
    rules = MuPRules(MuPConfig(**{**crystal_7b().__dict__, "scale_adam_eps": True}))
    assert rules.adam_eps_multiplier("decoder.layers.0.mlp.linear_fc1.weight") == 0.0625
    assert rules.adam_eps_multiplier("decoder.layers.0.mlp.linear_fc2.weight") == 0.0625
    # Every gradient shrinks ~1/m (tests/mup/test_mup_options.py measures it), so every eps does.
    for name in ("embedding.word_embeddings.weight", "output_layer.weight", "decoder.layers.0.mlp.linear_fc2.bias",
                 "decoder.layers.0.input_layernorm.weight", "decoder.final_layernorm.weight"):
        assert rules.adam_eps_multiplier(name) == 0.0625, name
    assert MuPRules(crystal_7b()).adam_eps_multiplier("decoder.layers.0.mlp.linear_fc1.weight") == 1.0


def test_separate_ffn_and_head_base_sizes_use_their_own_fan_in():
    cfg = MuPConfig(hidden_size=1024, base_hidden_size=256, num_layers=4, ffn_hidden_size=4096,
                    base_ffn_hidden_size=512, num_attention_heads=16, base_num_attention_heads=8,
                    head_dim=64, base_init_std=0.05)
    rules = MuPRules(cfg)
    assert (cfg.width_multiplier, cfg.ffn_width_multiplier, cfg.attention_width_multiplier) == (4, 8, 2)
    assert rules.lr_multiplier("decoder.layers.0.mlp.linear_fc1.weight") == 1 / 4  # fan-in hidden
    assert rules.lr_multiplier("decoder.layers.0.mlp.linear_fc2.weight") == 1 / 8  # fan-in ffn
    assert rules.lr_multiplier("decoder.layers.0.self_attention.linear_proj.weight") == 1 / 2
    assert rules.init_std("decoder.layers.0.mlp.linear_fc2.weight") == pytest.approx(
        0.05 / math.sqrt(2 * 8 * 4))
    assert rules.init_std("decoder.layers.0.self_attention.linear_proj.weight") == pytest.approx(
        0.05 / math.sqrt(2 * 2 * 4))
    assert rules.expected_fan_in("decoder.layers.0.self_attention.linear_proj.weight") == 16 * 64
    assert rules.expected_fan_in("decoder.layers.0.mlp.linear_fc2.weight") == 4096
    with pytest.raises(ValueError, match="ambiguous"):
        rules.lr_multiplier(ParamClass.RESIDUAL_OUT)


@pytest.mark.parametrize("heads,base_heads,head_dim,base_head_dim", [
    (8, None, 128, 32),   # width 256 -> 1024 through head dim only (heads stay 8)
    (8, 8, 128, 32),      # the same, with the unchanged head count given
    (16, 8, 64, 32),      # through both: x2 heads, x2 head dim
])
def test_linear_proj_fan_in_counts_head_dim(heads, base_heads, head_dim, base_head_dim):
    """linear_proj's fan-in is heads x head_dim: when width grows through head dim, its μP multiplier is
    the ratio of that product, not the head-count ratio (which would be 1 with the heads fixed)."""
    cfg = MuPConfig(hidden_size=1024, base_hidden_size=256, num_layers=4, ffn_hidden_size=4096,
                    num_attention_heads=heads, base_num_attention_heads=base_heads, head_dim=head_dim,
                    base_head_dim=base_head_dim, base_init_std=0.05)
    rules = MuPRules(cfg)
    proj = "decoder.layers.0.self_attention.linear_proj.weight"
    fan_in, base_fan_in = heads * head_dim, (base_heads or heads) * base_head_dim
    assert rules.expected_fan_in(proj) == fan_in
    assert cfg.attention_width_multiplier == fan_in / base_fan_in == 4
    assert rules.lr_multiplier(proj) == pytest.approx(1 / 4)
    assert rules.init_std(proj) == pytest.approx(0.05 / math.sqrt(2 * 4 * 4))


def test_head_dim_base_defaults_keep_head_dim_unscaled():
    """Without base_head_dim the proxy's head dim is the target's (the behaviour before the field)."""
    kw = dict(hidden_size=1024, base_hidden_size=256, num_layers=4, ffn_hidden_size=4096,
              num_attention_heads=16, head_dim=64, base_init_std=0.05)
    assert MuPConfig(**kw).attention_width_multiplier == 4  # no base: scales like hidden
    assert MuPConfig(**kw, base_num_attention_heads=8).attention_width_multiplier == 2
    assert MuPConfig(**kw, base_head_dim=64).attention_width_multiplier == 1


def test_standard_parametrization_counterpart():
    sp = StandardRules(init_std=0.02, num_layers=32)
    assert not sp.is_mup and MuPRules(crystal_7b()).is_mup
    assert sp.embedding_multiplier == sp.output_multiplier == 1.0
    assert sp.softmax_scale(128) == pytest.approx(1 / math.sqrt(128))
    for name in NAMES:
        assert sp.lr_multiplier(name) == sp.adam_eps_multiplier(name) == 1.0
    assert sp.init_std("decoder.layers.3.mlp.linear_fc1.weight") == 0.02
    assert sp.init_std("output_layer.weight") == 0.02
    assert sp.init_std("decoder.layers.3.mlp.linear_fc2.weight") == pytest.approx(0.02 / 8)
    assert StandardRules(0.02).init_std("decoder.layers.3.mlp.linear_fc2.weight") == 0.02


def test_softmax_scale_without_qk_by_d():
    cfg = MuPConfig(**{**crystal_7b().__dict__, "scale_qk_dot_by_d": False})
    assert MuPRules(cfg).softmax_scale() == pytest.approx(1 / math.sqrt(128))


def test_from_width_scale():
    kw = dict(num_layers=32, ffn_hidden_size=10922, num_attention_heads=32, head_dim=128,
              base_init_std=0.073, embeddings_scale=14.6, output_alpha=2.22)
    assert MuPConfig.from_width_scale(0.0625, 4096, **kw) == crystal_7b()
    with pytest.raises(ValueError, match="whole"):
        MuPConfig.from_width_scale(0.3, 4096, **kw)
    with pytest.raises(ValueError, match="either"):
        MuPConfig.from_width_scale(0.0625, 4096, base_hidden_size=256, **kw)


@pytest.mark.parametrize("field,value", [
    ("hidden_size", 0), ("base_hidden_size", -1), ("num_layers", 2.5), ("head_dim", True),
    ("base_ffn_hidden_size", 0), ("base_num_attention_heads", -3), ("base_head_dim", 0), ("base_init_std", 0.0),
    ("embeddings_scale", float("inf")), ("output_alpha", -2.0), ("scale_qk_dot_by_d", 1),
])
def test_config_validation(field, value):
    kwargs = {**crystal_7b().__dict__, field: value}
    with pytest.raises(ValueError, match=field):
        MuPConfig(**kwargs)


def test_config_is_keyword_only():
    with pytest.raises(TypeError):
        MuPConfig(4096, 256)  # positional sizes are too easy to swap
