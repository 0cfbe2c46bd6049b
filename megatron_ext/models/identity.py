"""ModelIdentity: everything that makes a model this model, in one frozen dataclass.

The shapes, layer choices and μP bases of a LLaMA-family model live here and nowhere else. Presets
(models/presets.py) are instances; flags map onto it in one place (`from_flags`); megatron-core's
TransformerConfig (models/config.py), the μP rules (models/parametrization.py), checkpoints
(`to_checkpoint` / `from_checkpoint`, one versioned key) and the HF converters (one config function per
layout) all read it. Derived sizes (head dim, query groups, padded vocabulary, μP multipliers) are
properties, computed here once.

A new architectural option touches three places: a field here, the layer that reads it, and the
weight map of each HF layout that can express it (docs/architecture.md).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

# Bumped when a field changes meaning; from_checkpoint reads every older version.
IDENTITY_VERSION = 1
CHECKPOINT_KEY = "model_identity"


class IdentityError(SystemExit):
    """A model description that cannot work, named with its fix; exits with status 1."""

    def __init__(self, message: str):
        super().__init__(f"error: {message}")


@dataclass(frozen=True)
class ModelIdentity:
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int | None = None        # key/value heads; None: one per query head
    kv_channels: int | None = None             # head dim; None: hidden / heads
    max_position_embeddings: int = 2048
    vocab_size: int | None = None              # the true vocabulary; None until the tokenizer decides it
    make_vocab_size_divisible_by: int = 128    # independent of TP, so checkpoints move between layouts
    normalization: str = "RMSNorm"             # RMSNorm (LLaMA) | LayerNorm (Crystal, open_lm)
    norm_epsilon: float = 1e-5
    layernorm_bias: bool = True                # LayerNorm only; False: open_lm's gain-only LayerNorm
    qk_norm: str | None = None                 # None | "head" (Megatron-LM's --qk-layernorm) | "full" (open_lm)
    add_bias_linear: bool = False
    add_qkv_bias: bool | None = None           # None: as add_bias_linear
    rotary_percent: float = 1.0
    rotary_base: float = 10000.0
    rotary_interleaved: bool = False           # GPT-J "rotate every two" instead of LLaMA's half split
    tie_embeddings: bool = False
    init_method: str = "normal"                # "normal" (Megatron: init_method_std) | "open_lm" (1/sqrt(fan-in))
    init_method_std: float = 0.02
    # μP (docs/mup.md): the base (proxy) sizes the hyperparameters were tuned at, and the multipliers.
    use_mup: bool = False
    mup_base_hidden_size: int | None = None
    mup_width_scale: float | None = None       # base hidden / hidden; kept only when no base size is given
    mup_base_ffn_hidden_size: int | None = None
    mup_base_num_attention_heads: int | None = None
    mup_base_head_dim: int | None = None       # None: head dim did not grow from the proxy (docs/mup.md)
    mup_embeddings_scale: float = 1.0
    mup_output_alpha: float = 1.0
    mup_scale_qk_dot_by_d: bool = False
    mup_base_init_std: float | None = None     # None: init_method_std
    mup_scale_adam_eps: bool = False
    mup_scale_weight_decay: bool = False       # decoupled decay with lr x wd independent of width
    mup_base_num_layers: int | None = None     # depth-μP: residual branches x 1/sqrt(layers / this)
    mup_zero_init_query: bool = False
    mup_zero_init_readout: bool = False

    def __post_init__(self):
        # Resolve the "None: derived" fields, so two descriptions of one model compare equal field by field.
        resolve = {"num_query_groups": self.num_query_groups or self.num_attention_heads,
                   "kv_channels": self.kv_channels or self.hidden_size // self.num_attention_heads,
                   "add_qkv_bias": self.add_bias_linear if self.add_qkv_bias is None else self.add_qkv_bias}
        if self.mup_base_hidden_size is not None:
            resolve["mup_width_scale"] = None  # one source of truth: the width scale derives from the base
        for name, value in resolve.items():
            object.__setattr__(self, name, value)
        self._check()

    def _check(self) -> None:
        if self.normalization not in ("RMSNorm", "LayerNorm"):
            raise IdentityError(f"normalization {self.normalization!r} is unknown: use RMSNorm or LayerNorm")
        if self.qk_norm not in (None, "head", "full"):
            raise IdentityError(f"query/key norm {self.qk_norm!r} is unknown: use --qk-norm head (one norm per "
                                "head, Megatron-LM's --qk-layernorm) or full (over all heads, open_lm)")
        if self.init_method not in ("normal", "open_lm"):
            raise IdentityError(f"--init-method {self.init_method!r} is unknown: use normal or open_lm")
        if self.init_method == "open_lm" and self.use_mup:
            raise IdentityError("--init-method open_lm and --use-mup both set the initialisation: μP draws every "
                                "weight from its own rules, so drop one of them")
        if self.num_attention_heads % self.num_query_groups:
            raise IdentityError(f"--num-query-groups {self.num_query_groups} must divide --num-attention-heads "
                                f"{self.num_attention_heads}")
        if self.rotary_dim != self.kv_channels * self.rotary_percent or self.rotary_dim % 2:
            raise IdentityError(f"--rotary-percent {self.rotary_percent} of head dim {self.kv_channels} "
                                "must give an even whole number of channels")
        if self.use_mup and not (self.mup_base_hidden_size or self.mup_width_scale):
            raise IdentityError("--use-mup needs --mup-base-hidden-size or --mup-width-scale")
        if self.use_mup and self.mup_zero_init_readout and self.tie_embeddings:
            raise IdentityError("--mup-zero-init-readout with tied embeddings would zero the input embedding too: "
                                "add --untie-embeddings-and-output-weights or drop --mup-zero-init-readout")

    # ---- derived sizes ----------------------------------------------------------------------

    @property
    def padded_vocab_size(self) -> int:
        if self.vocab_size is None:
            raise ValueError("the vocabulary size is not known yet (the tokenizer decides it)")
        return int(math.ceil(self.vocab_size / self.make_vocab_size_divisible_by) * self.make_vocab_size_divisible_by)

    @property
    def heads_per_group(self) -> int:
        return self.num_attention_heads // self.num_query_groups

    @property
    def rotary_dim(self) -> int:
        return int(round(self.kv_channels * self.rotary_percent))

    @property
    def qkv_bias(self) -> bool:
        return self.add_bias_linear or self.add_qkv_bias  # as megatron-core's SelfAttention decides

    @property
    def layer_norm(self) -> bool:
        return self.normalization == "LayerNorm"

    @property
    def norm_has_bias(self) -> bool:
        return self.layer_norm and self.layernorm_bias

    # ---- μP (Cerebras / Crystal convention) ---------------------------------------------------

    @property
    def mup_width(self) -> float:
        """base hidden / hidden (Crystal's `mup_width_scale`); 1.0 without μP."""
        if not self.use_mup:
            return 1.0
        if self.mup_base_hidden_size:
            return self.mup_base_hidden_size / self.hidden_size
        return self.mup_width_scale

    @property
    def embedding_multiplier(self) -> float:
        return self.mup_embeddings_scale if self.use_mup else 1.0

    @property
    def logits_multiplier(self) -> float:
        return self.mup_output_alpha * self.mup_width if self.use_mup else 1.0

    @property
    def attention_scores_by_d(self) -> bool:
        return self.use_mup and self.mup_scale_qk_dot_by_d

    @property
    def residual_branch_multiplier(self) -> float:
        """Depth-μP's 1/sqrt(layers / base layers) on each attention and MLP output; 1.0 without it."""
        if not (self.use_mup and self.mup_base_num_layers):
            return 1.0
        return math.sqrt(self.mup_base_num_layers / self.num_layers)

    # ---- flags ------------------------------------------------------------------------------

    @classmethod
    def from_flags(cls, args, vocab_size: int | None = None) -> "ModelIdentity":
        """The identity the parsed flags describe (argparse destinations of pretrain_llama.py); flags left
        unset (None) take the defaults above. --vocab-size is the tokenizer's flag: the model's
        vocabulary is the tokenizer's, given here once known."""
        given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
                 if f.name != "vocab_size" and getattr(args, f.name, None) is not None}
        if not getattr(args, "group_query_attention", False):
            given.pop("num_query_groups", None)
        missing = [name for name in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads")
                   if name not in given]
        if missing:
            raise IdentityError(f"--{missing[0].replace('_', '-')} is not set: pass it or choose a --model-preset")
        if given.get("mup_base_hidden_size") and given.get("mup_width_scale"):
            implied = given["mup_base_hidden_size"] / given["hidden_size"]
            if not math.isclose(implied, given["mup_width_scale"], rel_tol=1e-9):
                raise IdentityError(f"--mup-base-hidden-size {given['mup_base_hidden_size']} implies width scale "
                                    f"{implied:g} at --hidden-size {given['hidden_size']}, but --mup-width-scale is "
                                    f"{given['mup_width_scale']:g}: give one of the two")
        return cls(vocab_size=vocab_size, **given)

    def as_flags(self) -> dict:
        """argparse defaults that describe this model (presets, and a checkpoint being loaded). A derived
        field is given only where it differs from its derivation, so `--model-preset X --hidden-size N`
        still derives the head dim from N. The vocabulary is left to the tokenizer flags."""
        flags = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                 if f.name not in ("vocab_size", "num_query_groups", "kv_channels", "add_qkv_bias")}
        flags["group_query_attention"] = self.num_query_groups != self.num_attention_heads
        if flags["group_query_attention"]:
            flags["num_query_groups"] = self.num_query_groups
        if self.kv_channels != self.hidden_size // self.num_attention_heads:
            flags["kv_channels"] = self.kv_channels
        if self.add_qkv_bias != self.add_bias_linear:
            flags["add_qkv_bias"] = self.add_qkv_bias
        return {name: value for name, value in flags.items() if value is not None}

    # ---- checkpoints ------------------------------------------------------------------------

    def to_checkpoint(self) -> dict:
        return {"version": IDENTITY_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_checkpoint(cls, common: dict) -> "ModelIdentity":
        """From a checkpoint's common.pt contents. Checkpoints written before the identity existed
        (only the run's flags, under `args`) are read through the flags they recorded."""
        stored = common.get(CHECKPOINT_KEY)
        if stored is None:
            return cls._from_recorded_flags(common.get("args") or {})
        version = stored.get("version")
        if not isinstance(version, int) or version > IDENTITY_VERSION:
            raise IdentityError(f"the checkpoint's model identity has version {version!r}; this megatron_ext reads "
                                f"versions up to {IDENTITY_VERSION}: upgrade megatron_ext to load it")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(stored) - known - {"version"})
        if unknown:
            raise IdentityError(f"the checkpoint's model identity has fields this megatron_ext does not know "
                                f"({', '.join(unknown)}): upgrade megatron_ext to load it")
        return cls(**{k: v for k, v in stored.items() if k != "version"})

    @classmethod
    def _from_recorded_flags(cls, args: dict) -> "ModelIdentity":
        """Checkpoints of 2026-12 and earlier: the model flags among the run's `args`. Their vocabulary:
        an import records the true one; a training run recorded the padded one (the tokenizer knew the rest)."""
        missing = [k for k in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads") if
                   args.get(k) is None]
        if missing:
            raise IdentityError(f"the checkpoint records neither a model identity nor {', '.join(missing)}; was it "
                                "written by pretrain_llama.py or tools/convert_from_hf.py?")
        flags = dict(args)
        vocab = args.get("vocab_size") if args.get("hf_config") else args.get("padded_vocab_size")
        return cls.from_flags(_Flags(flags), vocab_size=vocab)

    # ---- comparisons ------------------------------------------------------------------------

    SHAPE_FIELDS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
                    "kv_channels", "normalization", "layernorm_bias", "qk_norm", "add_bias_linear", "add_qkv_bias",
                    "tie_embeddings")

    def shape_differences(self, other: "ModelIdentity") -> list[tuple[str, object, object]]:
        """(field, self's value, other's value) for each field that fixes tensor shapes and differs."""
        diffs = [(f, getattr(self, f), getattr(other, f)) for f in self.SHAPE_FIELDS
                 if getattr(self, f) != getattr(other, f)]
        if self.vocab_size and other.vocab_size and self.padded_vocab_size != other.padded_vocab_size:
            diffs.append(("padded_vocab_size", self.padded_vocab_size, other.padded_vocab_size))
        return diffs

    def replace(self, **changes) -> "ModelIdentity":
        return dataclasses.replace(self, **changes)


class _Flags:
    """Attribute access over a dict of recorded flags (what from_flags reads)."""

    def __init__(self, values: dict):
        self.__dict__.update(values)

    def __getattr__(self, name):
        return None


def model_flag_names() -> tuple[str, ...]:
    """The argparse destinations that describe the model (all map onto ModelIdentity). --vocab-size is
    not one: it is the tokenizer's flag (NullTokenizer, mock data)."""
    return tuple(f.name for f in dataclasses.fields(ModelIdentity) if f.name != "vocab_size") + (
        "group_query_attention",)
