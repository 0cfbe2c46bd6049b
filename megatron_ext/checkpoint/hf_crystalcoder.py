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

from megatron_ext.checkpoint.hf_arch import (IDENTITY_KEY, ConversionError, Group, half_split_to_interleaved,
                                             pack_qkv, pad_vocab, permute_head_channels, unpack_qkv)
from megatron_ext.models.identity import ModelIdentity

NAME = "crystalcoder"
PUBLISHED_ROTARY_BASE = 10000.0  # fixed in the published modeling code
AUTO_MAP = {"AutoConfig": "configuration_crystalcoder.CrystalCoderConfig",
            "AutoModel": "modeling_crystalcoder.CrystalCoderModel",
            "AutoModelForCausalLM": "modeling_crystalcoder.CrystalCoderLMHeadModel"}
DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


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

def to_megatron(group: Group, identity: ModelIdentity, get) -> dict:
    if group.name == "embedding":
        return {"embedding.word_embeddings.weight": pad_vocab(get("transformer.wte.weight"), identity.padded_vocab_size)}
    if group.name == "final norm":
        return {"decoder.final_layernorm.weight": get("transformer.ln_f.weight"),
                "decoder.final_layernorm.bias": get("transformer.ln_f.bias")}
    if group.name == "output":
        return {"output_layer.weight": pad_vocab(get("lm_head.weight"), identity.padded_vocab_size)}
    hf, mg = f"transformer.h.{group.layer}.", f"decoder.layers.{group.layer}."
    h = identity.hidden_size
    qkv_w = get(hf + "attn.c_attn.weight").t()  # [3H, H]: q, k, v blocks of H rows
    qkv_b = get(hf + "attn.c_attn.bias")
    return {
        mg + "input_layernorm.weight": get(hf + "ln_1.weight"),
        mg + "input_layernorm.bias": get(hf + "ln_1.bias"),
        mg + "self_attention.linear_qkv.weight": pack_qkv(*torch.split(qkv_w, h), identity.num_query_groups),
        mg + "self_attention.linear_qkv.bias": pack_qkv(*torch.split(qkv_b, h), identity.num_query_groups),
        mg + "self_attention.linear_proj.weight": get(hf + "attn.c_proj.weight").t(),
        mg + "self_attention.linear_proj.bias": get(hf + "attn.c_proj.bias"),
        mg + "pre_mlp_layernorm.weight": get(hf + "ln_2.weight"),
        mg + "pre_mlp_layernorm.bias": get(hf + "ln_2.bias"),
        mg + "mlp.linear_fc1.weight": torch.cat([get(hf + "mlp.c_fc2.weight").t(), get(hf + "mlp.c_fc.weight").t()]),
        mg + "mlp.linear_fc1.bias": torch.cat([get(hf + "mlp.c_fc2.bias"), get(hf + "mlp.c_fc.bias")]),
        mg + "mlp.linear_fc2.weight": get(hf + "mlp.c_proj.weight").t(),
        mg + "mlp.linear_fc2.bias": get(hf + "mlp.c_proj.bias"),
    }


def to_hf(group: Group, identity: ModelIdentity, t: dict) -> dict:
    vocab = identity.vocab_size
    if group.name == "embedding":
        return {"transformer.wte.weight": t["embedding.word_embeddings.weight"][:vocab]}
    if group.name == "final norm":
        return {"transformer.ln_f.weight": t["decoder.final_layernorm.weight"],
                "transformer.ln_f.bias": t["decoder.final_layernorm.bias"]}
    if group.name == "output":
        return {"lm_head.weight": t["output_layer.weight"][:vocab]}
    hf, mg = f"transformer.h.{group.layer}.", f"decoder.layers.{group.layer}."
    weight = t[mg + "self_attention.linear_qkv.weight"]

    def bias(name, size):  # Conv1D always has a bias; a bias-free Megatron layer exports zeros
        found = t.get(mg + name)
        return found if found is not None else weight.new_zeros(size)

    q, k, v = unpack_qkv(weight, identity)
    qb, kb, vb = unpack_qkv(bias("self_attention.linear_qkv.bias", weight.shape[0]), identity)
    if not identity.rotary_interleaved:  # half-split RoPE: move each rotated pair to GPT-J's order
        perm = half_split_to_interleaved(identity.kv_channels, identity.rotary_dim)
        q, k, qb, kb = (permute_head_channels(x, identity.kv_channels, perm) for x in (q, k, qb, kb))
    gate, up = torch.chunk(t[mg + "mlp.linear_fc1.weight"], 2)
    gate_b, up_b = torch.chunk(bias("mlp.linear_fc1.bias", 2 * identity.ffn_hidden_size), 2)
    return {
        hf + "ln_1.weight": t[mg + "input_layernorm.weight"],
        hf + "ln_1.bias": t[mg + "input_layernorm.bias"],
        hf + "attn.c_attn.weight": torch.cat([q, k, v]).t(),
        hf + "attn.c_attn.bias": torch.cat([qb, kb, vb]),
        hf + "attn.c_proj.weight": t[mg + "self_attention.linear_proj.weight"].t(),
        hf + "attn.c_proj.bias": bias("self_attention.linear_proj.bias", identity.hidden_size),
        hf + "ln_2.weight": t[mg + "pre_mlp_layernorm.weight"],
        hf + "ln_2.bias": t[mg + "pre_mlp_layernorm.bias"],
        hf + "mlp.c_fc.weight": up.t(), hf + "mlp.c_fc.bias": up_b,
        hf + "mlp.c_fc2.weight": gate.t(), hf + "mlp.c_fc2.bias": gate_b,
        hf + "mlp.c_proj.weight": t[mg + "mlp.linear_fc2.weight"].t(),
        hf + "mlp.c_proj.bias": bias("mlp.linear_fc2.bias", identity.hidden_size),
    }


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
