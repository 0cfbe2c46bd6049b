"""megatron-core's optimizer (Adam, optionally distributed) and its LR/weight-decay scheduler."""

from __future__ import annotations

from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megatron_ext.models.config import params_dtype
from mup.optimizer import warmup_init_lr


def build_optimizer(run, model_chunks, parametrization):
    """From a RunConfig: its optimizer settings, precision and data-parallel layout."""
    training, compute, parallel = run.training, run.compute, run.parallel
    config = OptimizerConfig(
        optimizer="adam",
        lr=training.lr,
        min_lr=training.min_lr,
        weight_decay=training.weight_decay,
        adam_beta1=training.adam_beta1,
        adam_beta2=training.adam_beta2,
        adam_eps=training.adam_eps,
        clip_grad=training.clip_grad,
        bf16=compute.bf16,
        fp16=compute.fp16,
        params_dtype=params_dtype(compute),
        initial_loss_scale=training.initial_loss_scale,
        use_distributed_optimizer=parallel.use_distributed_optimizer,
        overlap_param_gather=parallel.overlap_param_gather,
    )
    return get_megatron_optimizer(config, model_chunks,
                                  config_overrides=parametrization.optimizer_overrides(config))


class GroupScaledWarmupScheduler(OptimizerParamScheduler):
    """megatron-core's scheduler, except that each group's warm-up starts from --lr-warmup-init x the
    group's μP LR multiplier. Upstream starts every group at the one init_lr, so with --lr-warmup-init > 0
    a μP group (whose max_lr and min_lr carry its multiplier) would not get multiplier x the schedule."""

    def get_lr(self, param_group: dict) -> float:
        if self.lr_warmup_steps > 0 and self.num_steps <= self.lr_warmup_steps:
            init_lr = warmup_init_lr(param_group, self.init_lr)
            max_lr = param_group.get("max_lr", self.max_lr)
            return init_lr + (max_lr - init_lr) * float(self.num_steps) / float(self.lr_warmup_steps)
        return super().get_lr(param_group)


def build_scheduler(args, optimizer) -> OptimizerParamScheduler:
    """Counts in samples, as Megatron-LM does, so --train-samples and --train-iters agree. args: the
    TrainingConfig (or anything with its field names)."""
    gbs = args.global_batch_size
    return GroupScaledWarmupScheduler(
        optimizer,
        init_lr=args.lr_warmup_init,
        max_lr=args.lr,
        min_lr=args.min_lr,
        lr_warmup_steps=args.lr_warmup_samples,  # resolved in arguments/validate.py from the warm-up flags
        lr_decay_steps=args.lr_decay_samples,  # resolved in arguments/validate.py
        lr_decay_style=args.lr_decay_style,
        start_wd=args.weight_decay,
        end_wd=args.weight_decay,
        wd_incr_steps=args.train_iters * gbs,
        wd_incr_style="constant",
    )
