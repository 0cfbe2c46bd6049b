"""build_run(): everything a training run needs, built in one order and returned as one Run object that
training/pretrain.py hands to the loop. Reading this file top to bottom is reading the run's set-up."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Run:
    args: object              # the validated flags
    identity: object          # ModelIdentity, with the tokenizer's vocabulary
    device: torch.device
    model: list               # chunks (one per virtual pipeline stage), in megatron's DDP
    optimizer: object
    scheduler: object
    state: object             # training/loop.py TrainState: iteration and consumed samples (after a load)
    train_dataset: object
    valid_dataset: object     # None without a validation split
    logger: object            # training/logging.py TrainLogger
    timers: object            # training/timers.py PhaseTimers

    def batches(self, dataset, consumed: int, cycle: bool) -> list:
        """One micro-batch iterator per model chunk over this rank's data-parallel share of `dataset`."""
        from megatron_ext.data.loader import micro_batches
        from megatron_ext.training.parallel import data_parallel_rank_and_size
        from megatron_ext.training.timers import timed_batches

        dp_rank, dp_size = data_parallel_rank_and_size()
        return [timed_batches(micro_batches(dataset, consumed, self.args.micro_batch_size, dp_rank, dp_size,
                                            self.args.num_workers, cycle=cycle), self.timers) for _ in self.model]


def build_run(args, device: torch.device) -> Run:
    """Parallel state, tokenizer (which fixes the vocabulary), model/optimizer/schedule, the checkpoint to
    resume (if any), datasets and the logger. Imports are local so --help and flag errors stay fast."""
    from megatron_ext.checkpoint.dist import check_save_target, load_checkpoint
    from megatron_ext.checkpoint.paths import has_checkpoint
    from megatron_ext.data.build import build_datasets, build_vocab
    from megatron_ext.training.build import build_trainable
    from megatron_ext.training.logging import TrainLogger
    from megatron_ext.training.loop import TrainState
    from megatron_ext.training.parallel import initialize_parallel, is_last_rank
    from megatron_ext.training.timers import PhaseTimers

    initialize_parallel(args)
    tokenizer, vocab_size = build_vocab(args)
    identity = args.model_identity.replace(vocab_size=vocab_size)  # the tokenizer decides the vocabulary
    if args.save:
        check_save_target(args.save, args, identity)
    built = build_trainable(args, device, vocab_size)

    state = TrainState()
    if args.load and has_checkpoint(args.load):
        state.iteration, state.consumed_samples = load_checkpoint(args.load, built.model, built.optimizer,
                                                                    built.scheduler, args, identity)
    elif args.load and is_last_rank():  # Megatron-LM's behaviour: --save X --load X on a first launch
        print(f" > no checkpoint in --load {args.load} yet: starting from scratch", flush=True)
    train_ds, valid_ds = build_datasets(args, tokenizer, vocab_size)

    timers = PhaseTimers(args.timing_log_level, device)
    logger = TrainLogger(args, identity, device, writes=is_last_rank(), timers=timers)
    return Run(args, identity, device, built.model, built.optimizer, built.scheduler, state, train_ds, valid_ds,
               logger, timers)
