"""One DPO micro-batch: forward, per-sequence log-probability sums, the pair losses, in the form megatron-core's
pipeline schedules expect (the counterpart of training/step.py's language-model step).

Exactness across layouts:
- TP: per-token log-probs are -vocab_parallel_cross_entropy over the vocabulary shards (contract item 5):
  the full softmax whatever the split; the padded vocabulary is masked by language_model_logits.
- PP: the loss is formed on the last stage from whole rows, and a row holds whole pairs
  (preference/dataset.py), so every sum is complete where it is used.
- DP and micro-batches: loss_func returns (sum of pair losses, pairs) and the run sets
  TransformerConfig.calculate_per_token_loss, so megatron-core divides the gradients by the global batch's
  pair count (summed over micro-batches and data-parallel ranks): the loss is the mean over the global
  batch's pairs, as in one process.
Sums are taken in float64 (a few numbers per row), so packing order does not move them.
"""

from __future__ import annotations

from functools import partial

import torch
from megatron.core import tensor_parallel

from megatron_ext.preference.loss import DPOConfig, METRIC_NAMES, dpo_losses, metric_sums, sequence_logps
from megatron_ext.training.step import language_model_logits, packed_seq_params

BATCH_KEYS = ("tokens", "labels", "loss_mask", "position_ids", "real_tokens", "pair_ids", "ref_logps")
# What the loss function reports per micro-batch under the key "dpo": summed over micro-batches and
# data-parallel ranks; the loss and metrics are then divided by "pairs" (dpo_totals), and the token counts
# feed the fine-tuning throughput and padding lines as for SFT (training/logging.py).
COUNTS = ("trained tokens", "real tokens", "positions")
REPORTED = ("loss sum", "pairs") + METRIC_NAMES + COUNTS


def pair_logps(token_logps: torch.Tensor, loss_mask: torch.Tensor, position_ids: torch.Tensor,
               num_pair_slots: int) -> tuple[torch.Tensor, torch.Tensor]:
    """([b, slots, 2] log-prob sums, [b, slots, 2] scored-token counts) of each row's pairs: segment s of a
    row (a restart of position_ids at 0 starts one) is pair s // 2's chosen (s even) or rejected sequence."""
    b, _ = position_ids.shape
    segments = torch.cumsum((position_ids == 0).long(), dim=1) - 1
    per_row = 2 * num_pair_slots + 1                      # every pair's two segments, then the padding
    segments = segments.clamp(max=per_row - 1)
    rows = torch.arange(b, device=segments.device).unsqueeze(1) * per_row
    sums, counts = sequence_logps(token_logps.double(), loss_mask, segments + rows, b * per_row)
    sums = sums.view(b, per_row)[:, :2 * num_pair_slots].reshape(b, num_pair_slots, 2)
    counts = counts.view(b, per_row)[:, :2 * num_pair_slots].reshape(b, num_pair_slots, 2)
    return sums, counts


def token_logps(logits: torch.Tensor, labels: torch.Tensor, config, true_vocab_size: int) -> torch.Tensor:
    """[b, s] log p(label) from the output layer's vocabulary shard, exact at any TP."""
    logits = language_model_logits(logits, config, true_vocab_size)
    return -tensor_parallel.vocab_parallel_cross_entropy(logits, labels)


def loss_func(dpo: DPOConfig, config, true_vocab_size, batch, logits):
    sums, counts = pair_logps(token_logps(logits, batch["labels"], config, true_vocab_size), batch["loss_mask"],
                              batch["position_ids"], batch["pair_ids"].shape[1])
    valid = batch["pair_ids"] >= 0
    ref = batch["ref_logps"].to(sums.device, torch.float64)[valid]
    if torch.isnan(ref).any():
        raise RuntimeError("a preference pair reached the DPO loss without its reference log-probabilities: the "
                           "reference pass (preference/reference.py) must run before training")
    policy, counts = sums[valid], counts[valid]
    terms = dpo_losses(dpo, policy[:, 0], policy[:, 1], ref[:, 0], ref[:, 1], counts[:, 0], counts[:, 1])
    loss_sum = terms.losses.sum().float()
    num_pairs = valid.sum().to(torch.int)
    tokens = torch.stack([batch["loss_mask"].sum(), batch["real_tokens"].sum(),
                          torch.tensor(batch["labels"].numel(), device=sums.device)]).double()
    reported = torch.cat([torch.stack([loss_sum.detach().double(), num_pairs.double()]), metric_sums(terms),
                          tokens])
    return loss_sum, num_pairs, {"dpo": reported}


def next_batch(data_iterator, device) -> dict:
    batch = next(data_iterator)
    return {key: batch[key].to(device, non_blocking=True) for key in BATCH_KEYS}


def make_forward_step(dpo: DPOConfig):
    """forward_step(data_iterator, model) for megatron-core's schedules, with the DPO loss."""

    def forward_step(data_iterator, model):
        unwrapped = model.module
        device = next(unwrapped.parameters()).device
        batch = next_batch(data_iterator, device)
        packed = packed_seq_params(batch["position_ids"])
        output = model(batch["tokens"], batch["position_ids"], None, packed_seq_params=packed)
        return output, partial(loss_func, dpo, unwrapped.config, unwrapped.true_vocab_size, batch)

    return forward_step


def dpo_totals(losses_reduced) -> dict | None:
    """The global batch's loss (mean over pairs) and TRL's metrics (last pipeline stage; None elsewhere, or
    when the batch holds no pair)."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    if not parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        return None
    total = torch.stack([entry["dpo"] for entry in losses_reduced]).sum(dim=0)
    dist.all_reduce(total, group=parallel_state.get_data_parallel_group())
    totals = dict(zip(REPORTED, total.tolist()))
    pairs = totals["pairs"]
    if pairs == 0:
        return None
    return {"loss": totals["loss sum"] / pairs, "pairs": pairs,
            **{name: totals[name] / pairs for name in METRIC_NAMES}, **{name: totals[name] for name in COUNTS}}
