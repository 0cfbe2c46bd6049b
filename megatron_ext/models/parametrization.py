"""Standard parametrization (Megatron-LM's): how weights are drawn and which multipliers apply.

The μP counterpart lives in the self-contained `mup` package; `build_parametrization` picks one.
Both expose: sample(global_name, full_shape, generator, device), multipliers (embedding, logits,
softmax_scale) and optimizer_overrides (per-parameter LR multipliers, no weight decay on gains/biases).
"""

from __future__ import annotations

import math

import torch

_RESIDUAL_OUT = (".linear_proj.weight", ".linear_fc2.weight")


class StandardParametrization:
    def __init__(self, init_method_std: float, num_layers: int):
        self.std = init_method_std
        self.residual_std = init_method_std / math.sqrt(2.0 * num_layers)
        self.multipliers: dict = {}

    def sample(self, name: str, shape, generator, device) -> torch.Tensor:
        if name.endswith(".bias"):
            return torch.zeros(shape, device=device)
        if "layernorm" in name:
            return torch.ones(shape, device=device)
        std = self.residual_std if name.endswith(_RESIDUAL_OUT) else self.std
        return torch.empty(shape, device=device).normal_(0.0, std, generator=generator)

    def optimizer_overrides(self):
        """None: megatron-core's standard groups (no weight decay on biases and 1-D norm gains)."""
        return None


def build_parametrization(args):
    if args.use_mup:
        from megatron_ext.models.mup_bridge import MuParametrization

        return MuParametrization(args)
    return StandardParametrization(args.init_method_std, args.num_layers)
