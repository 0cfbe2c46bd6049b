"""One micro-batch forward and its loss, in the form megatron-core's pipeline schedules expect."""

from __future__ import annotations

from functools import partial

import torch
from megatron.core import parallel_state, tensor_parallel


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


def loss_func(config, true_vocab_size, labels, loss_mask, logits):
    logits = language_model_logits(logits, config, true_vocab_size)
    losses = tensor_parallel.vocab_parallel_cross_entropy(logits, labels)
    loss_mask = loss_mask.float()
    loss_sum = (losses.float() * loss_mask).sum()
    num_tokens = loss_mask.sum().to(torch.int)
    # Summed (not averaged) here: the schedule divides by num_tokens, and logging sums
    # (loss, tokens) over micro-batches and data-parallel ranks for a token-weighted mean.
    reported = torch.stack([loss_sum.detach(), num_tokens.float()])
    return loss_sum, num_tokens, {"lm loss": reported}


def next_batch(data_iterator, device) -> dict:
    batch = next(data_iterator)
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()
            if key in ("tokens", "labels", "loss_mask", "position_ids")}


def forward_step(data_iterator, model):
    unwrapped = model.module
    device = next(unwrapped.parameters()).device
    batch = next_batch(data_iterator, device)
    output = model(batch["tokens"], batch["position_ids"], None)
    return output, partial(loss_func, unwrapped.config, unwrapped.true_vocab_size,
                           batch["labels"], batch["loss_mask"])
