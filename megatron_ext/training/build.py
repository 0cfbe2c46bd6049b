"""Model, optimizer and learning-rate schedule from the flags, wired to megatron-core's schedules.

One build order for everything that trains the real model: pretrain.py, the μP coordinate check and
the test workers that inspect optimizer groups or gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Trainable:
    identity: object         # megatron_ext.models.identity.ModelIdentity, vocabulary included
    parametrization: object  # megatron_ext.models.parametrization: standard or μP rules
    config: object           # megatron-core TransformerConfig
    model: list              # model chunks (one per virtual pipeline stage), wrapped in megatron's DDP
    optimizer: object
    scheduler: object


def build_trainable(args, device: torch.device, vocab_size: int) -> Trainable:
    """The model args.model_identity describes, with the tokenizer's vocabulary. Needs the parallel state
    initialised first (training/parallel.py: initialize_parallel)."""
    from megatron_ext.models.config import transformer_config
    from megatron_ext.models.gpt import build_model
    from megatron_ext.models.parametrization import build_parametrization
    from megatron_ext.training.loop import connect_schedule
    from megatron_ext.training.optimizer import build_optimizer, build_scheduler

    identity = args.model_identity.replace(vocab_size=vocab_size)
    parametrization = build_parametrization(identity)
    config = transformer_config(args, on_cpu=device.type == "cpu", mup_multipliers=parametrization.multipliers,
                                identity=identity)
    model = build_model(config, args, identity, parametrization, device)
    optimizer = build_optimizer(args, model, parametrization)
    scheduler = build_scheduler(args, optimizer)
    connect_schedule(config, model, optimizer, args)
    return Trainable(identity, parametrization, config, model, optimizer, scheduler)
