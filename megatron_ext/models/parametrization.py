"""How weights are drawn and which multipliers apply: standard parametrization or μP.

Both come from the self-contained `mup` package (rules per parameter class). This module turns
the model identity into rules and exposes what the model builder, config and optimizer need.
"""

from __future__ import annotations

import math
import re

import torch
from mup import MuPConfig, MuPRules, StandardRules, init_
from mup.rules import ParamClass
from mup.optimizer import mup_config_overrides


class Parametrization:
    def __init__(self, rules, head_dim: int, num_attention_heads: int | None = None,
                 num_query_groups: int | None = None):
        self.rules = rules
        self.head_dim = head_dim
        self.num_attention_heads, self.num_query_groups = num_attention_heads, num_query_groups
        self.multipliers = {"embedding": rules.embedding_multiplier, "logits": rules.output_multiplier,
                            "softmax_scale": rules.softmax_scale(head_dim),
                            "residual_branch": rules.residual_branch_multiplier}

    def sample(self, name: str, shape, generator, device) -> torch.Tensor:
        """The full (unsharded) fp32 tensor for parameter `name`, from `generator` alone."""
        full = init_(torch.empty(shape, device=device), name, self.rules, generator)
        if self.rules.zero_init_query and _QKV_WEIGHT.search(name):
            full[query_rows(self.num_attention_heads, self.num_query_groups, self.head_dim)] = 0.0
        return full

    def optimizer_overrides(self, optimizer_config):
        """megatron-core config_overrides: per-class LR (μP 1/m), no weight decay on biases/gains."""
        return mup_config_overrides(self.rules, optimizer_config)


_QKV_WEIGHT = re.compile(r"(^|\.)linear_qkv\.weight$")


def query_rows(num_heads: int, num_query_groups: int, head_dim: int) -> torch.Tensor:
    """Row indices of the queries in megatron-core's fused linear_qkv weight, whose rows are grouped by
    key/value group: [the group's heads_per_group query heads, its key head, its value head] x groups
    (SelfAttention.get_query_key_value_tensors splits them so)."""
    per_group = num_heads // num_query_groups
    block = (per_group + 2) * head_dim
    return torch.cat([torch.arange(g * block, g * block + per_group * head_dim) for g in range(num_query_groups)])


def mup_config(identity) -> MuPConfig:
    shapes = dict(num_layers=identity.num_layers, ffn_hidden_size=identity.ffn_hidden_size,
                  base_ffn_hidden_size=identity.mup_base_ffn_hidden_size,
                  num_attention_heads=identity.num_attention_heads,
                  base_num_attention_heads=identity.mup_base_num_attention_heads, head_dim=identity.kv_channels,
                  base_head_dim=identity.mup_base_head_dim,
                  base_init_std=identity.mup_base_init_std or identity.init_method_std,
                  embeddings_scale=identity.mup_embeddings_scale, output_alpha=identity.mup_output_alpha,
                  scale_qk_dot_by_d=identity.mup_scale_qk_dot_by_d, scale_adam_eps=identity.mup_scale_adam_eps,
                  scale_weight_decay=identity.mup_scale_weight_decay, base_num_layers=identity.mup_base_num_layers,
                  zero_init_query=identity.mup_zero_init_query, zero_init_readout=identity.mup_zero_init_readout)
    if identity.mup_base_hidden_size:
        return MuPConfig(hidden_size=identity.hidden_size, base_hidden_size=identity.mup_base_hidden_size, **shapes)
    return MuPConfig.from_width_scale(identity.mup_width_scale, identity.hidden_size, **shapes)


class OpenLMRules(StandardRules):
    """open_lm's initialisation (mlfoundations/open_lm 9bb92ef, model.py:152-156, 297-302, 374-376): every
    matrix truncated normal cut at +-3 std with std 1/sqrt(fan-in); the residual outputs (attention out, MLP
    down) further / sqrt(2 (layer + 1)), layer counted from 0. Norm gains 1, as in both."""

    truncation_sigmas = 3.0

    def __init__(self, identity):
        super().__init__(1.0, identity.num_layers)
        self.fan_in = {"linear_proj": identity.num_attention_heads * identity.kv_channels,
                       "linear_fc2": identity.ffn_hidden_size}
        self.hidden_size = identity.hidden_size

    def init_std(self, name_or_class) -> float:
        cls = self.param_class(name_or_class)
        if cls in (ParamClass.BIAS, ParamClass.NORM):
            return 0.0
        if cls is not ParamClass.RESIDUAL_OUT:
            return 1.0 / math.sqrt(self.hidden_size)  # embedding, QKV, fc1 and the output layer read width H
        match = _RESIDUAL_OUT.search(name_or_class) if isinstance(name_or_class, str) else None
        if match is None:
            raise ValueError(f"open_lm init needs the parameter's name with its layer number, not {name_or_class!r}")
        layer, module = int(match.group(1)), match.group(2)
        return 1.0 / math.sqrt(self.fan_in[module]) / math.sqrt(2.0 * (layer + 1))


_RESIDUAL_OUT = re.compile(r"layers\.(\d+)\..*(linear_proj|linear_fc2)\.weight$")


def build_parametrization(identity) -> Parametrization:
    try:
        if identity.use_mup:
            rules = MuPRules(mup_config(identity))
        elif identity.init_method == "open_lm":
            rules = OpenLMRules(identity)
        else:
            rules = StandardRules(identity.init_method_std, identity.num_layers)
    except ValueError as exc:
        raise SystemExit(f"error: μP flags: {exc}") from exc
    return Parametrization(rules, identity.kv_channels, identity.num_attention_heads, identity.num_query_groups)
