"""LLM360 CrystalCoder / Crystal (GPT-2-style names, remote code) <-> Megatron.

Published layout (its config and modeling files): transformer.wte, transformer.h.N.{ln_1,
attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_fc2, mlp.c_proj}, transformer.ln_f, lm_head tied to
wte. Linear layers are GPT-2 Conv1D, whose weight is stored [in, out] (the transpose of Megatron's
[out, in]), all with biases. c_attn's output is [q of all heads; k; v] (hidden_size each); the MLP is
c_proj(c_fc(x) * silu(c_fc2(x))), so c_fc2 is the gate. RoPE is GPT-J "rotate every two" on the
first rotary_dim channels of each head, base 10000. μP lives in the config: embeddings x
mup_embeddings_scale, logits x mup_output_alpha * mup_width_scale, attention scores / head_dim when
mup_scale_qk_dot_by_d.
"""

from __future__ import annotations

import json

import torch

from megatron_ext.checkpoint.hf_arch import DTYPE_NAMES, IDENTITY_KEY, ConversionError
from megatron_ext.checkpoint.weight_maps import (Entry, Fuse, PackQKV, RopeOrder, Scale, Split, Transpose, VocabRows,
                                                 residual_branch_multiplier)
from megatron_ext.models.identity import ModelIdentity

NAME = "crystalcoder"
PUBLISHED_ROTARY_BASE = 10000.0  # fixed in the published modeling code
AUTO_MAP = {"AutoConfig": "configuration_crystalcoder.CrystalCoderConfig",
            "AutoModel": "modeling_crystalcoder.CrystalCoderModel",
            "AutoModelForCausalLM": "modeling_crystalcoder.CrystalCoderLMHeadModel"}


def matches(config: dict) -> bool:
    return config.get("model_type") == "crystalcoder" or any(
        a.startswith("CrystalCoder") for a in (config.get("architectures") or []))


# Identity fields config.json states itself (μP's multipliers included); the μP bases, init std and
# vocabulary padding come back from the identity an export recorded (hf_arch.IDENTITY_KEY).
EXPRESSED = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
             "kv_channels", "normalization", "norm_epsilon", "add_bias_linear", "add_qkv_bias", "rotary_percent",
             "rotary_base", "rotary_interleaved", "tie_embeddings", "vocab_size", "max_position_embeddings",
             "use_mup", "mup_width", "mup_embeddings_scale", "mup_output_alpha", "attention_scores_by_d")


def identity_from_config(config: dict) -> ModelIdentity:
    def refuse(field, value, why):
        raise ConversionError(f"config.json has {field}={value!r}: {why}; the Megatron model cannot reproduce it")

    if config.get("activation_function", "swiglu") != "swiglu":
        refuse("activation_function", config["activation_function"], "only SwiGLU MLPs are supported")
    if config.get("position_embedding_type", "rotary") != "rotary":
        refuse("position_embedding_type", config["position_embedding_type"], "only rotary positions are supported")
    if not config.get("scale_attn_weights", True):
        refuse("scale_attn_weights", False, "unscaled attention scores are not supported")
    if config.get("scale_attn_by_inverse_layer_idx"):
        refuse("scale_attn_by_inverse_layer_idx", True, "per-layer attention scaling is not supported")
    hidden, heads = config["n_embd"], config["n_head"]
    head_dim = hidden // heads
    rotary_dim = config.get("rotary_dim") or head_dim
    width = float(config.get("mup_width_scale", 1.0))
    emb, alpha = float(config.get("mup_embeddings_scale", 1.0)), float(config.get("mup_output_alpha", 1.0))
    qk_by_d = bool(config.get("mup_scale_qk_dot_by_d", False))
    use_mup = qk_by_d or emb != 1.0 or alpha * width != 1.0
    mup = {}
    if use_mup:
        base = width * hidden
        integral = abs(base - round(base)) < 1e-6 * max(1.0, base)
        mup = dict(use_mup=True, mup_embeddings_scale=emb, mup_output_alpha=alpha, mup_scale_qk_dot_by_d=qk_by_d,
                   **({"mup_base_hidden_size": int(round(base))} if integral else {"mup_width_scale": width}))
    return ModelIdentity(
        num_layers=config["n_layer"], hidden_size=hidden, ffn_hidden_size=config.get("n_inner") or 4 * hidden,
        num_attention_heads=heads, num_query_groups=heads, kv_channels=head_dim, normalization="LayerNorm",
        norm_epsilon=config.get("layer_norm_epsilon", 1e-5), add_bias_linear=True, add_qkv_bias=True,
        rotary_percent=rotary_dim / head_dim, rotary_base=PUBLISHED_ROTARY_BASE, rotary_interleaved=True,
        tie_embeddings=bool(config.get("tie_word_embeddings", True)), vocab_size=config["vocab_size"],
        max_position_embeddings=config.get("n_positions", 2048), **mup,
    )


def check_exportable(identity: ModelIdentity) -> None:
    if identity.qk_norm or (identity.layer_norm and not identity.layernorm_bias):
        raise ConversionError("this model has a query/key norm or a gain-only LayerNorm, which CrystalCoder's layout "
                              "cannot express; export it with --model-format openlm")
    if not identity.layer_norm:
        raise ConversionError("CrystalCoder's layout uses LayerNorm with bias; this model uses RMSNorm. Export "
                              "it with --model-format llama")
    if identity.num_query_groups != identity.num_attention_heads:
        raise ConversionError("CrystalCoder's fused c_attn has one key/value head per query head; this model uses "
                              "grouped-query attention. Export it with --model-format llama")
    if identity.rotary_base != PUBLISHED_ROTARY_BASE:
        raise ConversionError(f"CrystalCoder's published code fixes the RoPE base at 10000; this model uses "
                              f"{identity.rotary_base:g}")
    if identity.kv_channels * identity.num_attention_heads != identity.hidden_size:
        raise ConversionError("CrystalCoder's layout needs head_dim x heads = hidden size (kv_channels is derived)")


def ignorable(name: str, identity: ModelIdentity) -> bool:
    # attn.bias / attn.masked_bias: GPT-2's causal-mask buffers, saved by some transformers versions.
    return name.endswith((".attn.bias", ".attn.masked_bias")) or (identity.tie_embeddings and name == "lm_head.weight")


# ---- tensors ----------------------------------------------------------------------------------

H, MG = "transformer.h.{layer}.", "decoder.layers.{layer}."
# Conv1D always has a bias; a Megatron model without one exports zeros (and imports only zeros).
NO_BIAS = "the Megatron model has no such bias (it was trained without --add-bias-linear)"
# c_attn's [q; k; v] blocks -> linear_qkv; GPT-J RoPE order, reordered for a half-split model.
QKV = (Split(3), RopeOrder(hf_interleaved=True), PackQKV())

BRANCH = Scale(residual_branch_multiplier)  # depth-μP's branch multiplier, folded into both c_proj

# Megatron tensor <- HF tensor(s), steps in import order; an export runs them backwards (weight_maps.py).
WEIGHTS = (
    Entry("embedding.word_embeddings.weight", "transformer.wte.weight", VocabRows()),
    Entry(MG + "input_layernorm.weight", H + "ln_1.weight"),
    Entry(MG + "input_layernorm.bias", H + "ln_1.bias"),
    Entry(MG + "self_attention.linear_qkv.weight", H + "attn.c_attn.weight", Transpose(), *QKV),
    Entry(MG + "self_attention.linear_qkv.bias", H + "attn.c_attn.bias", *QKV, absent=NO_BIAS),
    Entry(MG + "self_attention.linear_proj.weight", H + "attn.c_proj.weight", Transpose(), BRANCH),
    Entry(MG + "self_attention.linear_proj.bias", H + "attn.c_proj.bias", BRANCH, absent=NO_BIAS),
    Entry(MG + "pre_mlp_layernorm.weight", H + "ln_2.weight"),
    Entry(MG + "pre_mlp_layernorm.bias", H + "ln_2.bias"),
    # c_proj(c_fc(x) * silu(c_fc2(x))): c_fc2 is the gate, so linear_fc1 = [c_fc2; c_fc].
    Entry(MG + "mlp.linear_fc1.weight", (H + "mlp.c_fc2.weight", H + "mlp.c_fc.weight"), Transpose(), Fuse()),
    Entry(MG + "mlp.linear_fc1.bias", (H + "mlp.c_fc2.bias", H + "mlp.c_fc.bias"), Fuse(), absent=NO_BIAS),
    Entry(MG + "mlp.linear_fc2.weight", H + "mlp.c_proj.weight", Transpose(), BRANCH),
    Entry(MG + "mlp.linear_fc2.bias", H + "mlp.c_proj.bias", BRANCH, absent=NO_BIAS),
    Entry("decoder.final_layernorm.weight", "transformer.ln_f.weight"),
    Entry("decoder.final_layernorm.bias", "transformer.ln_f.bias"),
    Entry("output_layer.weight", "lm_head.weight", VocabRows()),
)


# ---- config -----------------------------------------------------------------------------------

def write_config(identity: ModelIdentity, provenance: dict, directory: str, dtype: torch.dtype) -> None:
    """config.json with CrystalCoder's published fields (its remote code reads them), and
    generation_config.json. Fields Megatron does not model come from the imported config if any."""
    base = json.loads(provenance.get("hf_config") or "{}")
    if matches(base):  # an imported config is authoritative for everything Megatron does not model
        config = {k: v for k, v in base.items() if k != "transformers_version"}
    else:
        config = {"activation_function": "swiglu", "attn_pdrop": 0.0, "auto_map": AUTO_MAP, "bos_token_id": 1,
                  "embd_pdrop": 0.0, "eos_token_id": 2, "initializer_range": 0.02, "reorder_and_upcast_attn": False,
                  "resid_pdrop": 0.0, "use_cache": True}
    config.update(
        architectures=["CrystalCoderLMHeadModel"], model_type="crystalcoder", n_embd=identity.hidden_size,
        n_head=identity.num_attention_heads, n_inner=identity.ffn_hidden_size, n_layer=identity.num_layers,
        n_positions=identity.max_position_embeddings, layer_norm_epsilon=identity.norm_epsilon,
        position_embedding_type="rotary", rotary_dim=identity.rotary_dim, scale_attn_weights=True,
        scale_attn_by_inverse_layer_idx=False,
        mup_width_scale=identity.mup_width,
        mup_embeddings_scale=identity.mup_embeddings_scale if identity.use_mup else 1.0,
        mup_output_alpha=identity.mup_output_alpha if identity.use_mup else 1.0,
        mup_scale_qk_dot_by_d=identity.attention_scores_by_d, torch_dtype=DTYPE_NAMES[dtype],
        vocab_size=identity.vocab_size, **{IDENTITY_KEY: identity.to_checkpoint()},
    )
    if not identity.tie_embeddings or "tie_word_embeddings" in config:  # the published config leaves the tie implicit
        config["tie_word_embeddings"] = identity.tie_embeddings
    with open(f"{directory}/config.json", "w") as f:
        json.dump(dict(sorted(config.items())), f, indent=2)
        f.write("\n")
    generation = json.loads(provenance.get("hf_generation_config") or "{}") or {
        "bos_token_id": config.get("bos_token_id", 1), "eos_token_id": config.get("eos_token_id", 2)}
    with open(f"{directory}/generation_config.json", "w") as f:
        json.dump(generation, f, indent=2)
        f.write("\n")
