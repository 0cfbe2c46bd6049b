"""pretrain(): parse flags, set up the platform and parallel state, build, train, save."""

from __future__ import annotations

import logging
import os
import warnings

import torch.distributed as dist

from megatron_ext.arguments import parse_config
from megatron_ext.platform import init_distributed


def _quiet_megatron() -> None:
    # megatron-core warns about missing apex/TE and custom-spec MLPs on every rank; none apply here.
    warnings.filterwarnings("ignore", module=r"megatron\.core.*")
    logging.getLogger("megatron.core").setLevel(logging.ERROR)


def pretrain(argv: list[str] | None = None) -> float | None:
    config = parse_config(argv)  # fails fast on bad flags, before any process group exists
    _quiet_megatron()
    platform = init_distributed(config.parallel.device, config.parallel.distributed_timeout_minutes)
    try:
        return _run(config, platform)
    finally:
        dist.destroy_process_group()


def _run(config, platform) -> float | None:
    from megatron_ext.checkpoint.lock import SaveLock

    lock = SaveLock(config.checkpoint.save)  # before anything is written: a second run into --save stops here
    try:
        return _train(config, platform)
    finally:
        lock.release()


def _train(config, platform) -> float | None:
    # Imported here so --help and flag errors do not pay for megatron-core's import.
    from megatron_ext.checkpoint.dist import save_checkpoint
    from megatron_ext.data.build import describe_data
    from megatron_ext.evaluation.in_loop import in_loop_evaluator
    from megatron_ext.models.gpt import count_parameters
    from megatron_ext.training.loop import evaluate, train
    from megatron_ext.training.parallel import is_last_rank
    from megatron_ext.training.run import build_run
    from megatron_ext.training.stopping import StopCheck

    run = build_run(config, platform.device)
    config = run.config  # with the tokenizer's vocabulary
    model, optimizer, scheduler, state = run.model, run.optimizer, run.scheduler, run.state
    logger, timers, valid_ds = run.logger, run.timers, run.valid_dataset
    parallel, logging_, save_dir = config.parallel, config.logging, config.checkpoint.save
    if is_last_rank():
        print(f" > {count_parameters(model):,} parameters on the last rank; layout TP{parallel.tensor_model_parallel_size}"
              f" x PP{parallel.pipeline_model_parallel_size} x DP{parallel.data_parallel_size} on {platform.device.type}"
              f" ({platform.backend})", flush=True)
        print(describe_data(config.data, logging_), flush=True)

    objective = None
    if config.data.conversation_data:  # preference pairs train DPO: reference log-probs of the starting weights first
        from megatron_ext.preference.dataset import has_preference_data
        from megatron_ext.preference.objective import prepare_dpo

        if has_preference_data(config.data.data_path):
            objective = prepare_dpo(run)
    task_eval = in_loop_evaluator(config)  # --eval-tasks: downstream scores beside the validation loss

    def validation_loss():  # the same held-out batches every time, so values compare across a run
        if task_eval:
            with timers.phase("evaluate"):
                logger.tasks(state, task_eval.evaluate(model), task_eval.last_seconds)
        if valid_ds is None:
            return None
        with timers.phase("evaluate"):
            return evaluate(model, run.batches(valid_ds, 0, cycle=True), config.training, logging_.eval_iters,
                            objective)

    saved_at = [None]

    def save(train_state):
        with timers.phase("save-checkpoint"):
            path = save_checkpoint(save_dir, model, optimizer, scheduler, train_state, config, run.provenance)
        saved_at[0] = train_state.iteration
        if is_last_rank():
            print(f" > saved checkpoint at iteration {train_state.iteration} to {path}", flush=True)

    if logging_.eval_interval and state.iteration == 0:
        logger.validation(state, validation_loss())
    stop_check = StopCheck(config.training, platform.device)
    start_iteration = state.iteration
    try:
        final_loss, stop_reason = train(config, model, optimizer, scheduler, state,
                                        run.batches(run.train_dataset, state.consumed_samples, cycle=False),
                                        validation_loss if logging_.eval_interval else None, logger, save,
                                        stop_check, timers, objective)
        if save_dir and saved_at[0] != state.iteration:
            save(state)  # still under the signal handler: a second SIGTERM does not cut this save short
    finally:
        stop_check.close()
    if stop_reason:
        if is_last_rank():
            print(f" > stopping at iteration {state.iteration}/{config.training.train_iters}: {stop_reason}"
                  + (f"; resume with --load {save_dir}" if save_dir else " (no --save: nothing was saved)"),
                  flush=True)
        logger.close()
        return final_loss
    # Decided from the iteration, not the loss: only the last pipeline stage gets a loss back. The loop
    # evaluated at the end only if it trained and stopped on a multiple of --eval-interval; otherwise
    # (including a resume of a finished run) evaluate now, so the final validation line is always there.
    evaluated_at_end = state.iteration > start_iteration and state.iteration % (logging_.eval_interval or 1) == 0
    if logging_.eval_interval and not evaluated_at_end:
        final_loss = validation_loss()
    if final_loss is not None:
        logger.validation(state, final_loss, tag="final validation")
    if is_last_rank():
        if logging_.tensorboard_dir:
            print(f" > TensorBoard logs: {os.path.abspath(logging_.tensorboard_dir)}", flush=True)
        if save_dir:
            print(f" > checkpoint: {os.path.abspath(save_dir)}", flush=True)
    logger.close()
    return final_loss
