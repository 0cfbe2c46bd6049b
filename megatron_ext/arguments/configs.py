"""The validated flags as frozen, typed configs by concern. parse_config() builds one RunConfig; each module
takes the part it needs (the model builder the identity and compute settings, the data builder DataConfig,
...), never the whole namespace, and nothing changes them after validation.

Field names are the flags' argparse destinations (Megatron-LM's names), so `--lr` is TrainingConfig.lr.
Values that validation derives (data_parallel_size, num_microbatches, virtual_pipeline_model_parallel_size,
the LR schedule in samples) are fields too: computed once, in arguments/validate.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from megatron_ext.models.identity import ModelIdentity


def _from_flags(cls, flags):
    return cls(**{f.name: getattr(flags, f.name) for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class ParallelConfig:
    tensor_model_parallel_size: int
    pipeline_model_parallel_size: int
    virtual_pipeline_model_parallel_size: int | None
    sequence_parallel: bool
    data_parallel_size: int
    use_distributed_optimizer: bool
    overlap_grad_reduce: bool
    overlap_param_gather: bool
    device: str
    distributed_timeout_minutes: int


@dataclass(frozen=True)
class ComputeConfig:
    """How the model is computed: precision, recomputation, dropout, kernels and layer implementations."""
    bf16: bool
    fp16: bool
    recompute_granularity: str | None
    recompute_method: str | None
    recompute_num_layers: int | None
    attention_dropout: float
    hidden_dropout: float
    layer_spec: str
    kernels: str
    norm_impl: str
    attention_backend: str


@dataclass(frozen=True)
class TrainingConfig:
    """Batch, length, optimizer and LR schedule (counted in samples, as Megatron-LM), seed and stopping."""
    micro_batch_size: int
    global_batch_size: int
    num_microbatches: int
    seq_length: int
    train_iters: int
    lr: float
    min_lr: float
    lr_decay_style: str
    lr_warmup_init: float
    lr_warmup_samples: int
    lr_decay_samples: int
    optimizer: str
    weight_decay: float
    adam_beta1: float
    adam_beta2: float
    adam_eps: float
    clip_grad: float
    initial_loss_scale: float
    seed: int
    exit_signal_handler: bool
    exit_interval: int | None
    exit_duration_in_mins: float | None
    check_for_nan_in_loss_and_grad: bool


@dataclass(frozen=True)
class DataConfig:
    data_path: list | None
    data_mix: str | None
    fim_split: str
    split: str
    data_cache_path: str | None
    mock_data: bool
    tokenizer_type: str
    tokenizer_model: str | None
    special_tokens: list | None
    vocab_pad_to: int | None
    vocab_size: int | None       # the tokenizer's flag (NullTokenizer, mock data); the model's is the identity's
    num_workers: int
    conversation_data: bool      # derived: some --data-path prefix is conversation data (data/sft_dataset.py)
    sft_packing: str
    sft_overlong: str
    chat_format: str | None


@dataclass(frozen=True)
class CheckpointConfig:
    save: str | None
    load: str | None
    save_interval: int | None
    no_load_optim: bool
    no_load_rng: bool
    finetune: bool
    pretrained_checkpoint: str | None
    overwrite: bool
    no_verify_checkpoint: bool


@dataclass(frozen=True)
class LoggingConfig:
    log_interval: int
    tensorboard_dir: str | None
    eval_interval: int | None
    eval_iters: int
    peak_tflops: float | None
    log_json: str | None
    timing_log_level: int
    wandb_project: str | None
    wandb_exp_name: str | None
    wandb_save_dir: str | None


@dataclass(frozen=True)
class RunConfig:
    model: ModelIdentity
    parallel: ParallelConfig
    compute: ComputeConfig
    training: TrainingConfig
    data: DataConfig
    checkpoint: CheckpointConfig
    logging: LoggingConfig
    flags: object  # the validated flags themselves (read-only), for the checkpoint's record and TensorBoard

    @classmethod
    def from_flags(cls, flags) -> "RunConfig":
        return cls(model=flags.model_identity, parallel=_from_flags(ParallelConfig, flags),
                   compute=_from_flags(ComputeConfig, flags), training=_from_flags(TrainingConfig, flags),
                   data=_from_flags(DataConfig, flags), checkpoint=_from_flags(CheckpointConfig, flags),
                   logging=_from_flags(LoggingConfig, flags), flags=flags)

    def with_vocab(self, vocab_size: int) -> "RunConfig":
        """The same run once the tokenizer has fixed the model's vocabulary."""
        return dataclasses.replace(self, model=self.model.replace(vocab_size=vocab_size))
