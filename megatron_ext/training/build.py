"""Model, optimizer and learning-rate schedule for a RunConfig, wired to megatron-core's schedules.

One build order for everything that trains the real model: training/run.py, the μP coordinate check and
the test workers that inspect optimizer groups or gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Trainable:
    parametrization: object  # megatron_ext.models.parametrization: standard or μP rules
    config: object           # megatron-core TransformerConfig
    model: list              # model chunks (one per virtual pipeline stage), wrapped in megatron's DDP
    optimizer: object
    scheduler: object


def build_trainable(run, device: torch.device) -> Trainable:
    """run: the RunConfig, its model's vocabulary known (RunConfig.with_vocab). Needs the parallel state
    initialised first (training/parallel.py: initialize_parallel)."""
    from megatron_ext.models.config import transformer_config
    from megatron_ext.models.gpt import build_model
    from megatron_ext.models.parametrization import build_parametrization
    from megatron_ext.training.loop import connect_schedule
    from megatron_ext.training.optimizer import build_optimizer, build_scheduler

    parametrization = build_parametrization(run.model)
    config = transformer_config(run, on_cpu=device.type == "cpu", mup_multipliers=parametrization.multipliers)
    model = build_model(config, run, parametrization, device)
    optimizer = build_optimizer(run, model, parametrization)
    scheduler = build_scheduler(run.training, optimizer)
    connect_schedule(config, model, optimizer, run.parallel)
    return Trainable(parametrization, config, model, optimizer, scheduler)
