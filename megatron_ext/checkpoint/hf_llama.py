"""transformers' LlamaForCausalLM <-> Megatron: config fields, tensor names and layouts.

HF names: model.embed_tokens, model.layers.N.{input_layernorm, self_attn.{q,k,v,o}_proj,
post_attention_layernorm, mlp.{gate,up,down}_proj}, model.norm, lm_head. nn.Linear weights are
[out, in] like Megatron's, so only the fused tensors change layout: q/k/v <-> linear_qkv (grouped per
query group) and gate/up <-> linear_fc1 ([gate; up]).

Exporting a model this format cannot express exactly is refused, except two cases that have an
exact equivalent: interleaved RoPE (q/k rows reordered into "rotate half" order) and μP (multipliers
folded into the weights, so stock consumers compute the same logits). The export records the model identity
in config.json (hf_arch.IDENTITY_KEY), so an import of it undoes both folds and trains as the same μP model.
"""

from __future__ import annotations

import json
import math

import torch

from megatron_ext.checkpoint.hf_arch import (IDENTITY_KEY, ConversionError, Group, half_split_to_interleaved,
                                             interleaved_to_half_split, pack_qkv, pad_vocab, permute_head_channels,
                                             unpack_qkv)
from megatron_ext.models.identity import ModelIdentity

NAME = "llama"
DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def matches(config: dict) -> bool:
    return config.get("model_type") == "llama" or "LlamaForCausalLM" in (config.get("architectures") or [])


def _rope(config: dict) -> tuple[float, str]:
    """(theta, type); newer transformers write rope_parameters, older rope_theta + rope_scaling."""
    params = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or {}
    theta = params.get("rope_theta", config.get("rope_theta", 10000.0))
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    return float(theta), kind


# Identity fields config.json states itself; the others (interleaved RoPE, μP, a tie that μP's folding
# unties) are folded into the weights and come back from the recorded identity.
EXPRESSED = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
             "kv_channels", "normalization", "norm_epsilon", "add_bias_linear", "add_qkv_bias", "rotary_percent",
             "rotary_base", "vocab_size", "max_position_embeddings")


def identity_from_config(config: dict) -> ModelIdentity:
    """The model a LlamaConfig describes; refuses what we cannot run."""
    theta, rope_type = _rope(config)
    if rope_type != "default":
        raise ConversionError(f"config.json asks for RoPE scaling {rope_type!r}; this project's attention implements "
                              "plain RoPE only, so the converted model would compute different outputs")
    if config.get("hidden_act", "silu") != "silu":
        raise ConversionError(f"config.json has hidden_act={config['hidden_act']!r}; the Megatron model is SwiGLU "
                              "(silu) only")
    attention_bias, mlp_bias = bool(config.get("attention_bias")), bool(config.get("mlp_bias"))
    if mlp_bias and not attention_bias:
        raise ConversionError("config.json has mlp_bias without attention_bias; Megatron's --add-bias-linear "
                              "adds biases to both, so this combination has no exact equivalent")
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    return ModelIdentity(
        num_layers=config["num_hidden_layers"], hidden_size=hidden, ffn_hidden_size=config["intermediate_size"],
        num_attention_heads=heads, num_query_groups=config.get("num_key_value_heads") or heads,
        kv_channels=config.get("head_dim") or hidden // heads, normalization="RMSNorm",
        norm_epsilon=config.get("rms_norm_eps", 1e-6), add_bias_linear=mlp_bias, add_qkv_bias=attention_bias,
        rotary_percent=1.0, rotary_base=theta, rotary_interleaved=False,
        tie_embeddings=bool(config.get("tie_word_embeddings", False)), vocab_size=config["vocab_size"],
        max_position_embeddings=config.get("max_position_embeddings", 2048),
    )


def check_exportable(identity: ModelIdentity) -> None:
    if identity.layer_norm:
        raise ConversionError("this model uses LayerNorm, which LlamaForCausalLM cannot express (RMSNorm only); "
                              "export it with --model-format crystalcoder")
    if identity.rotary_percent != 1.0:
        raise ConversionError(f"this model applies RoPE to {identity.rotary_percent:.0%} of each head; "
                              "LlamaForCausalLM rotates whole heads. Export it with --model-format crystalcoder")


def ignorable(name: str, identity: ModelIdentity) -> bool:
    """HF tensors that carry no information for Megatron: RoPE caches saved by old transformers, and
    the copy of a tied embedding."""
    return name.endswith("rotary_emb.inv_freq") or (identity.tie_embeddings and name == "lm_head.weight")


# ---- tensors ----------------------------------------------------------------------------------

def to_megatron(group: Group, identity: ModelIdentity, get) -> dict:
    """Megatron tensors of one group; get(hf_name) returns an HF tensor. For a model whose export folded μP
    or interleaved RoPE into the weights (its identity says so), the folds are undone."""
    if group.name == "embedding":
        weight = _scaled(get("model.embed_tokens.weight"), 1.0 / identity.embedding_multiplier)
        return {"embedding.word_embeddings.weight": pad_vocab(weight, identity.padded_vocab_size)}
    if group.name == "final norm":
        return {"decoder.final_layernorm.weight": get("model.norm.weight")}
    if group.name == "output":
        weight = _scaled(get("lm_head.weight"), 1.0 / identity.logits_multiplier)
        return {"output_layer.weight": pad_vocab(weight, identity.padded_vocab_size)}
    hf, mg = f"model.layers.{group.layer}.", f"decoder.layers.{group.layer}."
    attn = hf + "self_attn."
    q, k = _interleaved_order(identity, get(attn + "q_proj.weight"), _scaled(get(attn + "k_proj.weight"),
                                                                          1.0 / _k_scale(identity)))
    out = {
        mg + "input_layernorm.weight": get(hf + "input_layernorm.weight"),
        mg + "self_attention.linear_qkv.weight": pack_qkv(q, k, get(attn + "v_proj.weight"),
                                                          identity.num_query_groups),
        mg + "self_attention.linear_proj.weight": get(attn + "o_proj.weight"),
        mg + "pre_mlp_layernorm.weight": get(hf + "post_attention_layernorm.weight"),
        mg + "mlp.linear_fc1.weight": torch.cat([get(hf + "mlp.gate_proj.weight"), get(hf + "mlp.up_proj.weight")]),
        mg + "mlp.linear_fc2.weight": get(hf + "mlp.down_proj.weight"),
    }
    if identity.qkv_bias:
        q_bias, k_bias = _interleaved_order(identity, get(attn + "q_proj.bias"),
                                            _scaled(get(attn + "k_proj.bias"), 1.0 / _k_scale(identity)))
        out[mg + "self_attention.linear_qkv.bias"] = pack_qkv(q_bias, k_bias, get(attn + "v_proj.bias"),
                                                              identity.num_query_groups)
    if identity.add_bias_linear:
        out[mg + "self_attention.linear_proj.bias"] = get(attn + "o_proj.bias")
        out[mg + "mlp.linear_fc1.bias"] = torch.cat([get(hf + "mlp.gate_proj.bias"), get(hf + "mlp.up_proj.bias")])
        out[mg + "mlp.linear_fc2.bias"] = get(hf + "mlp.down_proj.bias")
    elif identity.qkv_bias:  # attention_bias only: Megatron has no o_proj bias, so it must be zero
        bias = get(attn + "o_proj.bias")
        if not bias.is_meta and bool(bias.any()):
            raise ConversionError(f"{attn}o_proj.bias is not zero, but with attention_bias and no mlp_bias the "
                                  "Megatron model (--add-qkv-bias) has no attention output bias")
    return out


def _scaled(tensor: torch.Tensor, scale: float) -> torch.Tensor:
    # In fp32, so a bf16 weight is rounded once (on the final cast), not twice.
    return tensor if scale == 1.0 else tensor.float() * scale


def _k_scale(identity: ModelIdentity) -> float:
    """μP's 1/d attention becomes LLaMA's 1/sqrt(d) when k carries the other 1/sqrt(d)."""
    return 1.0 / math.sqrt(identity.kv_channels) if identity.attention_scores_by_d else 1.0


def _interleaved_order(identity: ModelIdentity, q, k):
    """An export's "rotate half" q/k rows back in the interleaved order the model rotates (import)."""
    if not identity.rotary_interleaved:
        return q, k
    perm = half_split_to_interleaved(identity.kv_channels, identity.rotary_dim)
    return permute_head_channels(q, identity.kv_channels, perm), permute_head_channels(k, identity.kv_channels, perm)


def to_hf(group: Group, identity: ModelIdentity, t: dict) -> dict:
    """HF tensors of one group from its Megatron tensors (t: Megatron name -> tensor)."""
    vocab = identity.vocab_size
    if group.name == "embedding":
        weight = t["embedding.word_embeddings.weight"][:vocab]
        out = {"model.embed_tokens.weight": _scaled(weight, identity.embedding_multiplier)}
        if identity.tie_embeddings and identity.use_mup:  # folding the multipliers unties the two uses
            out["lm_head.weight"] = _scaled(weight, identity.logits_multiplier)
        return out
    if group.name == "final norm":
        return {"model.norm.weight": t["decoder.final_layernorm.weight"]}
    if group.name == "output":
        return {"lm_head.weight": _scaled(t["output_layer.weight"][:vocab], identity.logits_multiplier)}
    hf, mg = f"model.layers.{group.layer}.", f"decoder.layers.{group.layer}."
    attn = hf + "self_attn."
    q, k, v = unpack_qkv(t[mg + "self_attention.linear_qkv.weight"], identity)
    biases = (unpack_qkv(t[mg + "self_attention.linear_qkv.bias"], identity) if identity.qkv_bias else None)
    q, k, biases = _rotate_half_order(identity, q, k, biases)
    k_scale = _k_scale(identity)
    gate, up = torch.chunk(t[mg + "mlp.linear_fc1.weight"], 2)
    out = {
        hf + "input_layernorm.weight": t[mg + "input_layernorm.weight"],
        attn + "q_proj.weight": q, attn + "k_proj.weight": _scaled(k, k_scale), attn + "v_proj.weight": v,
        attn + "o_proj.weight": t[mg + "self_attention.linear_proj.weight"],
        hf + "post_attention_layernorm.weight": t[mg + "pre_mlp_layernorm.weight"],
        hf + "mlp.gate_proj.weight": gate, hf + "mlp.up_proj.weight": up,
        hf + "mlp.down_proj.weight": t[mg + "mlp.linear_fc2.weight"],
    }
    if identity.qkv_bias:  # attention_bias covers q, k, v and o alike
        out[attn + "q_proj.bias"], out[attn + "k_proj.bias"], out[attn + "v_proj.bias"] = (
            biases[0], _scaled(biases[1], k_scale), biases[2])
        proj_bias = t.get(mg + "self_attention.linear_proj.bias")
        out[attn + "o_proj.bias"] = proj_bias if proj_bias is not None else q.new_zeros(identity.hidden_size)
    if identity.add_bias_linear:
        gate_bias, up_bias = torch.chunk(t[mg + "mlp.linear_fc1.bias"], 2)
        out[hf + "mlp.gate_proj.bias"], out[hf + "mlp.up_proj.bias"] = gate_bias, up_bias
        out[hf + "mlp.down_proj.bias"] = t[mg + "mlp.linear_fc2.bias"]
    return out


def _rotate_half_order(identity: ModelIdentity, q, k, biases):
    if not identity.rotary_interleaved:
        return q, k, biases
    perm = interleaved_to_half_split(identity.kv_channels, identity.rotary_dim)
    d = identity.kv_channels
    q, k = permute_head_channels(q, d, perm), permute_head_channels(k, d, perm)
    if biases is not None:
        biases = (permute_head_channels(biases[0], d, perm), permute_head_channels(biases[1], d, perm), biases[2])
    return q, k, biases


# ---- config -----------------------------------------------------------------------------------

def write_config(identity: ModelIdentity, provenance: dict, directory: str, dtype: torch.dtype) -> None:
    """config.json and generation_config.json, through transformers' own LlamaConfig so that the file
    is what this transformers version writes and reads. Fields Megatron does not model (token ids,
    initializer_range, ...) come from the imported config (provenance's hf_config) when there is one."""
    from transformers import GenerationConfig, LlamaConfig

    base = json.loads(provenance.get("hf_config") or "{}")
    fields = {k: v for k, v in base.items() if k not in ("transformers_version", "rope_theta", "rope_scaling",
                                                           "torch_dtype", IDENTITY_KEY)} if matches(base) else {}
    fields.update(
        architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=identity.hidden_size,
        intermediate_size=identity.ffn_hidden_size, num_hidden_layers=identity.num_layers,
        num_attention_heads=identity.num_attention_heads, num_key_value_heads=identity.num_query_groups,
        head_dim=identity.kv_channels, hidden_act="silu", rms_norm_eps=identity.norm_epsilon,
        max_position_embeddings=identity.max_position_embeddings, vocab_size=identity.vocab_size,
        tie_word_embeddings=identity.tie_embeddings and not identity.use_mup,
        attention_bias=identity.qkv_bias, mlp_bias=identity.add_bias_linear,
        rope_parameters={"rope_theta": identity.rotary_base, "rope_type": "default"}, dtype=DTYPE_NAMES[dtype],
        **{IDENTITY_KEY: identity.to_checkpoint()},
    )
    config = LlamaConfig(**fields)
    config.save_pretrained(directory)
    generation = json.loads(provenance.get("hf_generation_config") or "{}")
    if generation:
        generation = GenerationConfig(**{k: v for k, v in generation.items() if k != "transformers_version"})
    else:
        generation = GenerationConfig.from_model_config(config)
    generation.save_pretrained(directory)
