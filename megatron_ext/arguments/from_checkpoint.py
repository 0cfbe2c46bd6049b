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


def checkpoint_model_flags(root: str) -> dict:
    """The model flags saved in ROOT's latest checkpoint; {} when there is none yet."""
    latest = os.path.join(root, "latest_checkpointed_iteration.txt")
    if not os.path.isfile(latest):
        return {}
    iteration = open(latest).read().strip()
    common = os.path.join(existing_iteration_dir(root, int(iteration)), "common.pt") if iteration.isdigit() else ""
    if not os.path.isfile(common):
        return {}  # load_checkpoint reports the damage with the fix
    try:
        saved = torch.load(common, map_location="cpu", weights_only=True).get("args", {})
    except Exception:
        return {}
    return {key: saved[key] for key in MODEL_FLAGS if saved.get(key) is not None}
