"""The Megatron tensors of a ModelIdentity, as megatron-core itself names them.

The converters need every tensor's name and full shape, and the `_extra_state` objects a checkpoint
must hold. Rather than spell them out by hand (a second description of the model that drifts from the
layers), they are read off the model training builds: megatron-core's GPTModel from
models/gpt.py build_gpt_chunk and models/config.py transformer_config, at TP1/PP1, on the meta
device (no memory, no initialisation cost), and its `sharded_state_dict()`:
  * each ShardedTensor (or the ShardedTensors a ShardedTensorFactory builds: linear_fc1's gate/up split)
    gives a parameter's state-dict name (`decoder.layers.3.mlp.linear_fc1.weight`), its global key and
    shape; per-layer parameters carry one leading layer axis (prepend_axis_num == 1);
  * each ShardedObject is an `_extra_state` a loading model asks for; its unique_key names it in the
    checkpoint.
A new layer option therefore reaches the converters without an edit here; only its weight map is needed.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist

from megatron_ext.checkpoint.hf_arch import Group
from megatron_ext.models.identity import ModelIdentity

# Module prefix (in the single-stage state dict) -> the converter's group; layers are "layer N".
_GROUP_OF_PREFIX = {"embedding.": "embedding", "decoder.final_layernorm.": "final norm", "output_layer.": "output"}


@dataclass(frozen=True)
class ModelTensors:
    groups: tuple[Group, ...]        # embedding, layer 0..L-1, final norm, output (untied): streaming order
    extra_state_keys: tuple[str, ...]  # ShardedObject unique keys of the `_extra_state` entries


@dataclass(frozen=True)
class ShardedEntry:
    """One parameter as sharded_state_dict() describes it."""
    name: str           # state-dict name, layer index included
    key: str            # global torch_dist key (layers stacked: no index)
    global_shape: tuple
    global_offset: tuple
    prepend_axis_num: int

    @property
    def shape(self) -> tuple:
        """The parameter's full (unsharded, one layer) shape."""
        return tuple(self.global_shape[self.prepend_axis_num:])

    @property
    def layer(self) -> int | None:
        return self.global_offset[0] if self.prepend_axis_num == 1 else None


@functools.lru_cache(maxsize=16)
def model_tensors(identity: ModelIdentity) -> ModelTensors:
    """Groups and extra-state keys of `identity`'s model (cached: converters ask several times)."""
    entries, objects = sharded_entries(identity)
    groups: dict[str, dict] = {}
    layers: dict[str, int | None] = {}
    for entry in entries:
        if entry.layer is not None:
            group = f"layer {entry.layer}"
        else:
            group = next((g for prefix, g in _GROUP_OF_PREFIX.items() if entry.name.startswith(prefix)), None)
            if group is None:
                raise RuntimeError(f"megatron-core's model has a tensor {entry.name} outside the embedding, layers, "
                                   "final norm and output: the converters do not know where it belongs")
        groups.setdefault(group, {})[entry.name] = entry.shape
        layers[group] = entry.layer
    return ModelTensors(tuple(Group(name, shapes, layer=layers[name]) for name, shapes in groups.items()),
                        tuple(objects))


def sharded_entries(identity: ModelIdentity) -> tuple[list[ShardedEntry], list[str]]:
    """(parameters, extra-state unique keys) in the model's own order, from sharded_state_dict()."""
    with _quiet(), single_rank_parallel_state():
        from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor, ShardedTensorFactory

        sharded = single_stage_model(identity, "meta").sharded_state_dict()
    entries, objects = [], []
    for name, item in sharded.items():
        if isinstance(item, ShardedObject):
            objects.append(item.unique_key)
            continue
        # linear_fc1 under a GLU is a factory that saves gate and up as two chunks of one tensor
        parts = item.build() if isinstance(item, ShardedTensorFactory) else [item]
        parts = list(parts.values()) if isinstance(parts, dict) else list(parts)
        if not parts or not all(isinstance(p, ShardedTensor) for p in parts):
            raise RuntimeError(f"{name}: unexpected sharded_state_dict entry {type(item).__name__}")
        described = {(p.key, tuple(p.global_shape), p.prepend_axis_num) for p in parts}
        if len(described) != 1:
            raise RuntimeError(f"{name} is saved as several tensors {sorted(described)}; the converters write one")
        key, global_shape, prepend = described.pop()
        offset = tuple(min(p.global_offset[i] for p in parts) for i in range(len(global_shape)))
        entries.append(ShardedEntry(name, key, global_shape, offset, prepend))
    return entries, objects


def single_stage_model(identity: ModelIdentity, device: str = "meta"):
    """The model as training builds it (default compute flags, TP1/PP1), on `device` (meta: shapes only),
    inside single_rank_parallel_state(). The μP multipliers and precision are left at their defaults: they
    scale values, never rename or reshape."""
    from megatron_ext.arguments.configs import ComputeConfig, ParallelConfig, RunConfig
    from megatron_ext.models.config import transformer_config
    from megatron_ext.models.gpt import build_gpt_chunk

    parallel = ParallelConfig(tensor_model_parallel_size=1, pipeline_model_parallel_size=1,
                              virtual_pipeline_model_parallel_size=None, sequence_parallel=False,
                              data_parallel_size=1, use_distributed_optimizer=False, overlap_grad_reduce=False,
                              overlap_param_gather=False, device="cpu", distributed_timeout_minutes=10)
    compute = ComputeConfig(bf16=False, fp16=False, recompute_granularity=None, recompute_method=None,
                            recompute_num_layers=None, attention_dropout=0.0, hidden_dropout=0.0,
                            layer_spec="llama", kernels="auto", norm_impl="kernels", attention_backend="auto")
    # transformer_config reads only the model, parallel layout and compute settings of a run
    run = RunConfig(model=identity, parallel=parallel, compute=compute, training=None, data=None,
                    checkpoint=None, logging=None, flags=None)
    with torch.device(device):
        return build_gpt_chunk(transformer_config(run, on_cpu=True), identity, compute.layer_spec, None)


@contextlib.contextmanager
def single_rank_parallel_state():
    """megatron-core builds a model only inside an initialised parallel_state, which needs a process group.
    The converter tools run in a plain process: give them a world of one (an in-process store, no port)
    and tear down exactly what was created, so a caller's own group and parallel state are untouched."""
    from megatron.core import parallel_state

    created_group = not dist.is_initialized()
    if created_group:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    created_state = False
    try:
        if parallel_state.model_parallel_is_initialized():
            layout = (parallel_state.get_tensor_model_parallel_world_size(),
                      parallel_state.get_pipeline_model_parallel_world_size())
            if layout != (1, 1):
                raise RuntimeError(f"the converters' model tensors need TP1/PP1, but this process has TP/PP {layout}")
        elif dist.get_world_size() != 1:
            # initialising parallel_state is collective: one rank alone would wait for the others forever
            raise RuntimeError("the converters' model tensors are derived in a single process; this one is rank "
                               f"{dist.get_rank()} of {dist.get_world_size()} without a parallel state")
        else:
            parallel_state.initialize_model_parallel(1, 1)
            created_state = True
        yield
    finally:
        if created_state:
            parallel_state.destroy_model_parallel()
        if created_group:
            dist.destroy_process_group()


@contextlib.contextmanager
def _quiet():
    """megatron-core's import and construction warnings (missing Transformer Engine/Apex, per-layer notes on
    options training also leaves at their defaults) would clutter the converters' output."""
    logger = logging.getLogger("megatron.core")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
