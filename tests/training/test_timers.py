"""--timing-log-level: per-phase times in Megatron-LM's names, only at the levels that ask for them."""

import time

import pytest
import torch
from launch import TINY_ARGS, read_log, run_pretrain

from megatron_ext.training.timers import PhaseTimers, timed_batches


def test_phases_are_timed_only_at_their_level():
    for level, expected in ((0, set()), (1, {"forward-backward"}), (2, {"forward-backward", "batch-generator"})):
        timers = PhaseTimers(level, torch.device("cpu"))
        for _ in range(2):
            with timers.phase("forward-backward"):
                batches = list(timed_batches(iter([1, 2]), timers))
                time.sleep(0.01)
        assert batches == [1, 2]
        times = timers.take(iterations=2)
        assert set(times) == expected, (level, times)
        if times:
            assert times["forward-backward"] == pytest.approx(10.0, abs=8.0)  # ms per iteration
            assert times["forward-backward"] > times.get("batch-generator", 0.0)
        assert timers.take(iterations=2) == {}  # taking resets


def test_training_logs_phase_times(tmp_path):
    log = tmp_path / "log.jsonl"
    proc = run_pretrain(TINY_ARGS + ["--train-iters", 2, "--timing-log-level", 2, "--eval-interval", 2,
                                     "--eval-iters", 1, "--save", tmp_path / "ckpt", "--log-json", log])
    lines = [line for line in proc.stdout.splitlines() if line.startswith(" time (ms) per iteration")]
    assert len(lines) == 2, proc.stdout[-3000:]
    for name in ("forward-backward", "optimizer", "batch-generator"):
        values = read_log(log, f"{name}-time")
        assert sorted(values) == [1, 2] and all(v > 0 for v in values.values()), (name, values)
    forward_backward, batches = read_log(log, "forward-backward-time"), read_log(log, "batch-generator-time")
    assert all(forward_backward[i] > batches[i] for i in (1, 2))  # fetching is part of forward-backward
    assert "evaluate:" in lines[0]  # the validation before the first step falls in the first interval
