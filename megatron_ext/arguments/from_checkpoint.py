"""Model flags recorded in a checkpoint become defaults when resuming it with --load, so a user (or a
converted HuggingFace checkpoint) need not repeat them. Explicit flags still win."""

from __future__ import annotations

import os

import torch

from megatron_ext.checkpoint.paths import existing_iteration_dir

# Flags that describe the model, not the run.
MODEL_FLAGS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "group_query_attention",
               "num_query_groups", "kv_channels", "max_position_embeddings", "seq_length", "normalization",
               "norm_epsilon", "add_bias_linear", "add_qkv_bias", "rotary_percent", "rotary_base",
               "rotary_interleaved", "tie_embeddings", "vocab_size", "make_vocab_size_divisible_by",
               "init_method_std", "use_mup", "mup_base_hidden_size", "mup_width_scale", "mup_base_ffn_hidden_size",
               "mup_base_num_attention_heads", "mup_embeddings_scale", "mup_output_alpha",
               "mup_scale_qk_dot_by_d", "mup_base_init_std", "mup_scale_adam_eps")


# The tokenizer a checkpoint was trained (or imported) with: --load needs no tokenizer flags either.
TOKENIZER_FLAGS = ("tokenizer_type", "tokenizer_model", "special_tokens", "vocab_pad_to")


def _saved_args(root: str) -> dict:
    """The flags saved in ROOT's latest checkpoint; {} when there is none yet (or it cannot be read:
    load_checkpoint reports the damage with the fix)."""
    latest = os.path.join(root, "latest_checkpointed_iteration.txt")
    if not os.path.isfile(latest):
        return {}
    iteration = open(latest).read().strip()
    common = os.path.join(existing_iteration_dir(root, int(iteration)), "common.pt") if iteration.isdigit() else ""
    if not os.path.isfile(common):
        return {}
    try:
        return torch.load(common, map_location="cpu", weights_only=True).get("args", {})
    except Exception:
        return {}


def checkpoint_model_flags(root: str) -> dict:
    """The model flags saved in ROOT's latest checkpoint; {} when there is none yet."""
    saved = _saved_args(root)
    return {key: saved[key] for key in MODEL_FLAGS if saved.get(key) is not None}


def checkpoint_tokenizer_flags(root: str) -> dict:
    """The tokenizer flags saved in ROOT's latest checkpoint. A checkpoint that carries its tokenizer
    (ROOT/tokenizer, as tools/convert_from_hf.py writes) supplies it when the recorded path is gone
    (the checkpoint was copied elsewhere)."""
    saved = _saved_args(root)
    flags = {key: saved[key] for key in TOKENIZER_FLAGS if saved.get(key) is not None}
    carried = os.path.join(root, "tokenizer")
    if flags.get("tokenizer_model") and not os.path.exists(flags["tokenizer_model"]) and os.path.isdir(carried):
        flags["tokenizer_model"] = carried
    return flags
