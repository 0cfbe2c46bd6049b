"""pretrain(): parse flags, set up the platform and parallel state, build, train, save."""

from __future__ import annotations

import logging
import os
import warnings

import torch.distributed as dist

from megatron_ext.arguments import parse_args
from megatron_ext.platform import init_distributed


def _quiet_megatron() -> None:
    # megatron-core warns about missing apex/TE and custom-spec MLPs on every rank; none apply here.
    warnings.filterwarnings("ignore", module=r"megatron\.core.*")
    logging.getLogger("megatron.core").setLevel(logging.ERROR)


def pretrain(argv: list[str] | None = None) -> float | None:
    args = parse_args(argv)  # fails fast on bad flags, before any process group exists
    _quiet_megatron()
    platform = init_distributed(args.device, args.distributed_timeout_minutes)
    try:
        return _run(args, platform)
    finally:
        dist.destroy_process_group()


def _run(args, platform) -> float | None:
    from megatron_ext.checkpoint.lock import SaveLock

    lock = SaveLock(args.save)  # before anything is written: a second run into --save stops here
    try:
        return _train(args, platform)
    finally:
        lock.release()


def _train(args, platform) -> float | None:
    # Imported here so --help and flag errors do not pay for megatron-core's import.
    from megatron_ext.checkpoint.dist import save_checkpoint
    from megatron_ext.data.build import describe_data
    from megatron_ext.models.gpt import count_parameters
    from megatron_ext.training.loop import evaluate, train
    from megatron_ext.training.parallel import is_last_rank
    from megatron_ext.training.run import build_run
    from megatron_ext.training.stopping import StopCheck

    run = build_run(args, platform.device)
    model, optimizer, scheduler, state = run.model, run.optimizer, run.scheduler, run.state
    logger, timers, valid_ds = run.logger, run.timers, run.valid_dataset
    if is_last_rank():
        print(f" > {count_parameters(model):,} parameters on the last rank; layout TP{args.tensor_model_parallel_size}"
              f" x PP{args.pipeline_model_parallel_size} x DP{args.data_parallel_size} on {platform.device.type}"
              f" ({platform.backend})", flush=True)
        print(describe_data(args), flush=True)

    def validation_loss():  # the same held-out batches every time, so values compare across a run
        if valid_ds is None:
            return None
        with timers.phase("evaluate"):
            return evaluate(model, run.batches(valid_ds, 0, cycle=True), args)

    saved_at = [None]

    def save(train_state):
        with timers.phase("save-checkpoint"):
            path = save_checkpoint(args.save, model, optimizer, scheduler, train_state, args, run.identity)
        saved_at[0] = train_state.iteration
        if is_last_rank():
            print(f" > saved checkpoint at iteration {train_state.iteration} to {path}", flush=True)

    if args.eval_interval and state.iteration == 0:
        logger.validation(state, validation_loss())
    stop_check = StopCheck(args, platform.device)
    start_iteration = state.iteration
    try:
        final_loss, stop_reason = train(args, model, optimizer, scheduler, state,
                                        run.batches(run.train_dataset, state.consumed_samples, cycle=False),
                                        validation_loss if args.eval_interval else None, logger, save, stop_check,
                                        timers)
        if args.save and saved_at[0] != state.iteration:
            save(state)  # still under the signal handler: a second SIGTERM does not cut this save short
    finally:
        stop_check.close()
    if stop_reason:
        if is_last_rank():
            print(f" > stopping at iteration {state.iteration}/{args.train_iters}: {stop_reason}"
                  + (f"; resume with --load {args.save}" if args.save else " (no --save: nothing was saved)"),
                  flush=True)
        logger.close()
        return final_loss
    # Decided from the iteration, not the loss: only the last pipeline stage gets a loss back. The loop
    # evaluated at the end only if it trained and stopped on a multiple of --eval-interval; otherwise
    # (including a resume of a finished run) evaluate now, so the final validation line is always there.
    evaluated_at_end = state.iteration > start_iteration and state.iteration % (args.eval_interval or 1) == 0
    if args.eval_interval and not evaluated_at_end:
        final_loss = validation_loss()
    if final_loss is not None:
        logger.validation(state, final_loss, tag="final validation")
    if is_last_rank():
        if args.tensorboard_dir:
            print(f" > TensorBoard logs: {os.path.abspath(args.tensorboard_dir)}", flush=True)
        if args.save:
            print(f" > checkpoint: {os.path.abspath(args.save)}", flush=True)
    logger.close()
    return final_loss
