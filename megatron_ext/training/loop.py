"""The training loop, read top to bottom: step, log, evaluate, save, until --train-iters."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.distributed import finalize_model_grads
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_ext.training.step import REPORTED, forward_step
from megatron_ext.training.timers import NO_TIMERS, PhaseTimers


@dataclass
class TrainState:
    iteration: int = 0
    consumed_samples: int = 0


def connect_schedule(config, model, optimizer, parallel) -> None:
    """Hooks megatron-core's pipeline schedules call back into (Megatron-LM wires the same)."""
    config.grad_scale_func = optimizer.scale_loss
    config.finalize_model_grads_func = finalize_model_grads
    no_sync = [chunk.no_sync for chunk in model]
    config.no_sync_func = no_sync[0] if len(model) == 1 else no_sync
    if parallel.overlap_grad_reduce:
        sync = [chunk.start_grad_sync for chunk in model]
        config.grad_sync_func = sync[0] if len(model) == 1 else sync
    if parallel.overlap_param_gather and parallel.use_distributed_optimizer:
        gather = [chunk.start_param_sync for chunk in model]
        config.param_sync_func = gather[0] if len(model) == 1 else gather


def run_microbatches(model, data_iterators, training, forward_only: bool, objective=None):
    """objective: None for next-token prediction, or e.g. preference/objective.py's DPOObjective (its
    forward_step, and loss_and_totals for the reported sums)."""
    schedule = get_forward_backward_func()
    return schedule(
        forward_step_func=objective.forward_step if objective else forward_step,
        data_iterator=data_iterators if len(model) > 1 else data_iterators[0],
        model=model if len(model) > 1 else model[0],
        num_microbatches=training.num_microbatches,
        seq_length=training.seq_length,
        micro_batch_size=training.micro_batch_size,
        forward_only=forward_only,
    )


def batch_totals(losses_reduced) -> dict | None:
    """The global batch's sums of step.REPORTED over micro-batches and data-parallel ranks (last pipeline
    stage only; None elsewhere)."""
    if not parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        return None
    total = torch.stack([entry["lm loss"] for entry in losses_reduced]).sum(dim=0)
    dist.all_reduce(total, group=parallel_state.get_data_parallel_group())
    return dict(zip(REPORTED, total.tolist()))


def average_loss(losses_reduced) -> float | None:
    """Token-weighted mean over micro-batches and data-parallel ranks (last pipeline stage only). None when
    the batch trains no token (fine-tuning rows can be all prompt): it has no loss, and is not a NaN."""
    totals = batch_totals(losses_reduced)
    if totals is None or totals["trained tokens"] == 0:
        return None
    return totals["loss sum"] / totals["trained tokens"]


def trains_no_token(model, losses_reduced) -> bool:
    """Fine-tuning (the loss averaged over the global batch's trained tokens) only: whether no rank's batch
    had a trained token, agreed by every rank (only the last pipeline stage counts them)."""
    from megatron.core.utils import get_model_config

    if not get_model_config(model[0]).calculate_per_token_loss:
        return False
    device = next(model[0].parameters()).device
    count = torch.zeros(1, device=device)
    if parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        count += sum(float(entry["lm loss"][1]) for entry in losses_reduced)
    dist.all_reduce(count)
    return count.item() == 0


def base_lr(scheduler) -> float:
    """The scheduled LR of parameters without a per-group (μP) override."""
    return scheduler.get_lr({})


def train_step(model, optimizer, scheduler, data_iterators, training, timers: PhaseTimers = NO_TIMERS,
               objective=None):
    for chunk in model:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    with timers.phase("forward-backward"):
        losses = run_microbatches(model, data_iterators, training, forward_only=False, objective=objective)
    if objective is None and trains_no_token(model, losses):  # zero gradient: no step (Adam's state, decay stay)
        scheduler.step(increment=training.global_batch_size)
        return None, None, batch_totals(losses)
    with timers.phase("optimizer"):
        succeeded, grad_norm, _ = optimizer.step()
    if succeeded:  # fp16 skips the step when gradients overflowed
        scheduler.step(increment=training.global_batch_size)
    if objective:
        loss, totals = objective.loss_and_totals(losses)
        return loss, grad_norm, totals
    return average_loss(losses), grad_norm, batch_totals(losses)


def evaluate(model, data_iterators, training, eval_iters: int, objective=None) -> float | None:
    for chunk in model:
        chunk.eval()
    losses = []
    with torch.no_grad():
        for _ in range(eval_iters):
            losses += run_microbatches(model, data_iterators, training, forward_only=True, objective=objective)
    for chunk in model:
        chunk.train()
    return objective.loss_and_totals(losses)[0] if objective else average_loss(losses)


def train(run, model, optimizer, scheduler, state: TrainState, train_iters, validation_loss, logger, save_fn,
          stop_check, timers: PhaseTimers = NO_TIMERS, objective=None):
    """Runs (RunConfig `run`) until --train-iters or until stop_check says to stop. Returns (validation loss at the
    last iteration if evaluated there, why it stopped early or None). validation_loss() evaluates
    (None: never); save_fn(state) saves."""
    for chunk in model:
        chunk.train()
    logger.start_window()
    last_valid = None
    training, save_every = run.training, run.checkpoint.save_interval if run.checkpoint.save else None
    while state.iteration < training.train_iters:
        loss, grad_norm, totals = train_step(model, optimizer, scheduler, train_iters, training, timers, objective)
        state.iteration += 1
        state.consumed_samples += training.global_batch_size
        logger.training_step(state, loss, base_lr(scheduler), grad_norm, optimizer.get_loss_scale().item(),
                             dist.get_world_size(), totals)
        stop_reason = stop_check.after_step(state.iteration, loss, grad_norm)  # raises on NaN/Inf
        if stop_reason:
            return last_valid, stop_reason
        last_valid = None
        if validation_loss and state.iteration % run.logging.eval_interval == 0:
            last_valid = validation_loss()
            logger.validation(state, last_valid)
            logger.start_window()
        if save_every and state.iteration % save_every == 0:
            save_fn(state)
            logger.start_window()
    return last_valid, None
