"""transformers' LlamaForCausalLM <-> Megatron: config fields, tensor names and layouts.

HF names: model.embed_tokens, model.layers.N.{input_layernorm, self_attn.{q,k,v,o}_proj,
post_attention_layernorm, mlp.{gate,up,down}_proj}, model.norm, lm_head. nn.Linear weights are
[out, in] like Megatron's, so only the fused tensors change layout: q/k/v <-> linear_qkv (grouped per
query group) and gate/up <-> linear_fc1 ([gate; up]). WEIGHTS below is the map both directions run
(weight_maps.py); the config functions translate config.json to and from the ModelIdentity.

Exporting a model this format cannot express exactly is refused, except two cases that have an
exact equivalent: interleaved RoPE (q/k rows reordered into "rotate half" order) and μP (multipliers
folded into the weights, so stock consumers compute the same logits). The export records the model identity
in config.json (hf_arch.IDENTITY_KEY), so an import of it undoes both folds and trains as the same μP model.
"""

from __future__ import annotations

import json

import torch

from megatron_ext.checkpoint.hf_arch import DTYPE_NAMES, IDENTITY_KEY, ConversionError
from megatron_ext.checkpoint.weight_maps import (Entry, Fuse, PackQKV, RopeOrder, Scale, VocabRows,
                                                 embedding_multiplier, key_scale, logits_multiplier,
                                                 residual_branch_multiplier)
from megatron_ext.models.identity import ModelIdentity

NAME = "llama"


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
    if identity.qk_norm:
        raise ConversionError("this model normalises queries and keys, which LlamaForCausalLM cannot express; "
                              "export it with --model-format openlm (the full-width query/key norm of DCLM)")
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

def _tied_mup(m: ModelIdentity) -> bool:
    return m.tie_embeddings and m.use_mup  # folding the multipliers unties the two uses of the embedding


def _attention_bias(m: ModelIdentity) -> bool:
    return m.qkv_bias  # attention_bias covers q, k, v and o alike


def _mlp_bias(m: ModelIdentity) -> bool:
    return m.add_bias_linear


L, MG = "model.layers.{layer}.", "decoder.layers.{layer}."
ATTN = L + "self_attn."
# q/k/v -> linear_qkv: k carries μP's second 1/sqrt(d); "rotate half" rows, reordered for an interleaved model.
QKV = (Scale(key_scale, on=(1,)), RopeOrder(hf_interleaved=False), PackQKV())
BRANCH = Scale(residual_branch_multiplier)  # depth-μP's branch multiplier, folded into o_proj and down_proj
NO_O_BIAS = ("with attention_bias and no mlp_bias the Megatron model (--add-qkv-bias) has no attention output "
             "bias")

# Megatron tensor <- HF tensor(s), steps in import order; an export runs them backwards.
WEIGHTS = (
    Entry("embedding.word_embeddings.weight", "model.embed_tokens.weight", Scale(embedding_multiplier), VocabRows()),
    Entry("embedding.word_embeddings.weight", "lm_head.weight", Scale(logits_multiplier), VocabRows(),
          when=_tied_mup, export_only=True),
    Entry(MG + "input_layernorm.weight", L + "input_layernorm.weight"),
    Entry(MG + "self_attention.linear_qkv.weight",
          (ATTN + "q_proj.weight", ATTN + "k_proj.weight", ATTN + "v_proj.weight"), *QKV),
    Entry(MG + "self_attention.linear_proj.weight", ATTN + "o_proj.weight", BRANCH),
    Entry(MG + "pre_mlp_layernorm.weight", L + "post_attention_layernorm.weight"),
    Entry(MG + "mlp.linear_fc1.weight", (L + "mlp.gate_proj.weight", L + "mlp.up_proj.weight"), Fuse()),
    Entry(MG + "mlp.linear_fc2.weight", L + "mlp.down_proj.weight", BRANCH),
    Entry(MG + "self_attention.linear_qkv.bias", (ATTN + "q_proj.bias", ATTN + "k_proj.bias", ATTN + "v_proj.bias"),
          *QKV, when=_attention_bias),
    Entry(MG + "self_attention.linear_proj.bias", ATTN + "o_proj.bias", BRANCH, when=_attention_bias, absent=NO_O_BIAS),
    Entry(MG + "mlp.linear_fc1.bias", (L + "mlp.gate_proj.bias", L + "mlp.up_proj.bias"), Fuse(), when=_mlp_bias),
    Entry(MG + "mlp.linear_fc2.bias", L + "mlp.down_proj.bias", BRANCH, when=_mlp_bias),
    Entry("decoder.final_layernorm.weight", "model.norm.weight"),
    Entry("output_layer.weight", "lm_head.weight", Scale(logits_multiplier), VocabRows()),
)


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
