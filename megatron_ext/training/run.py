"""build_run(): everything a training run needs, built in one order and returned as one Run object that
training/pretrain.py hands to the loop. Reading this file top to bottom is reading the run's set-up."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Run:
    config: object            # RunConfig (arguments/configs.py), its model's vocabulary set by the tokenizer
    device: torch.device
    model: list               # chunks (one per virtual pipeline stage), in megatron's DDP
    optimizer: object
    scheduler: object
    state: object             # training/loop.py TrainState: iteration and consumed samples (after a load)
    train_dataset: object
    valid_dataset: object     # None without a validation split
    logger: object            # training/logging.py TrainLogger
    timers: object            # training/timers.py PhaseTimers
    provenance: dict          # the loaded checkpoint's record of its Hugging Face source, carried to every save

    def batches(self, dataset, consumed: int, cycle: bool) -> list:
        """One micro-batch iterator per model chunk over this rank's data-parallel share of `dataset`."""
        from megatron_ext.data.loader import micro_batches
        from megatron_ext.training.parallel import data_parallel_rank_and_size
        from megatron_ext.training.timers import timed_batches

        dp_rank, dp_size = data_parallel_rank_and_size()
        micro_batch, workers = self.config.training.micro_batch_size, self.config.data.num_workers
        return [timed_batches(micro_batches(dataset, consumed, micro_batch, dp_rank, dp_size, workers, cycle=cycle),
                              self.timers) for _ in self.model]


def build_run(config, device: torch.device) -> Run:
    """Parallel state, tokenizer (which fixes the vocabulary), model/optimizer/schedule, the checkpoint to
    resume (if any), datasets and the logger. Imports are local so --help and flag errors stay fast."""
    from megatron_ext.arguments.from_checkpoint import checkpoint_provenance
    from megatron_ext.checkpoint.dist import check_save_target, load_checkpoint
    from megatron_ext.checkpoint.paths import has_checkpoint
    from megatron_ext.data.build import build_datasets, build_vocab
    from megatron_ext.training.build import build_trainable
    from megatron_ext.training.logging import TrainLogger
    from megatron_ext.training.loop import TrainState
    from megatron_ext.training.parallel import initialize_parallel, is_last_rank
    from megatron_ext.training.timers import PhaseTimers

    initialize_parallel(config.parallel, config.training.seed)
    tokenizer, vocab_size = build_vocab(config.data)
    config = config.with_vocab(vocab_size)  # the tokenizer decides the model's vocabulary
    save, load = config.checkpoint.save, config.checkpoint.load
    if save:
        check_save_target(save, config)
    built = build_trainable(config, device)

    state, provenance = TrainState(), {}
    if load and has_checkpoint(load):
        provenance = checkpoint_provenance(load)
        state.iteration, state.consumed_samples = load_checkpoint(load, built.model, built.optimizer,
                                                                    built.scheduler, config)
    elif config.checkpoint.pretrained_checkpoint:  # a fine-tuning run's first launch (later ones resume --load)
        from megatron_ext.checkpoint.pretrained import load_pretrained

        provenance = checkpoint_provenance(config.checkpoint.pretrained_checkpoint)
        load_pretrained(config.checkpoint.pretrained_checkpoint, built.model, built.optimizer, config)
    elif load and is_last_rank():  # Megatron-LM's behaviour: --save X --load X on a first launch
        print(f" > no checkpoint in --load {load} yet: starting from scratch", flush=True)
    train_ds, valid_ds = build_datasets(config.data, config.training, config.logging, tokenizer, vocab_size)

    timers = PhaseTimers(config.logging.timing_log_level, device)
    logger = TrainLogger(config, device, writes=is_last_rank(), timers=timers)
    return Run(config, device, built.model, built.optimizer, built.scheduler, state, train_ds, valid_ds, logger,
               timers, provenance)
