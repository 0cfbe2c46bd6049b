"""open_lm's Hugging Face layout (TRI-ML/DCLM-1B, DCLM-1B-IT) <-> Megatron.

Facts from mlfoundations/open_lm at 9bb92ef ("model.py" is open_lm/model.py); tests/models/openlm_reference.py
holds an independent forward of the same math that the tests compare against.
  * Names: the HF wrapper keeps open_lm's Transformer as `.model` (hf/modeling_openlm.py:49): model.tok_embeddings,
    model.layers.N.{attention_norm, attention.{in_proj, q_norm, k_norm, out_proj}, ffn_norm,
    feed_forward.{w12, w3}}, model.norm, model.output; nn.Linear [out, in] like Megatron's.
  * in_proj is [q; k; v], split by chunk(3) (model.py:160): q, k, v blocks of n_heads x head_dim rows each.
  * w12 is [gate; up]: gate, x = w12(x).chunk(2), out = w3(silu(gate) * x) (model.py:234-236), which is
    megatron's linear_fc1 layout as it stands.
  * Norms: DCLM's gain_only_lp_layer_norm, a LayerNorm with a gain and no bias (norms.py:41-44, 141-142); q_norm
    and k_norm are the same norm over the whole n_heads x head_dim projection before the head split
    (model.py:129-144, 162-167): ModelIdentity.qk_norm "full".
  * Rotary: half-split ("rotate_half"), whole head dim, base 10000 (positional_embedding/rotary.py:10-12, 60);
    its inv_freq is a persistent buffer (rotary.py:51) stored with the weights: exported, checked on import.
  * config.json: open_lm's Params as flat keys (hf/modeling_openlm.py:28-38); the first uploads nested them under
    `params_args_dict` with `model_norm`/`qk_norm` (utils/transformers/hf_model.py:18-21). Both are read.
The published repositories carry no modeling files (open_lm's own package loads them): an export has none either,
and says so; a source that had some (config.json auto_map) gets them carried through like CrystalCoder's.
"""

from __future__ import annotations

import json
import sys

import torch

from megatron_ext.checkpoint.hf_arch import DTYPE_NAMES, IDENTITY_KEY, ConversionError
from megatron_ext.checkpoint.weight_maps import Buffer, Entry, PackQKV, Split, VocabRows
from megatron_ext.models.identity import ModelIdentity

NAME = "openlm"
GAIN_ONLY = ("gain_only_lp_layer_norm", "gain_only_layer_norm")
WITH_BIAS = ("default_layer_norm", "lp_layer_norm")


def matches(config: dict) -> bool:
    return config.get("model_type") == "openlm" or any(
        a.lower().startswith("openlm") for a in (config.get("architectures") or []))


def _params(config: dict) -> dict:
    """open_lm's parameters from either config.json shape (flat, or nested under params_args_dict)."""
    return {**config, **(config.get("params_args_dict") or {})}


def ffn_hidden_size(dim: int) -> int:
    """open_lm's SwiGLU width, model.py:254 (5632 for dim 2048)."""
    return 256 * ((int(2 * 4 * dim / 3) + 256 - 1) // 256)


# Identity fields config.json states itself; the rest (init std, μP, vocabulary padding) come back from the
# identity an export records (hf_arch.IDENTITY_KEY).
EXPRESSED = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
             "kv_channels", "normalization", "norm_epsilon", "layernorm_bias", "qk_norm", "add_bias_linear",
             "add_qkv_bias", "rotary_percent", "rotary_base", "rotary_interleaved", "tie_embeddings", "vocab_size",
             "max_position_embeddings")


def identity_from_config(config: dict) -> ModelIdentity:
    """The model an open_lm config.json describes; refuses what the Megatron model cannot compute."""
    p = _params(config)

    def refuse(field, why):
        raise ConversionError(f"config.json has {field}={p.get(field)!r}: {why}; the Megatron model cannot "
                              "reproduce it")

    if p.get("ffn_type", "swiglu") not in ("swiglu", "swiglu_torch"):
        refuse("ffn_type", "only SwiGLU MLPs are supported")
    if p.get("positional_embedding_type", "rotary") != "rotary":
        refuse("positional_embedding_type", "only rotary positions are supported")
    if p.get("post_embed_norm"):
        refuse("post_embed_norm", "a norm after the embedding is not supported")
    if p.get("moe_freq"):
        refuse("moe_freq", "mixture-of-experts layers are not supported")
    if p.get("attn_activation") or p.get("attn_seq_scalar"):
        refuse("attn_activation" if p.get("attn_activation") else "attn_seq_scalar",
               "only softmax attention scaled by 1/sqrt(head_dim) is supported")
    norm_type = p.get("norm_type", p.get("model_norm", "default_layer_norm"))
    if norm_type not in GAIN_ONLY + WITH_BIAS:
        refuse("norm_type" if "norm_type" in p else "model_norm", "only LayerNorm (with or without bias) is supported")
    dim, heads = p["dim"], p["n_heads"]
    return ModelIdentity(
        num_layers=p["n_layers"], hidden_size=dim, ffn_hidden_size=ffn_hidden_size(dim), num_attention_heads=heads,
        num_query_groups=heads, kv_channels=dim // heads, max_position_embeddings=p.get("seq_len", 2048),
        vocab_size=p["vocab_size"], normalization="LayerNorm", norm_epsilon=p.get("norm_eps", 1e-5),
        layernorm_bias=norm_type in WITH_BIAS,
        qk_norm="full" if p.get("apply_qk_norm", p.get("qk_norm", False)) else None,
        add_bias_linear=False, add_qkv_bias=False, rotary_percent=1.0, rotary_base=10000.0,
        rotary_interleaved=False, tie_embeddings=bool(p.get("weight_tying", False)),
    )


def check_exportable(identity: ModelIdentity) -> None:
    problems = []
    if not identity.layer_norm:
        problems.append("it uses RMSNorm (open_lm's layout here is LayerNorm)")
    if identity.qk_norm == "head":
        problems.append("its query/key norm is per head (open_lm's is over the full projection)")
    if identity.num_query_groups != identity.num_attention_heads:
        problems.append("it uses grouped-query attention")
    if identity.add_bias_linear or identity.qkv_bias:
        problems.append("its linear layers have biases")
    if identity.rotary_percent != 1.0 or identity.rotary_interleaved or identity.rotary_base != 10000.0:
        problems.append("its RoPE is not open_lm's (half-split over the whole head, base 10000)")
    if identity.kv_channels * identity.num_attention_heads != identity.hidden_size:
        problems.append("its head dim x heads differs from the hidden size")
    if identity.ffn_hidden_size != ffn_hidden_size(identity.hidden_size):
        problems.append(f"its FFN size {identity.ffn_hidden_size} is not open_lm's "
                        f"{ffn_hidden_size(identity.hidden_size)} for hidden size {identity.hidden_size}")
    if identity.use_mup:
        problems.append("it is a μP model (open_lm's code has no μP multipliers)")
    if problems:
        raise ConversionError("this model cannot be written in open_lm's layout: " + "; ".join(problems) +
                              ". Export it with --model-format llama (RMSNorm) or crystalcoder (LayerNorm)")


def ignorable(name: str, identity: ModelIdentity) -> bool:
    """The tied output copy. (The rotary buffers are BUFFERS below: checked, not ignored.)"""
    return identity.tie_embeddings and name == "model.output.weight"


# ---- tensors ----------------------------------------------------------------------------------

L, MG = "model.layers.{layer}.", "decoder.layers.{layer}."


def _has_bias(m: ModelIdentity) -> bool:
    return m.norm_has_bias


def _has_qk_norm(m: ModelIdentity) -> bool:
    return m.qk_norm == "full"


def _qk_norm_bias(m: ModelIdentity) -> bool:
    return _has_qk_norm(m) and m.norm_has_bias


def rotary_inv_freq(m: ModelIdentity) -> torch.Tensor:
    """open_lm's buffer, computed as rotary.py:60 computes it (float32), so an export matches its files bit for bit."""
    d = m.kv_channels
    return 1.0 / (m.rotary_base ** (torch.arange(0, d, 2).float() / d))


WEIGHTS = (
    Entry("embedding.word_embeddings.weight", "model.tok_embeddings.weight", VocabRows()),
    Entry(MG + "input_layernorm.weight", L + "attention_norm.weight"),
    Entry(MG + "input_layernorm.bias", L + "attention_norm.bias", when=_has_bias),
    Entry(MG + "self_attention.linear_qkv.weight", L + "attention.in_proj.weight", Split(3), PackQKV()),
    Entry(MG + "self_attention.q_layernorm.weight", L + "attention.q_norm.weight", when=_has_qk_norm),
    Entry(MG + "self_attention.q_layernorm.bias", L + "attention.q_norm.bias", when=_qk_norm_bias),
    Entry(MG + "self_attention.k_layernorm.weight", L + "attention.k_norm.weight", when=_has_qk_norm),
    Entry(MG + "self_attention.k_layernorm.bias", L + "attention.k_norm.bias", when=_qk_norm_bias),
    Entry(MG + "self_attention.linear_proj.weight", L + "attention.out_proj.weight"),
    Entry(MG + "pre_mlp_layernorm.weight", L + "ffn_norm.weight"),
    Entry(MG + "pre_mlp_layernorm.bias", L + "ffn_norm.bias", when=_has_bias),
    Entry(MG + "mlp.linear_fc1.weight", L + "feed_forward.w12.weight"),
    Entry(MG + "mlp.linear_fc2.weight", L + "feed_forward.w3.weight"),
    Entry("decoder.final_layernorm.weight", "model.norm.weight"),
    Entry("decoder.final_layernorm.bias", "model.norm.bias", when=_has_bias),
    Entry("output_layer.weight", "model.output.weight", VocabRows()),
    Buffer(L + "attention.pos_embed.inv_freq", rotary_inv_freq),
)


# ---- config -----------------------------------------------------------------------------------

def write_config(identity: ModelIdentity, provenance: dict, directory: str, dtype: torch.dtype) -> None:
    """config.json with open_lm's flat keys as TRI-ML/DCLM-1B publishes them; fields Megatron does not model
    (attn_name, moe_* defaults, ...) come from the imported config when there is one."""
    base = json.loads(provenance.get("hf_config") or "{}")
    config = {"architectures": ["OpenLMModel"], "model_type": "openlm", "params": None, "attn_activation": None,
              "attn_name": "torch_attn", "attn_seq_scalar": None, "attn_seq_scalar_alpha": None,
              "ffn_type": "swiglu_torch", "moe_capacity_factor": 1.25, "moe_expert_model_parallelism": False,
              "moe_freq": 0, "moe_loss_weight": 0.1, "moe_num_experts": None, "moe_top_k": 2,
              "moe_weight_parallelism": False, "positional_embedding_type": "rotary", "post_embed_norm": False}
    if matches(base):
        config.update({k: v for k, v in _params(base).items()
                       if k not in ("params_args_dict", "model_norm", IDENTITY_KEY)})
    qk = identity.qk_norm == "full"
    config.update(dim=identity.hidden_size, n_layers=identity.num_layers, n_heads=identity.num_attention_heads,
                  vocab_size=identity.vocab_size, seq_len=identity.max_position_embeddings,
                  norm_eps=identity.norm_epsilon, apply_qk_norm=qk, qk_norm=qk,
                  norm_type="gain_only_lp_layer_norm" if not identity.layernorm_bias else "lp_layer_norm",
                  weight_tying=identity.tie_embeddings, torch_dtype=DTYPE_NAMES[dtype],
                  **{IDENTITY_KEY: identity.to_checkpoint()})
    with open(f"{directory}/config.json", "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    if "auto_map" not in config:  # as published: no modeling files (a source's auto_map ones are carried through)
        print(f"warning: {directory} is in open_lm's layout, which transformers loads only with open_lm's code "
              "installed (pip install git+https://github.com/mlfoundations/open_lm; then `from open_lm.hf import *` "
              "before AutoModelForCausalLM.from_pretrained), as for TRI-ML/DCLM-1B itself", file=sys.stderr)
    generation = json.loads(provenance.get("hf_generation_config") or "null")
    if generation:
        with open(f"{directory}/generation_config.json", "w") as f:
            json.dump(generation, f, indent=2)
            f.write("\n")
