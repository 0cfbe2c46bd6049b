"""When training stops before --train-iters: a signal (--exit-signal-handler), --exit-interval,
--exit-duration-in-mins, or a non-finite loss or gradient norm (--check-for-nan-in-loss-and-grad).

Every rank must take the same decision at the same iteration, or the ranks that carry on hang in
their next collective: one all-reduce of a few flags after each step decides for all of them. A
signal only sets a flag; the step in flight completes, so the checkpoint written on the way out holds
the last complete iteration.
"""

from __future__ import annotations

import math
import signal
import time

import psutil
import torch
import torch.distributed as dist

EXIT_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def ignore_exit_signals(*_) -> None:
    """For helper processes (data-loader workers, megatron-core's checkpoint writer): Slurm signals every
    process of a job step, and the trainer needs them alive for the save on its way out; it ends them."""
    for sig in EXIT_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


class NonFiniteError(SystemExit):
    """Training produced NaN/Inf: stop before anything from this iteration is saved."""


class SignalFlag:
    """Records SIGTERM/SIGINT instead of dying, so the run can save and exit cleanly."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {sig: signal.signal(sig, self._handle) for sig in EXIT_SIGNALS}

    def _handle(self, signum, frame):
        self.received = signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _is_finite(value) -> bool:
    return value is None or math.isfinite(float(value))


class StopCheck:
    """after_step() returns why training should stop now (None: go on), the same on every rank."""

    def __init__(self, training, device: torch.device):
        self.training = training  # TrainingConfig: the exit flags
        self.device = device
        # From the process start, as Megatron-LM counts it: loading a large checkpoint takes minutes too.
        self.start = psutil.Process().create_time()
        self.signals = SignalFlag() if training.exit_signal_handler else None

    def after_step(self, iteration: int, loss: float | None, grad_norm) -> str | None:
        training = self.training
        time_up = (training.exit_duration_in_mins is not None
                   and time.time() - self.start >= 60 * training.exit_duration_in_mins)
        received = self.signals.received if self.signals else None
        check = training.check_for_nan_in_loss_and_grad
        # loss is None off the last pipeline stage, grad_norm None when fp16 skipped an overflowing step.
        flags = torch.tensor([received or 0, check and not _is_finite(loss), check and not _is_finite(grad_norm),
                              time_up], dtype=torch.float64, device=self.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        signum, bad_loss, bad_grad, time_up = (int(v) for v in flags.tolist())
        if bad_loss or bad_grad:
            self._non_finite(iteration, loss, grad_norm, bad_loss, bad_grad)
        if signum:
            return f"received {signal.Signals(signum).name}"
        if training.exit_interval and iteration % training.exit_interval == 0:
            return f"--exit-interval {training.exit_interval}"
        if time_up:
            return f"--exit-duration-in-mins {training.exit_duration_in_mins}"
        return None

    def _non_finite(self, iteration, loss, grad_norm, bad_loss, bad_grad):
        what = " and ".join(name for name, bad in (("the loss", bad_loss), ("the gradient norm", bad_grad)) if bad)
        values = ", ".join(f"{name} {value}" for name, value in (("loss", loss), ("grad norm", grad_norm))
                           if value is not None)
        message = (f"error: iteration {iteration}: {what} is not finite ({values or 'on another rank'}); "
                   "stopping without saving this iteration, the latest checkpoint in --save is the last "
                   "finite one. Lower --lr, raise --lr-warmup-iters, check the data, or resume from that "
                   "checkpoint (--no-check-for-nan-in-loss-and-grad disables this check)")
        # One message, from the rank that holds the loss; the others only exit non-zero.
        raise NonFiniteError(message if dist.get_rank() == dist.get_world_size() - 1 else 1)

    def close(self) -> None:
        if self.signals:
            self.signals.restore()
