"""TensorBoard (and W&B, when asked) get Megatron-LM's tag names (megatron/training/training.py's
training_log and evaluate_and_print_results), so existing dashboards pick them up: 'lm loss',
'lm loss validation', 'learning-rate', 'batch-size', 'loss-scale', 'grad-norm', memory, and the run's
arguments as text."""

import sys
import types

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from megatron_ext.arguments import parse_args
from megatron_ext.arguments.configs import RunConfig
from megatron_ext.training.logging import TrainLogger
from megatron_ext.training.loop import TrainState

MOCK = ["--model-preset", "tiny", "--mock-data", "--device", "cpu", "--train-iters", "2", "--log-interval", "1",
        "--global-batch-size", "4", "--eval-interval", "2"]


def _log_two_iterations(logger):
    logger.training_step(TrainState(1, 4), 6.0, 1e-3, 0.5, 65536.0, 1)
    logger.training_step(TrainState(2, 8), 5.0, 1e-3, 0.4, 65536.0, 1)
    logger.validation(TrainState(2, 8), 4.5)
    logger.validation(TrainState(2, 8), 4.5, tag="final validation")
    logger.close()


def test_tensorboard_has_megatron_lms_tags_memory_and_arguments(tmp_path):
    args = parse_args(MOCK + ["--tensorboard-dir", str(tmp_path)], world_size=1)
    _log_two_iterations(TrainLogger(RunConfig.from_flags(args).with_vocab(512), torch.device("cpu"), writes=True))
    events = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ("lm loss", "lm loss vs samples", "learning-rate", "batch-size", "loss-scale", "grad-norm",
                "lm loss validation", "lm loss validation vs samples", "mem-max-rss-bytes", "throughput"):
        assert tag in tags, (tag, sorted(tags))
    assert [e.value for e in events.Scalars("batch-size")] == [4.0, 4.0]
    assert [e.step for e in events.Scalars("lm loss validation")] == [2]  # the final line does not repeat it
    assert events.Scalars("mem-max-rss-bytes")[0].value > 1e7
    text = "".join(t.tensor_proto.string_val[0].decode() for t in events.Tensors("arguments/text_summary"))
    assert "global_batch_size" in text and "tensorboard_dir" in text


def test_wandb_mirrors_the_tensorboard_scalars(tmp_path, monkeypatch):
    calls = {"init": [], "log": []}
    fake = types.SimpleNamespace(init=lambda **kw: calls["init"].append(kw),
                                 log=lambda data, step=None: calls["log"].append((step, data)),
                                 finish=lambda: calls.setdefault("finish", True))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    args = parse_args(MOCK + ["--wandb-project", "proj", "--wandb-exp-name", "exp", "--wandb-save-dir",
                              str(tmp_path)], world_size=1)
    _log_two_iterations(TrainLogger(RunConfig.from_flags(args).with_vocab(512), torch.device("cpu"), writes=True))
    init = calls["init"][0]
    assert (init["project"], init["name"], init["dir"]) == ("proj", "exp", str(tmp_path))
    assert init["config"]["global_batch_size"] == 4
    logged = {step: data for step, data in calls["log"] if "lm loss" in data}
    assert logged[1]["lm loss"] == 6.0 and logged[2]["batch-size"] == 4
    assert any(data.get("lm loss validation") == 4.5 for _, data in calls["log"])
    assert calls.get("finish")


def test_real_wandb_offline_run_records_the_scalars(tmp_path, monkeypatch):
    """The real package, offline (no network): the run's summary (the last value of each logged scalar) and
    config, read from the live run as the logger finishes it, and the run's file on disk."""
    import pytest

    wandb = pytest.importorskip("wandb", reason="wandb is a pinned test requirement (requirements/ci.txt)")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    seen = {}
    finish = wandb.finish

    def finish_and_record(*a, **kw):
        wandb.run.log({}, commit=True)  # commit the last step's row (W&B holds it for more keys of that step)
        seen["summary"], seen["config"] = dict(wandb.run.summary), dict(wandb.run.config)
        return finish(*a, **kw)

    monkeypatch.setattr(wandb, "finish", finish_and_record)
    args = parse_args(MOCK + ["--wandb-project", "proj", "--wandb-exp-name", "exp", "--wandb-save-dir",
                              str(tmp_path)], world_size=1)
    _log_two_iterations(TrainLogger(RunConfig.from_flags(args).with_vocab(512), torch.device("cpu"), writes=True))
    summary = seen["summary"]
    assert summary["lm loss"] == 5.0 and summary["batch-size"] == 4 and summary["lm loss validation"] == 4.5
    assert seen["config"]["global_batch_size"] == 4
    assert list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))  # the run written for `wandb sync`
