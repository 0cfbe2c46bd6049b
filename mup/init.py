"""Pure initialisation of one full (unsharded) parameter tensor from the rules.

The caller initialises the FULL tensor with a generator seeded identically on every rank and
then takes its shard, so the result does not depend on the parallel layout.
"""

from __future__ import annotations

import math

import torch

from .rules import Rules

# Truncation at +-2 sigma (Cerebras' and Crystal's convention; sigma is the std of the normal
# BEFORE truncation). The realised std of such samples is sigma * this factor (~0.8796):
#   var / sigma^2 = 1 - 2 * 2 * pdf(2) / (cdf(2) - cdf(-2)).
TRUNC_SIGMAS = 2.0
_pdf2 = math.exp(-0.5 * TRUNC_SIGMAS ** 2) / math.sqrt(2.0 * math.pi)
_mass = math.erf(TRUNC_SIGMAS / math.sqrt(2.0))
TRUNC_NORMAL_STD_FACTOR = math.sqrt(1.0 - 2.0 * TRUNC_SIGMAS * _pdf2 / _mass)


def init_(tensor: torch.Tensor, name: str, rules: Rules,
          generator: torch.Generator) -> torch.Tensor:
    """Fill `tensor` in place as `rules` prescribe for parameter `name` and return it.

    Matrices: truncated normal N(0, std^2) cut at +-2 std (std = rules.init_std(name));
    biases: 0; norm gains: 1. Sampling happens in float32 on the generator's device and is
    copied in, so a bf16 / GPU tensor gets the same values as an fp32 / CPU one for the same
    generator state. Raises if the tensor's fan-in is not the global one (i.e. a shard was
    passed by mistake).
    """
    fill = rules.init_fill(name)
    with torch.no_grad():
        if fill is not None:
            return tensor.fill_(fill)
        expected = rules.expected_fan_in(name)
        if tensor.dim() != 2:
            raise ValueError(f"mup.init_: {name} should be a matrix, got shape {tuple(tensor.shape)}")
        if expected is not None and tensor.shape[1] != expected:
            raise ValueError(
                f"mup.init_: {name} has fan-in {tensor.shape[1]} but the global fan-in is "
                f"{expected}; initialise the full unsharded tensor, then shard it")
        std = rules.init_std(name)
        cut = getattr(rules, "truncation_sigmas", TRUNC_SIGMAS)  # rules that follow another recipe's cut
        sample = torch.empty(tensor.shape, dtype=torch.float32, device=generator.device)
        torch.nn.init.trunc_normal_(sample, mean=0.0, std=std, a=-cut * std, b=cut * std, generator=generator)
        return tensor.copy_(sample)
