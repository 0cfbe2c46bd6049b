"""Weight initialisation that depends on the seed alone, never on the parallel layout.

Each parameter is drawn in full (its global, unsharded shape) from a generator seeded by
(seed, the parameter's global name), then this rank keeps its tensor-parallel shard. So TP1,
TP2, PP2 or any mix start from bit-identical weights, and a layout can change mid-project.
"""

from __future__ import annotations

import hashlib
import re

import torch
from megatron.core import parallel_state

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.")


def global_param_name(model, name: str) -> str:
    """Name a parameter as a single-stage model would, whatever stage or chunk owns it."""
    if name == "output_layer.weight" and model.share_embeddings_and_output_weights:
        return "embedding.word_embeddings.weight"  # tied: the last stage holds a copy
    match = _LAYER.match(name)
    if match:
        layer = model.decoder.layers[int(match.group(1))]
        return f"decoder.layers.{layer.layer_number - 1}." + name[match.end():]
    return name


def _generator_seed(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _shard(full: torch.Tensor, param: torch.nn.Parameter, tp_rank: int, tp_size: int) -> torch.Tensor:
    """Megatron's tensor-parallel split, strided for the fused [gate; up] fc1 weight."""
    if not getattr(param, "tensor_model_parallel", False) or tp_size == 1:
        return full
    dim, stride = param.partition_dim, getattr(param, "partition_stride", 1)
    pieces = torch.chunk(full, tp_size * stride, dim=dim)
    return torch.cat(pieces[tp_rank::tp_size], dim=dim)


def initialize_parameters(model, seed: int, sample_fn) -> None:
    """sample_fn(global_name, full_shape, generator, device) -> full fp32 tensor."""
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    tp_size = parallel_state.get_tensor_model_parallel_world_size()
    with torch.no_grad():
        for name, param in model.named_parameters():
            gname = global_param_name(model, name)
            full_shape = list(param.shape)
            if getattr(param, "tensor_model_parallel", False):
                full_shape[param.partition_dim] *= tp_size
            generator = torch.Generator(device=param.device)
            generator.manual_seed(_generator_seed(seed, gname))
            full = sample_fn(gname, full_shape, generator, param.device)
            param.copy_(_shard(full, param, tp_rank, tp_size))
