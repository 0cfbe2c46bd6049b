"""Declarative weight maps: one table per Hugging Face layout, run in both directions.

A table is a tuple of `Entry`s. Each says which HF tensor(s) make one Megatron tensor, and how: a chain
of steps, written in the import direction (HF -> Megatron). Every step has an inverse, and an export runs
the same chain backwards, so a layout's two directions cannot drift apart:

    Entry("decoder.layers.{layer}.mlp.linear_fc1.weight",
          ("model.layers.{layer}.mlp.gate_proj.weight", "model.layers.{layer}.mlp.up_proj.weight"), Fuse())

Import: cat(gate, up) -> linear_fc1. Export: chunk(linear_fc1, 2) -> gate, up.

Which entries apply is decided by the Megatron tensors a model has (hf_arch.groups) and by the entry's
`when` (whether the HF layout has the tensor for this model). Where the HF layout has a tensor that the
Megatron model lacks (a bias; `absent` says why it may be missing), an export writes zeros and an import
refuses a non-zero one, since dropping it would change the model's outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from megatron_ext.checkpoint.hf_arch import (ConversionError, Group, half_split_to_interleaved,
                                             interleaved_to_half_split, meta_tensors, pack_qkv, pad_vocab,
                                             permute_head_channels, unpack_qkv)
from megatron_ext.models.identity import ModelIdentity

Tensors = list  # of torch.Tensor; a step maps the list of one side to the list of the other


class Step:
    """One layout change. forward: HF side -> Megatron side (import); inverse: back (export)."""

    def forward(self, xs: Tensors, m: ModelIdentity) -> Tensors:
        raise NotImplementedError

    def inverse(self, xs: Tensors, m: ModelIdentity) -> Tensors:
        raise NotImplementedError


@dataclass(frozen=True)
class Transpose(Step):
    """GPT-2 Conv1D stores its weight [in, out], nn.Linear and Megatron [out, in]."""

    def forward(self, xs, m):
        return [x.t() for x in xs]

    inverse = forward


@dataclass(frozen=True)
class Fuse(Step):
    """Several HF tensors stacked along rows into one Megatron tensor ([gate; up] -> linear_fc1)."""
    parts: int = 2

    def forward(self, xs, m):
        return [torch.cat(xs)]

    def inverse(self, xs, m):
        return list(torch.chunk(xs[0], self.parts))


@dataclass(frozen=True)
class Split(Step):
    """One HF tensor holding equal row blocks (CrystalCoder's c_attn: [q; k; v]) -> the blocks."""
    parts: int = 3

    def forward(self, xs, m):
        return list(torch.chunk(xs[0], self.parts))

    def inverse(self, xs, m):
        return [torch.cat(xs)]


@dataclass(frozen=True)
class PackQKV(Step):
    """Separate q, k, v -> megatron-core's linear_qkv rows, grouped per query group [q_g; k_g; v_g]."""

    def forward(self, xs, m):
        return [pack_qkv(*xs, m.num_query_groups)]

    def inverse(self, xs, m):
        return list(unpack_qkv(xs[0], m))


@dataclass(frozen=True)
class VocabRows(Step):
    """Megatron's vocabulary is padded to make_vocab_size_divisible_by: import appends zero rows, export
    drops them."""

    def forward(self, xs, m):
        return [pad_vocab(x, m.padded_vocab_size) for x in xs]

    def inverse(self, xs, m):
        return [x[:m.vocab_size] for x in xs]


@dataclass(frozen=True)
class Scale(Step):
    """A multiplier the HF layout folds into the weight: HF = Megatron x factor(model). Export multiplies,
    import multiplies by 1/factor. `on`: indices of the tensors it applies to (None: all)."""
    factor: Callable[[ModelIdentity], float]
    on: tuple | None = None

    def forward(self, xs, m):
        return self._apply(xs, 1.0 / self.factor(m))

    def inverse(self, xs, m):
        return self._apply(xs, self.factor(m))

    def _apply(self, xs, scale):
        # In fp32, so a bf16 weight is rounded once (on the final cast), not twice.
        return [x if scale == 1.0 or (self.on is not None and i not in self.on) else x.float() * scale
                for i, x in enumerate(xs)]


@dataclass(frozen=True)
class RopeOrder(Step):
    """The q and k channels of every head, reordered between the HF layout's RoPE convention
    (`hf_interleaved`) and the model's (identity.rotary_interleaved); nothing when they agree.
    `on`: indices of the q and k tensors."""
    hf_interleaved: bool
    on: tuple = (0, 1)

    def forward(self, xs, m):
        return self._apply(xs, m, interleaved_to_half_split if self.hf_interleaved else half_split_to_interleaved)

    def inverse(self, xs, m):
        return self._apply(xs, m, half_split_to_interleaved if self.hf_interleaved else interleaved_to_half_split)

    def _apply(self, xs, m, order):
        if m.rotary_interleaved == self.hf_interleaved:
            return xs
        perm = order(m.kv_channels, m.rotary_dim)
        return [permute_head_channels(x, m.kv_channels, perm) if i in self.on else x for i, x in enumerate(xs)]


# ---- factors the LLaMA layout folds in (μP) ----------------------------------------------------

def embedding_multiplier(m: ModelIdentity) -> float:
    return m.embedding_multiplier


def logits_multiplier(m: ModelIdentity) -> float:
    return m.logits_multiplier


def residual_branch_multiplier(m: ModelIdentity) -> float:
    """Depth-μP's 1/sqrt(L / L_base) on the attention and MLP outputs (1 without), folded into their weights."""
    return m.residual_branch_multiplier


def key_scale(m: ModelIdentity) -> float:
    """μP's 1/d attention becomes LLaMA's 1/sqrt(d) when k carries the other 1/sqrt(d)."""
    return 1.0 / math.sqrt(m.kv_channels) if m.attention_scores_by_d else 1.0


# ---- entries -------------------------------------------------------------------------------------

def always(m: ModelIdentity) -> bool:
    return True


@dataclass(frozen=True, init=False)
class Entry:
    """HF tensor(s) `hf` make the Megatron tensor `megatron` through `steps` (import order). Names may hold
    `{layer}`. when: whether the HF layout has these tensors for this model. absent: why the Megatron model
    may lack the tensor while HF has it (then export writes zeros, import refuses non-zero). export_only: a
    second HF copy of a Megatron tensor (tied embeddings that μP folding unties); an import ignores it."""
    megatron: str
    hf: tuple
    steps: tuple = ()
    when: Callable[[ModelIdentity], bool] = always
    absent: str | None = None
    export_only: bool = False

    def __init__(self, megatron: str, hf, *steps: Step, when=always, absent=None, export_only=False):
        for name, value in dict(megatron=megatron, hf=(hf,) if isinstance(hf, str) else tuple(hf), steps=steps,
                                when=when, absent=absent, export_only=export_only).items():
            object.__setattr__(self, name, value)

    def names(self, layer: int | None) -> tuple[str, list[str]]:
        return self.megatron.format(layer=layer), [n.format(layer=layer) for n in self.hf]

    def to_megatron(self, xs: Tensors, m: ModelIdentity) -> torch.Tensor:
        for step in self.steps:
            xs = step.forward(xs, m)
        assert len(xs) == 1, f"{self.megatron}: the steps leave {len(xs)} tensors"
        return xs[0]

    def to_hf(self, x: torch.Tensor, m: ModelIdentity) -> Tensors:
        xs = [x]
        for step in reversed(self.steps):
            xs = step.inverse(xs, m)
        assert len(xs) == len(self.hf), f"{self.megatron}: the steps give {len(xs)} HF tensors, not {len(self.hf)}"
        return xs


@dataclass(frozen=True)
class Buffer:
    """A per-layer HF tensor that holds no weights but a value the model's identity fixes (open_lm's rotary
    inv_freq, a persistent buffer its modeling code loads and uses): an export writes it in float32, an import
    checks it (a different value means a different model) instead of loading it. `hf` holds `{layer}`."""
    hf: str
    value: Callable[[ModelIdentity], torch.Tensor]

    def name(self, layer: int | None) -> str:
        return self.hf.format(layer=layer)


def buffers(table, group: Group, m: ModelIdentity) -> dict:
    """HF name -> float32 value of the layer group's buffers ({} for the other groups)."""
    if group.layer is None:
        return {}
    return {b.name(group.layer): b.value(m).float() for b in table if isinstance(b, Buffer)}


def _module(name: str) -> str:
    return name.rsplit(".", 1)[0]


def _entries(table, group: Group, m: ModelIdentity):
    """(entry, Megatron name, HF names) of the entries for one group: those whose Megatron module is in
    the group (a missing bias belongs to its module's group) and whose HF tensors exist for this model."""
    modules = {_module(name) for name in group.shapes}
    for entry in table:
        if not isinstance(entry, Entry):
            continue
        if ("{layer}" in entry.megatron) != (group.layer is not None) or not entry.when(m):
            continue
        megatron, hf = entry.names(group.layer)
        if _module(megatron) in modules:
            yield entry, megatron, hf


def to_megatron(table, group: Group, m: ModelIdentity, get) -> dict:
    """The Megatron tensors of one group; get(hf_name) returns an HF tensor."""
    out = {}
    for entry, megatron, hf in _entries(table, group, m):
        if entry.export_only:
            continue
        tensors = [get(name) for name in hf]
        if megatron in group.shapes:
            out[megatron] = entry.to_megatron(tensors, m)
            continue
        if entry.absent is None:
            raise ConversionError(f"{megatron} is not in this model, but the layout maps {', '.join(hf)} to it")
        for name, tensor in zip(hf, tensors):
            if not tensor.is_meta and bool(tensor.any()):
                raise ConversionError(f"{name} is not zero, but {entry.absent}")
    return out


def to_hf(table, group: Group, m: ModelIdentity, t: dict) -> dict:
    """The HF tensors of one group from its Megatron tensors (t: Megatron name -> tensor)."""
    out, mapped = {}, set()
    for entry, megatron, hf in _entries(table, group, m):
        tensor = t.get(megatron)
        if tensor is None:
            if entry.absent is None:
                raise ConversionError(f"{', '.join(hf)} need {megatron}, which this model does not have")
            weight = t[_module(megatron) + ".weight"]  # a missing bias: zeros over its module's output rows
            tensor = weight.new_zeros(weight.shape[0])
        mapped.add(megatron)
        out.update(zip(hf, entry.to_hf(tensor, m)))
    unmapped = sorted(set(group.shapes) - mapped)
    if unmapped:
        raise ConversionError(f"{', '.join(unmapped)} have no place in this layout")
    return out


def hf_shapes(table, group: Group, m: ModelIdentity, dtype=torch.float32) -> dict:
    """HF name -> shape of one group's HF tensors, from shapes alone (the export run on meta tensors), so
    an import checks its input and an export plans its shards before any data is read."""
    return {name: tuple(t.shape) for name, t in to_hf(table, group, m, meta_tensors(group.shapes, dtype)).items()}
