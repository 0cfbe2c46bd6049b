"""Named architectures, as ModelIdentity instances: from the published config.json files of LLM360/Amber,
LLM360/CrystalCoder, TRI-ML/DCLM-1B and openlm-research/open_llama_3b (llama2-7b-gqa: LLaMA-2-7B's shape with 8 query
groups, GQA at 7B scale). Any flag overrides them (ModelIdentity.as_flags makes them argparse defaults).
"""

from megatron_ext.models.identity import ModelIdentity

_LLAMA = dict(normalization="RMSNorm", norm_epsilon=1e-6, add_bias_linear=False, rotary_percent=1.0,
              rotary_base=10000.0, rotary_interleaved=False, tie_embeddings=False, init_method_std=0.02)

_TINY = dict(_LLAMA, num_layers=4, hidden_size=64, ffn_hidden_size=176, num_attention_heads=4,
             max_position_embeddings=64, vocab_size=512)

_CRYSTAL_MUP = dict(use_mup=True, mup_base_hidden_size=256, mup_embeddings_scale=14.6,
                    mup_output_alpha=2.22, mup_scale_qk_dot_by_d=True, mup_base_init_std=0.073)

_CRYSTAL = dict(_LLAMA, normalization="LayerNorm", norm_epsilon=1e-5, add_bias_linear=True,
                rotary_percent=0.25, rotary_interleaved=True, tie_embeddings=True, **_CRYSTAL_MUP)

# open_lm's open_lm_1b_swiglutorch as DCLM trained it (TRI-ML/DCLM-1B config.json; docs in hf_openlm.py):
# gain-only LayerNorm, query/key norm over the full projection, untied, no biases, open_lm's initialisation.
_OPENLM = dict(normalization="LayerNorm", norm_epsilon=1e-5, layernorm_bias=False, qk_norm="full",
               add_bias_linear=False, rotary_percent=1.0, rotary_base=10000.0, rotary_interleaved=False,
               tie_embeddings=False, init_method="open_lm")

PRESETS = {
    "amber-7b": ModelIdentity(**_LLAMA, num_layers=32, hidden_size=4096, ffn_hidden_size=11008,
                              num_attention_heads=32, max_position_embeddings=2048, vocab_size=32000),
    "openllama-3b": ModelIdentity(**_LLAMA, num_layers=26, hidden_size=3200, ffn_hidden_size=8640,
                                  num_attention_heads=32, max_position_embeddings=2048, vocab_size=32000),
    "llama2-7b-gqa": ModelIdentity(**dict(_LLAMA, norm_epsilon=1e-5), num_layers=32, hidden_size=4096,
                                   ffn_hidden_size=11008, num_attention_heads=32, num_query_groups=8,
                                   max_position_embeddings=4096, vocab_size=32000),
    "crystal-7b": ModelIdentity(**_CRYSTAL, num_layers=32, hidden_size=4096, ffn_hidden_size=10922,
                                num_attention_heads=32, max_position_embeddings=2048, vocab_size=32032,
                                make_vocab_size_divisible_by=32),
    "dclm-1b": ModelIdentity(**_OPENLM, num_layers=24, hidden_size=2048, ffn_hidden_size=5632, num_attention_heads=16,
                             max_position_embeddings=2048, vocab_size=50432),
    # ~1.2B parameters: the single-GPU benchmark size.
    "llama-1b": ModelIdentity(**_LLAMA, num_layers=24, hidden_size=2048, ffn_hidden_size=5632,
                              num_attention_heads=16, max_position_embeddings=2048, vocab_size=32000),
    # Test and demo sizes. tiny-demo is the `make demo` model.
    "tiny": ModelIdentity(**_TINY),
    "tiny-gqa": ModelIdentity(**_TINY, num_query_groups=2),
    "tiny-crystal": ModelIdentity(**dict(_CRYSTAL, mup_base_hidden_size=32), num_layers=4, hidden_size=64,
                                  ffn_hidden_size=176, num_attention_heads=4, max_position_embeddings=64,
                                  vocab_size=512),
    "tiny-dclm": ModelIdentity(**_OPENLM, num_layers=4, hidden_size=64, ffn_hidden_size=256, num_attention_heads=4,
                               max_position_embeddings=64, vocab_size=512),
    "tiny-demo": ModelIdentity(**dict(_TINY, hidden_size=128, ffn_hidden_size=352, max_position_embeddings=128)),
}


def preset_flags(name: str) -> dict:
    """The preset as argparse defaults: its model flags, --vocab-size (the size mock data and the
    NullTokenizer use) and --seq-length (the context it was trained at)."""
    if name not in PRESETS:
        raise SystemExit(f"--model-preset {name!r} is unknown; choose one of: {', '.join(sorted(PRESETS))}")
    identity = PRESETS[name]
    return dict(identity.as_flags(), vocab_size=identity.vocab_size, seq_length=identity.max_position_embeddings)
