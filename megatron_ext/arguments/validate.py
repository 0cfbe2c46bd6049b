"""Defaults that depend on other flags, and start-up checks that name the bad flag and the fix."""

from __future__ import annotations

import argparse
import math
import os


class ConfigError(SystemExit):
    """A flag combination that cannot work; raised before anything is built or written."""

    def __init__(self, message: str):
        super().__init__(f"error: {message}")


def fill_defaults(args: argparse.Namespace) -> None:
    """Run flags whose default depends on other flags (the model's own defaults live in ModelIdentity)."""
    if args.max_position_embeddings is None:
        args.max_position_embeddings = args.seq_length
    if args.tensor_model_parallel_size == 1:
        args.sequence_parallel = False  # nothing to split; Megatron-LM does the same
    if args.recompute_activations:  # Megatron-LM: means selective, whatever --recompute-granularity says
        args.recompute_granularity = "selective"
    if args.recompute_granularity == "full" and args.recompute_method is None:
        args.recompute_method = "uniform"
    if args.recompute_granularity == "full" and args.recompute_num_layers is None:
        args.recompute_num_layers = 1
    if args.tokenizer_type == "Llama2Tokenizer":  # Megatron-LM's name for a sentencepiece tokenizer.model
        args.tokenizer_type = "SentencePieceTokenizer"


def validate(args: argparse.Namespace, world_size: int) -> None:
    """Checks of the run against its model (args.model_identity, which checked itself when built)."""
    if args.seq_length is None:
        raise ConfigError("--seq-length is not set: pass it or choose a --model-preset")
    _validate_layout(args, world_size)
    _validate_finetuning(args)
    _validate_schedule(args)
    _validate_misc(args)
    _validate_attention(args)


def _validate_layout(args, world_size: int) -> None:
    tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    if world_size % (tp * pp):
        raise ConfigError(f"world size {world_size} is not divisible by TP x PP = {tp} x {pp}: "
                          "change --tensor-model-parallel-size / --pipeline-model-parallel-size or the process count")
    args.data_parallel_size = world_size // (tp * pp)
    model = args.model_identity
    heads, groups = model.num_attention_heads, model.num_query_groups
    if heads % tp:
        raise ConfigError(f"--num-attention-heads {heads} is not divisible by --tensor-model-parallel-size {tp}")
    if groups % tp or heads % groups:
        raise ConfigError(f"--num-query-groups {groups} must divide --num-attention-heads {heads} "
                          f"and be divisible by --tensor-model-parallel-size {tp}")
    if model.ffn_hidden_size % tp:
        raise ConfigError(f"--ffn-hidden-size {model.ffn_hidden_size} is not divisible by TP {tp}")
    if model.num_layers % pp:
        raise ConfigError(f"--num-layers {model.num_layers} is not divisible by "
                          f"--pipeline-model-parallel-size {pp}")
    vstage = args.num_layers_per_virtual_pipeline_stage
    args.virtual_pipeline_model_parallel_size = None
    if vstage is not None:
        per_stage = model.num_layers // pp
        if pp < 2 or per_stage % vstage:
            raise ConfigError(f"--num-layers-per-virtual-pipeline-stage {vstage} needs PP > 1 and must divide "
                              f"the {per_stage} layers of each pipeline stage")
        args.virtual_pipeline_model_parallel_size = per_stage // vstage
    if model.make_vocab_size_divisible_by % tp:
        raise ConfigError(f"--make-vocab-size-divisible-by {model.make_vocab_size_divisible_by} must be a "
                          f"multiple of TP {tp} so the vocabulary splits evenly")
    if args.sequence_parallel and args.seq_length % tp:
        raise ConfigError(f"--sequence-parallel needs --seq-length {args.seq_length} divisible by TP {tp}")


def _validate_finetuning(args) -> None:
    """args.conversation_data: some --data-path prefix is conversation data (masked, packed: the fine-tuning
    dataset and a loss averaged over the global batch's trained tokens); --train-epochs becomes samples."""
    from megatron_ext.data.sft_dataset import epoch_samples, has_conversation_data

    args.conversation_data = not args.mock_data and has_conversation_data(args.data_path)
    if args.conversation_data:
        _resolve_chat_format(args)
    preference = args.conversation_data and _preference_data(args)
    if args.pretrained_checkpoint and not os.path.isdir(args.pretrained_checkpoint):
        raise ConfigError(f"--pretrained-checkpoint {args.pretrained_checkpoint} is not a directory: pass a checkpoint "
                          "saved by pretrain_llama.py or written by tools/convert_from_hf.py")
    if args.train_epochs is None:
        return
    if not args.conversation_data:
        raise ConfigError("--train-epochs counts passes over conversation data (prefixes written by "
                          "tools/preprocess_sft.py); for pretraining data use --train-iters or --train-samples")
    if args.train_iters is not None or args.train_samples is not None:
        raise ConfigError("--train-epochs, --train-iters and --train-samples are alternatives: give one")
    if args.train_epochs < 1:
        raise ConfigError(f"--train-epochs {args.train_epochs} must be at least 1")
    if preference:  # pairs are packed whole (preference/dataset.py): rows counted as the trainer packs them
        from megatron_ext.preference.dataset import epoch_samples
    args.train_samples = epoch_samples(args, args, args.train_epochs)


def _preference_data(args) -> bool:
    """Preference pairs in --data-path train DPO (preference/): its flags are checked here."""
    from megatron_ext.preference.arguments import dpo_config
    from megatron_ext.preference.dataset import has_preference_data

    if not has_preference_data(args.data_path):
        return False
    try:
        dpo_config(args)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    return True


def _resolve_chat_format(args) -> None:
    """--chat-format defaults to the one the conversation data was rendered with (its .json record), so the
    checkpoint records it for the export and generation; a flag that contradicts the data is refused."""
    from megatron_ext.data.sft_dataset import recorded_chat_formats

    recorded = recorded_chat_formats(args.data_path)
    if args.chat_format is None and len(set(recorded.values())) == 1:
        args.chat_format = next(iter(recorded.values()))
    for prefix, name in recorded.items():
        if args.chat_format is not None and name != args.chat_format:
            raise ConfigError(f"--chat-format {args.chat_format} but {prefix} was rendered with {name} "
                              "(its .json record): train one format per run, or re-run tools/preprocess_sft.py")


def _validate_schedule(args) -> None:
    dp, mbs = args.data_parallel_size, args.micro_batch_size
    if args.global_batch_size is None:
        args.global_batch_size = mbs * dp
    if args.global_batch_size % (mbs * dp):
        raise ConfigError(f"--global-batch-size {args.global_batch_size} is not divisible by "
                          f"--micro-batch-size x data-parallel size = {mbs} x {dp}")
    args.num_microbatches = args.global_batch_size // (mbs * dp)
    if args.virtual_pipeline_model_parallel_size and args.num_microbatches % args.pipeline_model_parallel_size:
        raise ConfigError(f"interleaved pipelining needs the {args.num_microbatches} micro-batches per step to be "
                          f"a multiple of PP {args.pipeline_model_parallel_size}: raise --global-batch-size")
    if (args.train_iters is None) == (args.train_samples is None):
        raise ConfigError("pass exactly one of --train-iters and --train-samples")
    if args.train_iters is None:
        args.train_iters = math.ceil(args.train_samples / args.global_batch_size)
    _resolve_decay(args)
    _resolve_warmup(args)
    if args.min_lr > args.lr:
        raise ConfigError(f"--min-lr {args.min_lr} is larger than --lr {args.lr}")


def _resolve_decay(args) -> None:
    """The decay length in samples (what the scheduler counts), args.lr_decay_samples: --lr-decay-iters x
    global batch, or for sample-based runs --lr-decay-samples (default --train-samples), as Megatron-LM."""
    if args.lr_decay_samples is not None:
        if args.train_samples is None:
            raise ConfigError("--lr-decay-samples goes with --train-samples (Megatron-LM's rule); with "
                              "--train-iters use --lr-decay-iters")
        if args.lr_decay_iters is not None:
            raise ConfigError("--lr-decay-samples and --lr-decay-iters are alternatives: give one")
    if args.lr_decay_iters is None:
        args.lr_decay_iters = args.train_iters
    if args.train_samples is not None and args.lr_decay_samples is None and args.lr_decay_iters == args.train_iters:
        args.lr_decay_samples = args.train_samples
    elif args.lr_decay_samples is None:
        args.lr_decay_samples = args.lr_decay_iters * args.global_batch_size
    else:
        args.lr_decay_iters = math.ceil(args.lr_decay_samples / args.global_batch_size)


def _resolve_warmup(args) -> None:
    """Megatron-LM's rules (megatron/training/arguments.py and training.py): one warm-up flag; the
    fraction applies to the decay length; --lr-warmup-samples belongs to sample-based runs. The result,
    in samples (what the scheduler counts), goes to args.lr_warmup_samples."""
    gbs, sample_based = args.global_batch_size, args.train_samples is not None
    if args.lr_warmup_fraction is not None:
        if args.lr_warmup_iters or args.lr_warmup_samples:
            raise ConfigError("--lr-warmup-fraction and --lr-warmup-iters/--lr-warmup-samples are alternatives "
                              "(as in Megatron-LM): give one")
        if not 0.0 <= args.lr_warmup_fraction <= 1.0:
            raise ConfigError(f"--lr-warmup-fraction {args.lr_warmup_fraction} must be between 0 and 1")
        args.lr_warmup_samples = int(args.lr_warmup_fraction * args.lr_decay_samples)
    elif args.lr_warmup_samples:
        if not sample_based:
            raise ConfigError("--lr-warmup-samples goes with --train-samples (Megatron-LM's rule); with "
                              "--train-iters use --lr-warmup-iters or --lr-warmup-fraction")
        if args.lr_warmup_iters:
            raise ConfigError("--lr-warmup-samples and --lr-warmup-iters are alternatives: give one")
    else:
        args.lr_warmup_samples = args.lr_warmup_iters * gbs
    if args.lr_warmup_samples > args.lr_decay_samples:
        raise ConfigError(f"the warm-up ({args.lr_warmup_samples} samples) exceeds the decay length "
                          f"({args.lr_decay_samples} samples: --lr-decay-iters {args.lr_decay_iters})")


def _validate_misc(args) -> None:
    if args.transformer_impl == "transformer_engine":
        raise ConfigError("--transformer-impl transformer_engine is not supported: this project's layers "
                          "(megatron_ext/layers, with its own kernels) replace Transformer Engine's; use "
                          "--transformer-impl local (or omit the flag)")
    for name in ("attention_dropout", "hidden_dropout"):
        if not 0.0 <= getattr(args, name) < 1.0:
            raise ConfigError(f"--{name.replace('_', '-')} {getattr(args, name)} must be in [0, 1)")
    if args.wandb_project:
        try:
            import wandb  # noqa: F401
        except ImportError as exc:
            raise ConfigError(f"--wandb-project needs the wandb package, which cannot be imported ({exc}): "
                              "pip install wandb, or drop the --wandb-* flags (TensorBoard logging "
                              "needs only --tensorboard-dir)") from exc
    if args.recompute_granularity == "selective" and args.recompute_method is not None:
        raise ConfigError("--recompute-method applies to --recompute-granularity full, not to selective "
                          "recomputation (--recompute-activations means selective, as in Megatron-LM): drop "
                          "--recompute-method, or use --recompute-granularity full without --recompute-activations")
    if args.overlap_param_gather and not args.use_distributed_optimizer:
        raise ConfigError("--overlap-param-gather needs --use-distributed-optimizer (as in Megatron-LM: without "
                          "it there is no parameter all-gather to overlap): add it, or drop --overlap-param-gather")
    if args.overlap_param_gather and not args.overlap_grad_reduce:
        raise ConfigError("--overlap-param-gather needs --overlap-grad-reduce (as in Megatron-LM): add it")
    if args.layer_spec == "megatron-local" and (args.model_identity.qk_norm or not args.model_identity.layernorm_bias):
        raise ConfigError("--layer-spec megatron-local (megatron-core's stock modules) has no query/key norm and no "
                          "gain-only LayerNorm: use --layer-spec llama for this model")
    if args.bf16 and args.fp16:
        raise ConfigError("--bf16 and --fp16 are exclusive: pick one")
    if args.save_interval and not args.save:
        raise ConfigError("--save-interval needs --save DIR")
    if not args.data_path and not args.mock_data:
        raise ConfigError("no training data: pass --data-path PREFIX (made by tools/preprocess_data.py) "
                          "or --mock-data")
    if args.kernels == "triton" and args.device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ConfigError("--kernels triton on --device cpu needs TRITON_INTERPRET=1 in the environment")
    if args.tokenizer_type != "NullTokenizer" and not args.mock_data and not args.tokenizer_model:
        raise ConfigError(f"--tokenizer-type {args.tokenizer_type} needs --tokenizer-model")


def _validate_attention(args) -> None:
    """--attention-backend flash (or --use-flash-attn) is an explicit request: refuse it here when it
    cannot be honoured, rather than at the first forward (or by silently running SDPA)."""
    if args.attention_backend != "flash":
        return
    flag, fallback = "--attention-backend flash (--use-flash-attn)", "or use --attention-backend sdpa (or auto)"
    if args.device == "cpu" or (args.device == "auto" and not _cuda_available()):
        raise ConfigError(f"{flag} needs a CUDA device, but this run is on the CPU (flash-attn has no CPU "
                          f"kernels): run on a GPU, {fallback}")
    try:
        from flash_attn import flash_attn_func  # noqa: F401  (what megatron_ext/layers/attention.py calls)
    except (ImportError, OSError) as exc:
        raise ConfigError(f"{flag} needs the flash-attn package, which cannot be imported ({exc}): "
                          f"pip install flash-attn --no-build-isolation, {fallback}") from exc
    if not (args.bf16 or args.fp16):
        raise ConfigError(f"{flag} needs --bf16 or --fp16 (flash-attn has no fp32 kernels): add one, {fallback}")


def _cuda_available() -> bool:
    import torch  # only when flash is requested: flag errors should not pay for torch's import

    return torch.cuda.is_available()
