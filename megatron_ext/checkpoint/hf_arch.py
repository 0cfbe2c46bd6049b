"""The model as a checkpoint converter sees it: shapes, names and layout helpers shared by the
Hugging Face formats (hf_llama.py, hf_crystalcoder.py) and the streaming converter (convert.py).

Megatron tensors are named as GPTModel.state_dict() names them in a single-stage, single-rank
model (`decoder.layers.3.mlp.linear_fc1.weight`); convert.py maps those names to the global
ShardedTensor keys of megatron-core's checkpoints. Layouts, fixed by megatron-core:
  * linear_qkv rows are grouped per query group g: [q heads of g; k of g; v of g], head_dim rows each;
  * linear_fc1 is [gate; up] (2F x H);
  * the vocabulary is padded to a multiple of make_vocab_size_divisible_by (rows past the true
    vocabulary are masked out of the softmax, so any value works; imports write zeros).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


class ConversionError(SystemExit):
    """A problem with the input or the request, stated with its fix; exits with status 1."""

    def __init__(self, message: str):
        super().__init__(f"error: {message}")


# Flags that describe the model (argparse destinations of pretrain_llama.py). A converted checkpoint
# records them in `args` so that `--load` needs none of them repeated.
MODEL_FLAGS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "group_query_attention",
               "num_query_groups", "kv_channels", "normalization", "norm_epsilon", "add_bias_linear",
               "add_qkv_bias", "rotary_percent", "rotary_base", "rotary_interleaved", "tie_embeddings",
               "vocab_size", "padded_vocab_size", "make_vocab_size_divisible_by", "max_position_embeddings",
               "seq_length", "position_embedding_type", "swiglu", "use_mup", "mup_base_hidden_size",
               "mup_width_scale", "mup_embeddings_scale", "mup_output_alpha", "mup_scale_qk_dot_by_d")


@dataclass(frozen=True)
class Arch:
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    kv_channels: int
    normalization: str
    norm_epsilon: float
    add_bias_linear: bool
    add_qkv_bias: bool
    rotary_percent: float
    rotary_base: float
    rotary_interleaved: bool
    tie_embeddings: bool
    vocab_size: int
    padded_vocab_size: int
    max_position_embeddings: int
    use_mup: bool = False
    mup_width_scale: float = 1.0
    mup_embeddings_scale: float = 1.0
    mup_output_alpha: float = 1.0
    mup_scale_qk_dot_by_d: bool = False
    extra: dict = field(default_factory=dict, compare=False)  # other saved args (hf_config, tokenizer...)

    @classmethod
    def from_args(cls, args: dict, vocab_size: int | None = None) -> "Arch":
        """From a checkpoint's saved `args` (the run's flags). vocab_size overrides args['vocab_size']
        (runs with a tokenizer do not record it: the tokenizer decides)."""
        missing = [k for k in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
                               "padded_vocab_size") if args.get(k) is None]
        if missing:
            raise ConversionError(f"the checkpoint's args lack {', '.join(missing)}; was it written by "
                                  "pretrain_llama.py or tools/convert_from_hf.py?")
        heads, hidden = args["num_attention_heads"], args["hidden_size"]
        groups = args.get("num_query_groups") if args.get("group_query_attention") else heads
        width_scale = 1.0
        if args.get("use_mup"):
            width_scale = args.get("mup_width_scale") or (args["mup_base_hidden_size"] / hidden)
        bias_linear = bool(args.get("add_bias_linear"))
        return cls(
            num_layers=args["num_layers"], hidden_size=hidden, ffn_hidden_size=args["ffn_hidden_size"],
            num_attention_heads=heads, num_query_groups=groups or heads,
            kv_channels=args.get("kv_channels") or hidden // heads,
            normalization=args.get("normalization") or "RMSNorm", norm_epsilon=args.get("norm_epsilon") or 1e-5,
            add_bias_linear=bias_linear,
            add_qkv_bias=bias_linear if args.get("add_qkv_bias") is None else bool(args["add_qkv_bias"]),
            rotary_percent=args.get("rotary_percent") or 1.0, rotary_base=args.get("rotary_base") or 10000.0,
            rotary_interleaved=bool(args.get("rotary_interleaved")), tie_embeddings=bool(args.get("tie_embeddings")),
            vocab_size=vocab_size or args.get("vocab_size") or args["padded_vocab_size"],
            padded_vocab_size=args["padded_vocab_size"],
            max_position_embeddings=args.get("max_position_embeddings") or args.get("seq_length") or 2048,
            use_mup=bool(args.get("use_mup")), mup_width_scale=width_scale,
            mup_embeddings_scale=args.get("mup_embeddings_scale") or 1.0,
            mup_output_alpha=args.get("mup_output_alpha") or 1.0,
            mup_scale_qk_dot_by_d=bool(args.get("mup_scale_qk_dot_by_d")) and bool(args.get("use_mup")),
            extra={k: v for k, v in args.items() if k.startswith(("hf_", "tokenizer_"))},
        )

    # ---- derived sizes ----------------------------------------------------------------------

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

    # ---- μP forward multipliers (Cerebras / Crystal convention) --------------------------------

    @property
    def embedding_multiplier(self) -> float:
        return self.mup_embeddings_scale if self.use_mup else 1.0

    @property
    def logits_multiplier(self) -> float:
        return self.mup_output_alpha * self.mup_width_scale if self.use_mup else 1.0

    # ---- the Megatron tensors, group by group -----------------------------------------------

    def groups(self) -> list["Group"]:
        """Every Megatron tensor, in the order a converter streams them (one group at a time)."""
        h, d = self.hidden_size, self.kv_channels
        norm = {"weight": (h,), **({"bias": (h,)} if self.layer_norm else {})}
        groups = [Group("embedding", {"embedding.word_embeddings.weight": (self.padded_vocab_size, h)})]
        for layer in range(self.num_layers):
            local = {f"input_layernorm.{k}": s for k, s in norm.items()}
            local["self_attention.linear_qkv.weight"] = ((self.num_attention_heads + 2 * self.num_query_groups) * d, h)
            if self.qkv_bias:
                local["self_attention.linear_qkv.bias"] = ((self.num_attention_heads + 2 * self.num_query_groups) * d,)
            local["self_attention.linear_proj.weight"] = (h, self.num_attention_heads * d)
            if self.add_bias_linear:
                local["self_attention.linear_proj.bias"] = (h,)
            local.update({f"pre_mlp_layernorm.{k}": s for k, s in norm.items()})
            local["mlp.linear_fc1.weight"] = (2 * self.ffn_hidden_size, h)
            if self.add_bias_linear:
                local["mlp.linear_fc1.bias"] = (2 * self.ffn_hidden_size,)
            local["mlp.linear_fc2.weight"] = (h, self.ffn_hidden_size)
            if self.add_bias_linear:
                local["mlp.linear_fc2.bias"] = (h,)
            groups.append(Group(f"layer {layer}", {f"decoder.layers.{layer}.{k}": s for k, s in local.items()},
                                layer=layer))
        groups.append(Group("final norm", {f"decoder.final_layernorm.{k}": s for k, s in norm.items()}))
        if not self.tie_embeddings:
            groups.append(Group("output", {"output_layer.weight": (self.padded_vocab_size, h)}))
        return groups


# megatron-core's linear layers that carry an (empty) `_extra_state` entry in every checkpoint.
LINEAR_MODULES = ("self_attention.linear_qkv", "self_attention.linear_proj", "mlp.linear_fc1", "mlp.linear_fc2")


@dataclass(frozen=True)
class Group:
    name: str
    shapes: dict  # Megatron name -> full (unsharded) shape
    layer: int | None = None

    def local(self, name: str) -> str:
        """'decoder.layers.3.mlp.linear_fc1.weight' -> 'mlp.linear_fc1.weight' (layers only)."""
        prefix = f"decoder.layers.{self.layer}."
        return name[len(prefix):] if self.layer is not None and name.startswith(prefix) else name


def meta_tensors(shapes: dict, dtype=torch.float32) -> dict:
    """Shape-only stand-ins: running a layout map on them checks and reports shapes without data."""
    return {name: torch.empty(shape, dtype=dtype, device="meta") for name, shape in shapes.items()}


# ---- layout helpers ----------------------------------------------------------------------------

def pack_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, groups: int) -> torch.Tensor:
    """Separate q [heads*d, ...], k and v [groups*d, ...] -> megatron's per-group [q_g; k_g; v_g] rows."""
    rest = q.shape[1:]
    return torch.cat([q.reshape(groups, -1, *rest), k.reshape(groups, -1, *rest), v.reshape(groups, -1, *rest)],
                     dim=1).reshape(-1, *rest)


def unpack_qkv(qkv: torch.Tensor, arch: Arch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rest = qkv.shape[1:]
    d, per_group = arch.kv_channels, arch.heads_per_group
    grouped = qkv.reshape(arch.num_query_groups, (per_group + 2) * d, *rest)
    q, k, v = torch.split(grouped, [per_group * d, d, d], dim=1)
    return (q.reshape(-1, *rest), k.reshape(-1, *rest), v.reshape(-1, *rest))


def pad_vocab(weight: torch.Tensor, padded: int) -> torch.Tensor:
    """Append zero rows up to the padded vocabulary (they are masked out of the loss)."""
    if weight.shape[0] == padded:
        return weight
    return torch.cat([weight, weight.new_zeros((padded - weight.shape[0], *weight.shape[1:]))])


def interleaved_to_half_split(head_dim: int, rotary_dim: int) -> torch.Tensor:
    """Channel order that turns GPT-J "rotate every two" RoPE into LLaMA's "rotate half".

    Interleaved RoPE rotates channel pairs (2i, 2i+1) by angle i; half-split rotates (i, i + r/2).
    Reordering the rows of the q and k projections the same way, new[i] = old[perm[i]], moves each
    pair into the other convention's place; q.k is unchanged because both move together. Channels
    past rotary_dim (partial RoPE) keep their place."""
    rotary = list(range(0, rotary_dim, 2)) + list(range(1, rotary_dim, 2))
    return torch.tensor(rotary + list(range(rotary_dim, head_dim)))


def half_split_to_interleaved(head_dim: int, rotary_dim: int) -> torch.Tensor:
    return torch.argsort(interleaved_to_half_split(head_dim, rotary_dim))


def permute_head_channels(weight: torch.Tensor, head_dim: int, perm: torch.Tensor) -> torch.Tensor:
    """Reorder the channels within every head of a [heads*head_dim, ...] projection (or its bias)."""
    rest = weight.shape[1:]
    heads = weight.reshape(-1, head_dim, *rest)
    return heads.index_select(1, perm.to(heads.device)).reshape(-1, *rest)


def padded_vocab_size(vocab_size: int, multiple: int) -> int:
    return int(math.ceil(vocab_size / multiple) * multiple)


def expect_shape(name: str, tensor: torch.Tensor, shape, where: str) -> None:
    if tuple(tensor.shape) != tuple(shape):
        raise ConversionError(f"{name} in {where} has shape {list(tensor.shape)}, but the config implies "
                              f"{list(shape)}. The weights and config.json disagree: use the config.json "
                              "that was saved with these weights")
