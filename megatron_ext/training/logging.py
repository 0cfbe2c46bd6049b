"""Megatron-LM-style iteration lines, TensorBoard scalars (Megatron-LM's tag names), optionally mirrored
to Weights & Biases, and an optional JSON-lines log."""

from __future__ import annotations

import json
import resource
import sys
import time

import torch

from megatron_ext.arguments import flat_flags
from megatron_ext.training.flops import peak_tflops, training_flops_per_iteration


class TrainLogger:
    def __init__(self, run, device, writes: bool, timers=None):
        """run: the RunConfig, its model's vocabulary known (FLOPs count the output layer)."""
        self.logging, self.training = run.logging, run.training
        self.fp16 = run.compute.fp16
        self.timers = timers  # training/timers.py: per-phase times with --timing-log-level
        self.writes = writes  # only the last rank (it holds the loss) prints and writes
        self.flops_per_iteration = training_flops_per_iteration(run.model, run.training.seq_length,
                                                                run.training.global_batch_size)
        self.peak = peak_tflops(run.logging.peak_tflops, run.compute, device)
        self.device = device
        self.writer = None
        self.wandb = None
        logging, save = run.logging, run.checkpoint.save
        if writes and logging.tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(log_dir=logging.tensorboard_dir)
            self.writer.add_text("arguments", _arguments_table(run.flags), 0)  # Megatron-LM's tag for them
        if writes and logging.wandb_project:
            import wandb  # arguments/validate.py refused the flag already if this cannot be imported

            wandb.init(project=logging.wandb_project, name=logging.wandb_exp_name,
                       dir=logging.wandb_save_dir or (f"{save}/wandb" if save else None),
                       config=flat_flags(run.flags))
            self.wandb = wandb
        self._validation_written: set[int] = set()
        self._window_start = time.perf_counter()
        self._window_iters = 0
        self._losses: list[float] = []
        self.fine_tuning = run.data.conversation_data  # also logs trained tokens/s and the padding fraction
        self._counts = {"trained tokens": 0.0, "real tokens": 0.0, "positions": 0.0}
        self._metrics: dict[str, list] = {}  # objective metrics named "group/name" (DPO: TRL's rewards/..., logps/...)

    def start_window(self):
        """Timing restarts after evaluation and saving, so throughput counts training steps only."""
        self._window_start, self._window_iters = time.perf_counter(), 0

    def training_step(self, state, loss: float | None, lr: float, grad_norm, loss_scale, world_size: int,
                      totals: dict | None = None):
        """loss is None off the last pipeline stage (and for a batch that trains no token). The logged loss
        averages the logging interval. totals: the batch's token counts (training/loop.py batch_totals)."""
        self._window_iters += 1
        if loss is not None:
            self._losses.append(loss)
        for key in self._counts:
            self._counts[key] += (totals or {}).get(key, 0.0)
        for key, value in (totals or {}).items():
            if "/" in key:
                self._metrics.setdefault(key, []).append(value)
        training = self.training
        if state.iteration % self.logging.log_interval and state.iteration != training.train_iters:
            return
        # None: no batch of the interval trained a token (fine-tuning rows that are all prompt): no loss to log.
        loss = sum(self._losses) / len(self._losses) if self._losses else None
        self._losses = []
        elapsed = (time.perf_counter() - self._window_start) / max(self._window_iters, 1)
        phases = self.timers.take(self._window_iters) if self.timers else {}
        tokens_per_s = training.global_batch_size * training.seq_length / elapsed
        tflops = self.flops_per_iteration / elapsed / world_size / 1e12
        mfu = f"{100.0 * tflops / self.peak:.2f}%" if self.peak else "n/a (set --peak-tflops)"
        if self.writes:
            grad = f"{grad_norm:.4f}" if grad_norm is not None else "n/a"
            line = (f" iteration {state.iteration:8d}/{training.train_iters:8d} |"
                    f" consumed samples: {state.consumed_samples:12d} |"
                    f" elapsed time per iteration (ms): {elapsed * 1000:.1f} |"
                    f" learning rate: {lr:.6E} |"
                    f" global batch size: {training.global_batch_size:5d} |"
                    + (f" lm loss: {loss:.6E} |" if loss is not None else " lm loss: n/a (no trained token) |")
                    + (f" loss scale: {loss_scale:.1f} |" if self.fp16 else "")
                    + f" grad norm: {grad} |"
                    f" tokens per second: {tokens_per_s:.1f} |"
                    f" TFLOP/s per device: {tflops:.2f} |"
                    f" MFU: {mfu} |")
            print(line, flush=True)
            if phases:  # Megatron-LM prints its timers on their own line, per iteration of the interval
                print(" time (ms) per iteration | " + " | ".join(f"{name}: {ms:.2f}" for name, ms in phases.items())
                      + " |", flush=True)
            # Megatron-LM's tags (training.py's training_log); "throughput" is its TFLOP/s per GPU.
            scalars = {"learning-rate": lr, "batch-size": training.global_batch_size,
                       "loss-scale": loss_scale, "tokens-per-second": tokens_per_s,
                       "tflops-per-device": tflops, "throughput": tflops, **self._memory()}
            if loss is not None:
                scalars = {"lm loss": loss, **scalars}
            if grad_norm is not None:
                scalars["grad-norm"] = grad_norm
            scalars.update({f"{name}-time": ms for name, ms in phases.items()})  # Megatron-LM's timer tags
            if self.peak:
                scalars["mfu-percent"] = 100.0 * tflops / self.peak
            if self.fine_tuning:
                scalars.update(self._fine_tuning_scalars(elapsed * self._window_iters))
            if self._metrics:  # averaged over the logging interval, under the names users know (TRL's)
                metrics = {key: sum(v) / len(v) for key, v in self._metrics.items()}
                print(" " + " | ".join(f"{key}: {value:.6g}" for key, value in metrics.items()) + " |", flush=True)
                scalars.update(metrics)
                self._metrics = {}
            self._write(scalars, state, extra={"elapsed_ms": elapsed * 1000})
        self.start_window()

    def _fine_tuning_scalars(self, seconds: float) -> dict:
        """Trained (loss-bearing) tokens per second and the share of positions that are padding."""
        counts, self._counts = self._counts, dict.fromkeys(self._counts, 0.0)
        scalars = {"trained-tokens-per-second": counts["trained tokens"] / seconds}
        if counts["positions"]:
            scalars["padding-fraction"] = 1.0 - counts["real tokens"] / counts["positions"]
        print(" fine-tuning | " + " | ".join(f"{key}: {value:.4g}" for key, value in scalars.items()) + " |",
              flush=True)
        return scalars

    def validation(self, state, loss: float | None, tag: str = "validation"):
        """loss is None when the run has no validation set (said once at start-up, by
        data.build.describe_data): nothing to log."""
        if not self.writes or loss is None:
            return
        print(f" {tag} loss at iteration {state.iteration} | lm loss value: {loss:.6E} |", flush=True)
        scalars = {f"{tag} lm loss": loss}  # our name, kept for --log-json readers
        if state.iteration not in self._validation_written:  # Megatron-LM's tag, once per iteration
            scalars["lm loss validation"] = loss
            self._validation_written.add(state.iteration)
        self._write(scalars, state)

    def tasks(self, state, results: dict | None, seconds: float):
        """Downstream task scores (evaluation/in_loop.py): one line, and per task the TensorBoard scalars
        TASK/acc and TASK/acc_norm, with the evaluation's wall time as eval-tasks-seconds."""
        if not self.writes or not results:
            return
        scalars = {f"{name}/{metric}": getattr(result, metric) for name, result in results.items()
                   for metric in ("acc", "acc_norm")}
        print(f" downstream tasks at iteration {state.iteration} | "
              + " | ".join(f"{key}: {value:.4f}" for key, value in scalars.items())
              + f" | seconds: {seconds:.2f} |", flush=True)
        self._write({**scalars, "eval-tasks-seconds": seconds}, state)

    def _memory(self) -> dict:
        """CUDA: the peak allocated bytes (Megatron-LM's tag); CPU: the process's peak resident set."""
        if self.device.type == "cuda":
            return {"mem-max-allocated-bytes": float(torch.cuda.max_memory_allocated(self.device))}
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return {"mem-max-rss-bytes": float(peak if sys.platform == "darwin" else peak * 1024)}

    def _write(self, scalars: dict, state, extra: dict | None = None):
        if self.writer:
            for key, value in scalars.items():
                self.writer.add_scalar(key, value, state.iteration)
                self.writer.add_scalar(f"{key} vs samples", value, state.consumed_samples)
            self.writer.flush()
        if self.wandb:
            self.wandb.log({**scalars, "samples": state.consumed_samples}, step=state.iteration)
        if self.logging.log_json:
            record = {"iteration": state.iteration, "consumed_samples": state.consumed_samples,
                      **scalars, **(extra or {})}
            with open(self.logging.log_json, "a") as f:
                f.write(json.dumps(record) + "\n")

    def close(self):
        if self.writer:
            self.writer.close()
        if self.wandb:
            self.wandb.finish()


def _arguments_table(args) -> str:
    """The run's arguments as a Markdown table (TensorBoard renders it under TEXT)."""
    rows = "\n".join(f"| {key} | {value!r} |" for key, value in sorted(flat_flags(args).items()))
    return "| argument | value |\n|---|---|\n" + rows
