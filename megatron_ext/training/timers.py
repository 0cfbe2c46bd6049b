"""Per-phase wall time of training (--timing-log-level), in Megatron-LM's phase names.

Level 1: forward-backward (the pipeline schedule, communication included), optimizer (clip, step,
parameter copy), evaluate, save-checkpoint. Level 2 adds batch-generator (fetching micro-batches, inside
forward-backward). On CUDA each phase synchronises the device at its start and end, so its time is the
GPU's, not the launch's; that costs overlap, which is why level 0 (the default) times nothing.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext

import torch

PHASE_LEVELS = {"forward-backward": 1, "optimizer": 1, "evaluate": 1, "save-checkpoint": 1, "batch-generator": 2}


class PhaseTimers:
    def __init__(self, level: int, device: torch.device):
        self.level = level
        self.device = device
        self._seconds: dict[str, float] = defaultdict(float)

    def phase(self, name: str):
        """Context manager timing one occurrence of `name`; does nothing below the phase's level."""
        if self.level < PHASE_LEVELS[name]:
            return nullcontext()
        return self._timed(name)

    @contextmanager
    def _timed(self, name: str):
        self._synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._synchronize()
            self._seconds[name] += time.perf_counter() - start

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def take(self, iterations: int) -> dict[str, float]:
        """Milliseconds per iteration of each phase since the last take, then reset."""
        times = {name: 1000.0 * seconds / max(iterations, 1) for name, seconds in self._seconds.items()}
        self._seconds.clear()
        return times


NO_TIMERS = PhaseTimers(0, torch.device("cpu"))


def timed_batches(iterator, timers: PhaseTimers, name: str = "batch-generator"):
    """The iterator's items, each fetch timed as `name` (the pipeline schedule calls next() on it)."""
    while True:
        with timers.phase(name):
            try:
                item = next(iterator)
            except StopIteration:
                return
        yield item
