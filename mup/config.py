"""μP configuration: the target model's GLOBAL sizes, the base (proxy) sizes and the μP knobs.

Every size here is the full, unsharded one. Tensor parallelism splits matrices but never
changes a layer's fan-in as μP sees it, so nothing in this package ever looks at a shard size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional


def _check_positive_int(field: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"MuPConfig.{field} must be a positive int, got {value!r}")


def _check_positive_float(field: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"MuPConfig.{field} must be a positive number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"MuPConfig.{field} must be finite, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class MuPConfig:
    """Sizes and multipliers of a μP model (Cerebras / LLM360 Crystal convention).

    hidden_size, ffn_hidden_size, num_attention_heads, head_dim, num_layers describe the model
    being trained (keyword-only fields); base_* describe the small proxy on which the hyperparameters were tuned.
    base_ffn_hidden_size / base_num_attention_heads default to "same ratio as hidden" (their
    width multiplier is then exactly hidden_size / base_hidden_size; computing a base FFN size
    would not even be an integer for Crystal: 10922 / 16). base_head_dim is the proxy's head dim
    when width is scaled through head dim; see attention_width_multiplier.

    Options (all off by default, docs/mup.md "Options"):
    * base_num_layers: depth-μP. Each residual branch (attention, MLP) is multiplied by
      1/sqrt(num_layers / base_num_layers) and every parameter inside the layers trains at
      sqrt(base_num_layers / num_layers) x its LR, so hyperparameters also transfer across depth.
      Without it the proxy must have the target's depth.
    * scale_weight_decay: decoupled weight decay whose per-step effect lr x wd does not depend on
      width: each decayed group's wd is divided by its LR multiplier (hidden matrices: wd x m).
    * zero_init_query / zero_init_readout: the query projection / the untied output layer start at 0.
    * scale_adam_eps: Adam's eps divided by the factor by which every gradient shrinks (m, and the
      branch multiplier's depth factor inside the layers), for every parameter.
    """

    hidden_size: int
    base_hidden_size: int
    num_layers: int
    ffn_hidden_size: int
    base_ffn_hidden_size: Optional[int] = None
    num_attention_heads: int
    base_num_attention_heads: Optional[int] = None
    head_dim: int
    base_head_dim: Optional[int] = None
    base_init_std: float
    embeddings_scale: float = 1.0
    output_alpha: float = 1.0
    scale_qk_dot_by_d: bool = True
    scale_adam_eps: bool = False
    base_num_layers: Optional[int] = None
    scale_weight_decay: bool = False
    zero_init_query: bool = False
    zero_init_readout: bool = False

    def __post_init__(self) -> None:
        for name in ("hidden_size", "base_hidden_size", "num_layers", "ffn_hidden_size",
                     "num_attention_heads", "head_dim"):
            _check_positive_int(name, getattr(self, name))
        for name in ("base_ffn_hidden_size", "base_num_attention_heads", "base_head_dim", "base_num_layers"):
            if getattr(self, name) is not None:
                _check_positive_int(name, getattr(self, name))
        for name in ("base_init_std", "embeddings_scale", "output_alpha"):
            _check_positive_float(name, getattr(self, name))
        for name in ("scale_qk_dot_by_d", "scale_adam_eps", "scale_weight_decay", "zero_init_query",
                     "zero_init_readout"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"MuPConfig.{name} must be a bool, got {getattr(self, name)!r}")

    # ---- width multipliers (m = target fan-in / base fan-in) --------------------------------

    @property
    def width_multiplier(self) -> float:
        """m = hidden / base_hidden: the fan-in ratio of every matrix that reads the residual
        stream (QKV, MLP up/gate) and the factor in the output multiplier alpha/m."""
        return self.hidden_size / self.base_hidden_size

    @property
    def width_scale(self) -> float:
        """1/m, the number Crystal's config calls `mup_width_scale` (0.0625)."""
        return self.base_hidden_size / self.hidden_size

    @property
    def ffn_width_multiplier(self) -> float:
        """Fan-in ratio of the MLP down projection (linear_fc2), whose fan-in is the FFN width."""
        if self.base_ffn_hidden_size is None:
            return self.width_multiplier
        return self.ffn_hidden_size / self.base_ffn_hidden_size

    @property
    def attention_width_multiplier(self) -> float:
        """Fan-in ratio of the attention output projection (linear_proj), whose fan-in is
        heads x head_dim: (heads x head_dim) / (base heads x base head_dim).

        With neither base given, the attention width scales like hidden. A base left out when the
        other is given is taken as unchanged from the proxy, so base_num_attention_heads alone means
        width grew through the head count and base_head_dim alone means it grew through head dim.
        """
        if self.base_num_attention_heads is None and self.base_head_dim is None:
            return self.width_multiplier
        base_heads = self.base_num_attention_heads or self.num_attention_heads
        base_head_dim = self.base_head_dim or self.head_dim
        return (self.num_attention_heads * self.head_dim) / (base_heads * base_head_dim)

    @property
    def depth_multiplier(self) -> float:
        """num_layers / base_num_layers with depth-μP; 1 without (no depth scaling at all)."""
        return 1.0 if self.base_num_layers is None else self.num_layers / self.base_num_layers

    @property
    def residual_branch_multiplier(self) -> float:
        """Depth-μP's 1/sqrt(L / L_base) on each residual branch's output (1 without depth-μP)."""
        return 1.0 / math.sqrt(self.depth_multiplier)

    # ---- constructors --------------------------------------------------------------------

    @classmethod
    def from_width_scale(cls, width_scale: float, hidden_size: int, **kwargs) -> "MuPConfig":
        """Build from `mup_width_scale` (= base_hidden / hidden, as HF μP configs store it).

        The implied base width must be a whole number: 0.0625 x 4096 = 256 is fine,
        0.3 x 4096 = 1228.8 is rejected rather than silently rounded.
        """
        _check_positive_float("width_scale", width_scale)
        _check_positive_int("hidden_size", hidden_size)
        base = width_scale * hidden_size
        base_int = int(round(base))
        if base_int <= 0 or abs(base - base_int) > 1e-6 * max(1.0, base):
            raise ValueError(
                f"width_scale {width_scale} x hidden_size {hidden_size} = {base} is not a whole "
                f"base hidden size; pass base_hidden_size explicitly instead")
        if "base_hidden_size" in kwargs:
            raise ValueError("give either width_scale or base_hidden_size, not both")
        return cls(hidden_size=hidden_size, base_hidden_size=base_int, **kwargs)


def crystal_7b() -> MuPConfig:
    """LLM360 Crystal / CrystalCoder 7B: base width 256 (m = 16), sigma_base 0.073,
    embeddings x 14.6, logits x 2.22/16, attention scores / head_dim."""
    return MuPConfig(
        hidden_size=4096,
        base_hidden_size=256,
        num_layers=32,
        ffn_hidden_size=10922,
        num_attention_heads=32,
        head_dim=128,
        base_init_std=0.073,
        embeddings_scale=14.6,
        output_alpha=2.22,
        scale_qk_dot_by_d=True,
        scale_adam_eps=False,
    )
