"""--pretrained-checkpoint: a fine-tuning run starts from another run's weights (Megatron-LM's flag).

Weights only: iteration, optimizer, LR schedule, RNG and data position start fresh. Any saved TP/PP layout
loads at any other (the torch_dist format keys tensors by their global identity). When the run's tokenizer
has more ids than the checkpoint's (special tokens a chat format adds), the embedding and output rows grow:
the old rows are kept, each new token's row is the mean of the old tokens' rows (a start the model already
finds plausible, not a random vector of another scale), and the padding rows stay zero.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.mapping import ShardedTensor
from torch.distributed.checkpoint.api import CheckpointException

from megatron_ext.checkpoint.dist import _cause, read_checkpoint_args
from megatron_ext.checkpoint.integrity import IntegrityError, verify_checksums
from megatron_ext.checkpoint.paths import CheckpointError, existing_iteration_dir
from megatron_ext.models.identity import ModelIdentity

VOCAB_TENSORS = ("word_embeddings.weight", "output_layer.weight")


def load_pretrained(root: str, model, optimizer, run) -> None:
    """Load ROOT's latest weights into the built model (RunConfig `run`), growing the vocabulary if needed."""
    iteration, common = read_checkpoint_args(root)
    path = existing_iteration_dir(root, iteration)
    saved, ours = ModelIdentity.from_checkpoint(common), run.model
    _check_shapes(saved, ours, path)
    if not run.checkpoint.no_verify_checkpoint:
        try:
            verify_checksums(path)
        except IntegrityError as exc:
            raise CheckpointError(f"{exc}; --no-verify-checkpoint skips this check") from None
    grows = saved.padded_vocab_size != ours.padded_vocab_size or saved.vocab_size != ours.vocab_size
    state = {f"model{i}": chunk.module.sharded_state_dict() for i, chunk in enumerate(model)}
    resized = _whole_vocab_tensors(state, saved.padded_vocab_size) if grows else {}
    try:
        loaded = dist_checkpointing.load(state, path)
    except (Exception, CheckpointException) as exc:
        raise CheckpointError(f"cannot load --pretrained-checkpoint {path}: {_cause(exc)}") from exc
    for (chunk_key, name), local in resized.items():
        grown = grow_vocab_rows(loaded[chunk_key][name], saved.vocab_size, ours.vocab_size, ours.padded_vocab_size)
        start = local.global_offset[0]
        loaded[chunk_key][name] = grown[start:start + local.local_shape[0]].to(local.data.dtype).clone()
    for i, chunk in enumerate(model):
        chunk.module.load_state_dict(loaded[f"model{i}"], strict=True)
    # bf16/fp16 train an fp32 main copy inside the optimizer, built from the random init: refresh it.
    optimizer.reload_model_params()
    if dist.get_rank() == 0:
        growth = (f"; vocabulary grown from {saved.vocab_size} to {ours.vocab_size} ids (new rows: the mean of the "
                  f"old)" if grows else "")
        print(f" > started from --pretrained-checkpoint {path} (its iteration {common.get('iteration', 0)}): "
              f"weights only; iteration, optimizer, LR schedule and data start fresh{growth}", flush=True)


def _check_shapes(saved: ModelIdentity, ours: ModelIdentity, path: str) -> None:
    for field, theirs, mine in saved.shape_differences(ours):
        if field != "padded_vocab_size":
            raise CheckpointError(f"--pretrained-checkpoint {path} has {field}={theirs!r} but this run has {mine!r}: "
                                  "drop the model flags that differ (the checkpoint supplies them)")
    if ours.vocab_size < saved.vocab_size:
        raise CheckpointError(
            f"--pretrained-checkpoint {path} has a {saved.vocab_size}-id vocabulary but this run's tokenizer has "
            f"{ours.vocab_size}: use the checkpoint's tokenizer (plus any --special-tokens the chat format needs)")


def _whole_vocab_tensors(state: dict, saved_rows: int) -> dict:
    """Swap each vocabulary-sized tensor of the load request for the checkpoint's whole tensor (every rank
    reads all of it; at most a few hundred MB); returns {(chunk, name): the local shard it replaced}."""
    replaced = {}
    for chunk_key, tensors in state.items():
        for name, tensor in tensors.items():
            if isinstance(tensor, ShardedTensor) and name.endswith(VOCAB_TENSORS):
                whole = torch.empty((saved_rows, *tensor.global_shape[1:]), dtype=tensor.data.dtype)
                tensors[name] = ShardedTensor.from_rank_offsets(tensor.key, whole, replica_id=tensor.replica_id)
                replaced[(chunk_key, name)] = tensor
    return replaced


def grow_vocab_rows(weight: torch.Tensor, old_vocab: int, new_vocab: int, new_rows: int) -> torch.Tensor:
    """[new_rows, hidden]: rows < old_vocab copied, rows of the added ids the mean of those, padding zero."""
    grown = torch.zeros((new_rows, *weight.shape[1:]), dtype=torch.float32)
    grown[:old_vocab] = weight[:old_vocab].float()
    grown[old_vocab:new_vocab] = weight[:old_vocab].float().mean(dim=0)
    return grown
