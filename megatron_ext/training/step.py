"""One micro-batch forward and its loss, in the form megatron-core's pipeline schedules expect."""

from __future__ import annotations

from functools import partial

import torch
from megatron.core import parallel_state, tensor_parallel
from megatron.core.packed_seq_params import PackedSeqParams

# What loss_func reports per micro-batch, summed over micro-batches and data-parallel ranks for logging.
REPORTED = ("loss sum", "trained tokens", "real tokens", "positions")


def language_model_logits(logits: torch.Tensor, config, true_vocab_size: int) -> torch.Tensor:
    """Final logits from the output layer's [..., vocab/TP] shard (μP's multiplier is already applied by the
    model: models/gpt.py), with the padding rows of the vocabulary masked so they never take probability
    mass (the loss is then the same whatever the padding)."""
    logits = logits.float()
    shard = logits.shape[-1]
    start = parallel_state.get_tensor_model_parallel_rank() * shard
    if start + shard > true_vocab_size:
        is_padding = torch.arange(start, start + shard, device=logits.device) >= true_vocab_size
        logits = logits.masked_fill(is_padding, torch.finfo(logits.dtype).min)
    return logits


def loss_func(config, true_vocab_size, labels, loss_mask, real_tokens, logits):
    logits = language_model_logits(logits, config, true_vocab_size)
    losses = tensor_parallel.vocab_parallel_cross_entropy(logits, labels)
    loss_mask = loss_mask.float()
    loss_sum = (losses.float() * loss_mask).sum()
    num_tokens = loss_mask.sum().to(torch.int)
    # Summed (not averaged) here: the schedule divides by num_tokens (per micro-batch, or with
    # calculate_per_token_loss by the global batch's total), and logging sums the counts over micro-batches
    # and data-parallel ranks for a token-weighted mean.
    real = real_tokens.float().sum() if real_tokens is not None else torch.tensor(float(labels.numel()))
    reported = torch.stack([loss_sum.detach(), num_tokens.float(), real.to(loss_sum.device),
                            torch.tensor(float(labels.numel()), device=loss_sum.device)])
    return loss_sum, num_tokens, {"lm loss": reported}


def packed_seq_params(position_ids: torch.Tensor) -> PackedSeqParams | None:
    """Segment boundaries of packed rows, found where position ids restart at 0 (data/packing.py); None when
    every row is one sequence (pretraining: attention is plain causal). cu_seqlens index the batch's tokens
    flattened row by row; qkv_format "sbhd" keeps megatron-core's attention from reshaping anything, and our
    core attention (layers/attention.py) reads the boundaries."""
    batch, seq = position_ids.shape
    starts = position_ids == 0
    if int(starts.sum()) == batch and bool((position_ids[:, -1] == seq - 1).all()):
        return None
    starts[:, 0] = True
    flat = torch.nonzero(starts.reshape(-1), as_tuple=False).squeeze(1)
    total = torch.tensor([batch * seq], device=flat.device)
    cu_seqlens = torch.cat([flat, total]).to(torch.int32)
    max_len = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    return PackedSeqParams(qkv_format="sbhd", cu_seqlens_q=cu_seqlens, cu_seqlens_kv=cu_seqlens,
                           max_seqlen_q=max_len, max_seqlen_kv=max_len)


def next_batch(data_iterator, device) -> dict:
    batch = next(data_iterator)
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()
            if key in ("tokens", "labels", "loss_mask", "position_ids", "real_tokens")}


def forward_step(data_iterator, model):
    unwrapped = model.module
    device = next(unwrapped.parameters()).device
    batch = next_batch(data_iterator, device)
    packed = packed_seq_params(batch["position_ids"])
    output = model(batch["tokens"], batch["position_ids"], None, packed_seq_params=packed)
    return output, partial(loss_func, unwrapped.config, unwrapped.true_vocab_size,
                           batch["labels"], batch["loss_mask"], batch.get("real_tokens"))
