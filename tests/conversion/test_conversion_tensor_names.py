"""The converters' Megatron tensors (hf_arch.groups, read off megatron-core's model on the meta device by
checkpoint/model_tensors.py) against independent descriptions: the hand-written list they replaced, a
real TP1 GPTModel's state_dict, torch_dist_io's key mapping and the extra-state keys checkpoints had."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from megatron_ext.checkpoint.hf_arch import groups
from megatron_ext.checkpoint.model_tensors import (model_tensors, sharded_entries, single_rank_parallel_state,
                                                   single_stage_model)
from megatron_ext.checkpoint.torch_dist_io import dcp_location
from megatron_ext.models.identity import ModelIdentity
from megatron_ext.models.presets import PRESETS

TINY = [name for name in PRESETS if name.startswith("tiny")]


def _identity(name: str) -> ModelIdentity:
    identity = PRESETS[name]
    return identity if identity.vocab_size else identity.replace(vocab_size=512)


def _hand_written_groups(identity: ModelIdentity) -> list[tuple[str, int | None, dict]]:
    """hf_arch.groups as it was written by hand before it was derived from the model (the expectation)."""
    h, d = identity.hidden_size, identity.kv_channels
    norm = {"weight": (h,), **({"bias": (h,)} if identity.norm_has_bias else {})}
    qkv_rows = (identity.num_attention_heads + 2 * identity.num_query_groups) * d
    qk_norm_widths = {None: None, "head": (d, d),
                      "full": (identity.num_attention_heads * d, identity.num_query_groups * d)}[identity.qk_norm]
    result = [("embedding", None, {"embedding.word_embeddings.weight": (identity.padded_vocab_size, h)})]
    for layer in range(identity.num_layers):
        local = {f"input_layernorm.{k}": s for k, s in norm.items()}
        local["self_attention.linear_qkv.weight"] = (qkv_rows, h)
        if identity.qkv_bias:
            local["self_attention.linear_qkv.bias"] = (qkv_rows,)
        if qk_norm_widths:
            for which, width in zip(("q_layernorm", "k_layernorm"), qk_norm_widths):
                local.update({f"self_attention.{which}.{k}": (width,) for k in norm})
        local["self_attention.linear_proj.weight"] = (h, identity.num_attention_heads * d)
        if identity.add_bias_linear:
            local["self_attention.linear_proj.bias"] = (h,)
        local.update({f"pre_mlp_layernorm.{k}": s for k, s in norm.items()})
        local["mlp.linear_fc1.weight"] = (2 * identity.ffn_hidden_size, h)
        if identity.add_bias_linear:
            local["mlp.linear_fc1.bias"] = (2 * identity.ffn_hidden_size,)
        local["mlp.linear_fc2.weight"] = (h, identity.ffn_hidden_size)
        if identity.add_bias_linear:
            local["mlp.linear_fc2.bias"] = (h,)
        result.append((f"layer {layer}", layer, {f"decoder.layers.{layer}.{k}": s for k, s in local.items()}))
    result.append(("final norm", None, {f"decoder.final_layernorm.{k}": s for k, s in norm.items()}))
    if not identity.tie_embeddings:
        result.append(("output", None, {"output_layer.weight": (identity.padded_vocab_size, h)}))
    return result


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_groups_match_the_hand_written_list(preset):
    identity = _identity(preset)
    derived = [(g.name, g.layer, g.shapes) for g in groups(identity)]
    assert derived == _hand_written_groups(identity)  # dict equality: names and shapes, not their order


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_torch_dist_locations_and_extra_state_are_megatrons(preset):
    """dcp_location (name -> stored key, global shape, chunk offset) agrees with the model's ShardedTensors,
    and the extra-state objects are those checkpoints written before this change held."""
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    identity = _identity(preset)
    entries, _ = sharded_entries(identity)
    for entry in entries:
        assert dcp_location(entry.name, entry.shape, identity.num_layers) == (
            entry.key, entry.global_shape, entry.global_offset), entry.name
    linear = ("self_attention.linear_qkv", "self_attention.linear_proj", "mlp.linear_fc1", "mlp.linear_fc2")
    before = {ShardedObject(f"decoder.layers.{module}._extra_state", None, (identity.num_layers,), (layer,)).unique_key
              for layer in range(identity.num_layers) for module in linear}
    keys = model_tensors(identity).extra_state_keys
    assert len(keys) == len(set(keys)) and set(keys) == before


@pytest.mark.parametrize("preset", TINY)
def test_groups_are_a_real_models_state_dict(preset):
    """A GPTModel built on the CPU as training builds it: its parameters are exactly the groups' tensors."""
    identity = _identity(preset)
    with single_rank_parallel_state():
        torch.manual_seed(0)
        state = single_stage_model(identity, "cpu").state_dict()
    params = {name: tuple(t.shape) for name, t in state.items() if not name.endswith("._extra_state")}
    derived = {name: shape for group in groups(identity) for name, shape in group.shapes.items()}
    assert list(derived) == list(params)  # the model's own order too
    assert derived == params
    # the ShardedObjects are the linear layers' extra states (GPTModel.sharded_state_dict leaves out the
    # output layer's, as megatron-core's checkpoints do)
    extra = {name for name in state if name.endswith("._extra_state")} - {"output_layer._extra_state"}
    named = set()
    for key in model_tensors(identity).extra_state_keys:  # decoder.layers.<rest>/shard_<layer>_<layers>
        stacked, shard = key.split("/")
        named.add(stacked.replace("decoder.layers.", f"decoder.layers.{shard.split('_')[1]}.", 1))
    assert named == extra


def test_process_group_and_parallel_state_are_left_as_found():
    from megatron.core import parallel_state

    model_tensors.cache_clear()
    before = dist.is_initialized(), parallel_state.model_parallel_is_initialized()
    groups(_identity("tiny"))
    assert (dist.is_initialized(), parallel_state.model_parallel_is_initialized()) == before
