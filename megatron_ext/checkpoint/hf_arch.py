"""The model as a checkpoint converter sees it: the Megatron tensors a ModelIdentity implies, the identity
record an export leaves in config.json, and the layout helpers the weight maps' steps use
(weight_maps.py; one table per Hugging Face layout in hf_llama.py, hf_crystalcoder.py).

Megatron tensors are named as GPTModel.state_dict() names them in a single-stage, single-rank
model (`decoder.layers.3.mlp.linear_fc1.weight`), taken from that model itself (model_tensors.py);
torch_dist_io.py maps those names to the global ShardedTensor keys of megatron-core's checkpoints.
Layouts, fixed by megatron-core:
  * linear_qkv rows are grouped per query group g: [q heads of g; k of g; v of g], head_dim rows each;
  * linear_fc1 is [gate; up] (2F x H);
  * the vocabulary is padded to a multiple of make_vocab_size_divisible_by (rows past the true
    vocabulary are masked out of the softmax, so any value works; imports write zeros).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from megatron_ext.models.identity import CHECKPOINT_KEY, ModelIdentity


class ConversionError(SystemExit):
    """A problem with the input or the request, stated with its fix; exits with status 1."""

    def __init__(self, message: str):
        super().__init__(f"error: {message}")


# The torch_dtype names config.json files use, for the dtype an export writes.
DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}

# The namespaced config.json key under which an export records the full model identity: the fields no HF
# layout expresses (μP bases, init std, vocabulary padding) and those an export folds into the weights (μP
# multipliers, interleaved RoPE in the LLaMA layout). transformers keeps unknown keys and ignores them.
IDENTITY_KEY = "megatron_ext_model_identity"


def restore_identity(from_config: ModelIdentity, config: dict, expressed: tuple[str, ...]) -> ModelIdentity:
    """The identity an import writes: the one config.json's own fields give, completed by the identity an
    export recorded in it (IDENTITY_KEY) when that record agrees on every field the layout expresses
    (`expressed`); a config edited since the export is taken as it stands, with a warning."""
    recorded = config.get(IDENTITY_KEY)
    if not recorded:
        return from_config
    try:
        recorded = ModelIdentity.from_checkpoint({CHECKPOINT_KEY: recorded})
    except SystemExit as exc:
        print(f"warning: config.json's {IDENTITY_KEY} is unreadable ({exc}); using config.json's own fields",
              file=sys.stderr)
        return from_config
    disagree = [f for f in expressed if getattr(recorded, f) != getattr(from_config, f)]
    if disagree:
        print(f"warning: config.json's {IDENTITY_KEY} disagrees with its own {', '.join(disagree)} (was the "
              "config edited after the export?); using config.json's fields, without the recorded μP bases",
              file=sys.stderr)
        return from_config
    return recorded


def groups(identity: ModelIdentity) -> list["Group"]:
    """Every Megatron tensor, in the order a converter streams them (one group at a time): embedding, each
    layer, final norm, output (untied). Read off megatron-core's own model of the identity
    (model_tensors.py), so the names and shapes are the ones training saves."""
    from megatron_ext.checkpoint.model_tensors import model_tensors

    return list(model_tensors(identity).groups)


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


def unpack_qkv(qkv: torch.Tensor, identity: ModelIdentity) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rest = qkv.shape[1:]
    d, per_group = identity.kv_channels, identity.heads_per_group
    grouped = qkv.reshape(identity.num_query_groups, (per_group + 2) * d, *rest)
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


def expect_shape(name: str, tensor: torch.Tensor, shape, where: str) -> None:
    if tuple(tensor.shape) != tuple(shape):
        raise ConversionError(f"{name} in {where} has shape {list(tensor.shape)}, but the config implies "
                              f"{list(shape)}. The weights and config.json disagree: use the config.json "
                              "that was saved with these weights")
