"""Per-parameter μP rules (init, Adam LR / eps multipliers, weight decay) and forward multipliers.

Parameters are classified by their megatron-core GPTModel names. Two rule objects share one
interface so a caller can switch parametrization by swapping a single object:

    rules = MuPRules(cfg) if use_mup else StandardRules(init_std=0.02, num_layers=L)

μP flavour: Tensor Programs V's μP for Adam written in the multiplier form Cerebras-GPT and
LLM360 Crystal use (see docs/mup.md):

    class         init std (trunc. normal +-2 sigma)   Adam LR mult   weight decay (wd mult*)
    EMBEDDING     sigma_base                           1              yes (1)
    HIDDEN        sigma_base / sqrt(m)                 1/m            yes (m)
    RESIDUAL_OUT  sigma_base / sqrt(2 m L)             1/m            yes (m)
    OUTPUT        sigma_base (same as a tied head)     1              yes (1)
    BIAS          zeros                                1              no
    NORM          ones                                 1              no
    (* only with scale_weight_decay: wd / LR multiplier, so lr x wd is width-independent)

with forward multipliers: embeddings x embeddings_scale, logits x output_alpha/m, attention
scores x 1/head_dim. m is the fan-in ratio of the matrix: hidden/base_hidden for QKV and MLP
up (fan-in = hidden), the FFN ratio for linear_fc2, the heads x head_dim ratio for linear_proj.
With scale_adam_eps every parameter's eps is divided by m (every gradient shrinks ~1/m in this
form: the output multiplier alpha/m scales the whole backward pass). Depth-μP (base_num_layers):
residual branches x 1/sqrt(L/L_base), and every parameter inside the layers gets LR (and, with
scale_adam_eps, eps) x sqrt(L_base/L); RESIDUAL_OUT's init uses L_base for L, so the model at
initialisation is the same as without depth-μP.
"""

from __future__ import annotations

import enum
import math
import re
from typing import Optional, Union

from .config import MuPConfig


class ParamClass(enum.Enum):
    EMBEDDING = "embedding"        # input embedding table (word / learned position)
    HIDDEN = "hidden"              # matrices reading the residual stream: QKV, MLP fc1
    RESIDUAL_OUT = "residual_out"  # matrices writing into the residual stream: proj, fc2
    OUTPUT = "output"              # untied LM head (or the last stage's copy of a tied one)
    BIAS = "bias"                  # every bias, including LayerNorm biases
    NORM = "norm"                  # norm gains


# Names are matched on their tail so DDP / Float16Module prefixes ("module.module.") and the
# pipeline-local layer numbers never matter. TE-fused names (linear_qkv.layer_norm_weight)
# are the norm folded into the following linear.
_PATTERNS = [
    (ParamClass.EMBEDDING, re.compile(r"(^|\.)embedding\.(word|position)_embeddings\.weight$")),
    (ParamClass.OUTPUT, re.compile(r"(^|\.)output_layer\.weight$")),
    (ParamClass.BIAS, re.compile(r"(^|\.)(bias|layer_norm_bias)$")),
    (ParamClass.NORM, re.compile(r"(^|\.)(\w*norm\.weight|layer_norm_weight)$")),
    (ParamClass.RESIDUAL_OUT, re.compile(r"(^|\.)(linear_proj|linear_fc2)\.weight\d*$")),
    (ParamClass.HIDDEN, re.compile(r"(^|\.)(linear_qkv|linear_q|linear_kv|linear_fc1)\.weight\d*$")),
]


def classify(name: str) -> ParamClass:
    """Class of a megatron-core GPTModel parameter name. Unknown names raise, because a
    parameter silently given the wrong LR or init is the hardest μP bug to find."""
    for param_class, pattern in _PATTERNS:
        if pattern.search(name):
            return param_class
    raise ValueError(
        f"mup: cannot classify parameter {name!r}. Known: embedding.word_embeddings.weight, "
        "output_layer.weight, *.bias, *norm.weight, *.layer_norm_weight, "
        "linear_qkv/linear_fc1.weight (hidden), linear_proj/linear_fc2.weight (residual out)")


_IN_LAYER = re.compile(r"(^|\.)layers\.\d+\.")


def _is_attention_out(name: str) -> bool:
    return re.search(r"(^|\.)linear_proj\.weight\d*$", name) is not None


NameOrClass = Union[str, ParamClass]


class _Rules:
    """What both parametrizations share: classification, constant inits, weight decay."""

    is_mup: bool = False

    @staticmethod
    def param_class(name_or_class: NameOrClass) -> ParamClass:
        if isinstance(name_or_class, ParamClass):
            return name_or_class
        return classify(name_or_class)

    def init_fill(self, name_or_class: NameOrClass) -> Optional[float]:
        """Constant init value (biases 0, norm gains 1), or None for random-normal classes."""
        cls = self.param_class(name_or_class)
        if cls is ParamClass.BIAS:
            return 0.0
        if cls is ParamClass.NORM:
            return 1.0
        return None

    def weight_decay_applies(self, name_or_class: NameOrClass) -> bool:
        """Decoupled (AdamW) decay on matrices only: decaying a norm gain towards 0 or a bias
        towards 0 is a prior nobody wants, in either parametrization."""
        return self.param_class(name_or_class) not in (ParamClass.BIAS, ParamClass.NORM)

    def expected_fan_in(self, name_or_class: NameOrClass) -> Optional[int]:
        """Global fan-in a full tensor must have (None: not checked)."""
        return None

    def weight_decay_multiplier(self, name_or_class: NameOrClass) -> float:
        """Factor on the weight decay of a decayed parameter (0 for the undecayed)."""
        return 1.0 if self.weight_decay_applies(name_or_class) else 0.0

    residual_branch_multiplier = 1.0  # depth-μP's 1/sqrt(L / L_base) on each residual branch
    zero_init_query = False           # the query rows of linear_qkv start at 0


class StandardRules(_Rules):
    """Standard parametrization, as megatron-core does it by default: one fixed init std
    (residual output projections std/sqrt(2L) when num_layers is given), every multiplier 1,
    attention scores / sqrt(head_dim)."""

    def __init__(self, init_std: float = 0.02, num_layers: Optional[int] = None):
        if not init_std > 0:
            raise ValueError(f"StandardRules.init_std must be > 0, got {init_std!r}")
        if num_layers is not None and num_layers <= 0:
            raise ValueError(f"StandardRules.num_layers must be > 0, got {num_layers!r}")
        self.base_init_std = float(init_std)
        self.num_layers = num_layers

    def init_std(self, name_or_class: NameOrClass) -> float:
        cls = self.param_class(name_or_class)
        if cls in (ParamClass.BIAS, ParamClass.NORM):
            return 0.0
        if cls is ParamClass.RESIDUAL_OUT and self.num_layers is not None:
            return self.base_init_std / math.sqrt(2.0 * self.num_layers)
        return self.base_init_std

    def lr_multiplier(self, name_or_class: NameOrClass) -> float:
        self.param_class(name_or_class)  # still reject unknown names
        return 1.0

    def adam_eps_multiplier(self, name_or_class: NameOrClass) -> float:
        self.param_class(name_or_class)
        return 1.0

    @property
    def embedding_multiplier(self) -> float:
        return 1.0

    @property
    def output_multiplier(self) -> float:
        return 1.0

    def softmax_scale(self, head_dim: int) -> float:
        return 1.0 / math.sqrt(head_dim)


class MuPRules(_Rules):
    """μP rules for one MuPConfig (Cerebras / Crystal convention, see module docstring)."""

    is_mup = True

    def __init__(self, cfg: MuPConfig):
        if not isinstance(cfg, MuPConfig):
            raise TypeError(f"MuPRules needs a MuPConfig, got {type(cfg).__name__}")
        self.cfg = cfg

    def fan_in_multiplier(self, name_or_class: NameOrClass) -> float:
        """m of this matrix (target fan-in / base fan-in); 1 for classes μP does not rescale.

        Given a bare ParamClass.RESIDUAL_OUT this is ambiguous when the FFN and attention
        widths scale differently; pass the parameter name then.
        """
        cls = self.param_class(name_or_class)
        cfg = self.cfg
        if cls is ParamClass.HIDDEN:
            return cfg.width_multiplier
        if cls is ParamClass.RESIDUAL_OUT:
            if isinstance(name_or_class, str):
                return (cfg.attention_width_multiplier if _is_attention_out(name_or_class)
                        else cfg.ffn_width_multiplier)
            if cfg.attention_width_multiplier != cfg.ffn_width_multiplier:
                raise ValueError(
                    "RESIDUAL_OUT is ambiguous when FFN and attention widths scale differently: "
                    "pass the parameter name (linear_proj vs linear_fc2)")
            return cfg.ffn_width_multiplier
        return 1.0

    def depth_lr_multiplier(self, name_or_class: NameOrClass) -> float:
        """Depth-μP: sqrt(L_base / L) for every parameter inside the transformer layers (their updates reach
        the residual stream through the 1/sqrt(L / L_base) branch multiplier, L branches add up), 1 for the
        embedding, the output layer and the final norm. 1 without depth-μP."""
        cfg = self.cfg
        if cfg.base_num_layers is None:
            return 1.0
        cls = self.param_class(name_or_class)
        if isinstance(name_or_class, str):
            inside = _IN_LAYER.search(name_or_class) is not None
        elif cls in (ParamClass.HIDDEN, ParamClass.RESIDUAL_OUT):
            inside = True
        elif cls in (ParamClass.EMBEDDING, ParamClass.OUTPUT):
            inside = False
        else:
            raise ValueError(f"depth-μP: a bare {cls} may be inside a layer or not (the final norm): "
                             "pass the parameter name")
        return math.sqrt(1.0 / cfg.depth_multiplier) if inside else 1.0

    @property
    def residual_branch_multiplier(self) -> float:
        return self.cfg.residual_branch_multiplier

    @property
    def zero_init_query(self) -> bool:
        return self.cfg.zero_init_query

    def init_fill(self, name_or_class: NameOrClass) -> Optional[float]:
        if self.cfg.zero_init_readout and self.param_class(name_or_class) is ParamClass.OUTPUT:
            return 0.0  # an untied head only: a tied one is named (and initialised as) the embedding
        return super().init_fill(name_or_class)

    def init_std(self, name_or_class: NameOrClass) -> float:
        cls = self.param_class(name_or_class)
        sigma = self.cfg.base_init_std
        if cls in (ParamClass.BIAS, ParamClass.NORM) or self.init_fill(name_or_class) is not None:
            return 0.0
        if cls in (ParamClass.EMBEDDING, ParamClass.OUTPUT):
            # Fan-in is the vocabulary (finite), so the init does not depend on width; the head's
            # 1/m lives in the forward multiplier instead, which lets it be tied to the embedding.
            return sigma
        m = self.fan_in_multiplier(name_or_class)
        if cls is ParamClass.HIDDEN:
            return sigma / math.sqrt(m)
        # RESIDUAL_OUT: 1/sqrt(m) for fan-in, 1/sqrt(2L) because 2L such outputs are summed
        # into the residual stream (GPT-2 style depth scaling). With depth-μP the branch multiplier
        # 1/sqrt(L/L_base) supplies the depth part beyond L_base: the same model at initialisation.
        layers = self.cfg.base_num_layers or self.cfg.num_layers
        return sigma / math.sqrt(2.0 * m * layers)

    def lr_multiplier(self, name_or_class: NameOrClass) -> float:
        """Adam LR multiplier: 1/m for hidden and residual-out matrices. Adam normalises the
        gradient, so an O(1) per-entry step on a fan-in-m matrix would grow its output ~m."""
        cls = self.param_class(name_or_class)
        depth = self.depth_lr_multiplier(name_or_class)
        if cls in (ParamClass.HIDDEN, ParamClass.RESIDUAL_OUT):
            return depth / self.fan_in_multiplier(name_or_class)
        return depth

    def adam_eps_multiplier(self, name_or_class: NameOrClass) -> float:
        """With scale_adam_eps: 1/m for EVERY parameter, times the depth-μP factor inside the layers.

        eps should shrink as the gradient does, or a fixed eps takes up more of Adam's denominator
        sqrt(v) + eps as the model widens (more SGD-like). In this multiplier form the output
        multiplier alpha/m scales the whole backward pass, so every gradient entry shrinks ~1/m: the
        embedding's, the head's, the norms' and biases' as much as the hidden matrices' (measured in
        tests/mup/test_mup_options.py). Inside the layers the branch multiplier scales the gradients
        by 1/sqrt(L/L_base) too. Scaling only some classes would leave the others drifting."""
        if not self.cfg.scale_adam_eps:
            self.param_class(name_or_class)
            return 1.0
        return self.depth_lr_multiplier(name_or_class) / self.cfg.width_multiplier

    def weight_decay_multiplier(self, name_or_class: NameOrClass) -> float:
        """With scale_weight_decay, 1 / the LR multiplier for every decayed parameter (hidden matrices:
        x m): decoupled decay shrinks a weight by lr_group x wd per step, which then equals the base
        model's lr x wd at every width, as in the `mup` package's MuAdamW. Without it, 1: hidden matrices
        decay 1/m as fast per step as at the base width (Crystal and Cerebras did this)."""
        if not self.weight_decay_applies(name_or_class):
            return 0.0
        if not self.cfg.scale_weight_decay:
            return 1.0
        return 1.0 / self.lr_multiplier(name_or_class)

    @property
    def embedding_multiplier(self) -> float:
        return self.cfg.embeddings_scale

    @property
    def output_multiplier(self) -> float:
        return self.cfg.output_alpha / self.cfg.width_multiplier

    def softmax_scale(self, head_dim: Optional[int] = None) -> float:
        """1/d (μP: q.k of aligned vectors grows ~d, not ~sqrt(d)) or 1/sqrt(d) if disabled."""
        d = self.cfg.head_dim if head_dim is None else head_dim
        return 1.0 / d if self.cfg.scale_qk_dot_by_d else 1.0 / math.sqrt(d)

    def expected_fan_in(self, name_or_class: NameOrClass) -> Optional[int]:
        cls = self.param_class(name_or_class)
        cfg = self.cfg
        if cls in (ParamClass.EMBEDDING, ParamClass.OUTPUT, ParamClass.HIDDEN):
            return cfg.hidden_size  # [vocab, hidden] tables and [out, hidden] linears
        if cls is ParamClass.RESIDUAL_OUT and isinstance(name_or_class, str):
            if _is_attention_out(name_or_class):
                return cfg.num_attention_heads * cfg.head_dim
            return cfg.ffn_hidden_size
        return None


Rules = Union[MuPRules, StandardRules]
