"""Build this rank's model chunks: megatron-core GPTModel with the LLaMA layer spec."""

from __future__ import annotations

import math

import torch
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.models.gpt import GPTModel

from megatron_ext.models.init import initialize_parameters
from megatron_ext.models.spec import llama_block_spec, megatron_local_block_spec


def padded_vocab_size(vocab_size: int, multiple: int) -> int:
    """Pad to a multiple that does not depend on TP, so checkpoints move between layouts."""
    return int(math.ceil(vocab_size / multiple) * multiple)


def _scale_output(scale: float):
    def hook(module, inputs, output):
        return output * scale
    return hook


def build_gpt_chunk(config, args, vocab_size: int, vp_stage: int | None) -> GPTModel:
    """One virtual-pipeline chunk (or the whole stage when vp_stage is None), unwrapped."""
    stock = args.layer_spec == "megatron-local"
    model = GPTModel(
        config=config,
        transformer_layer_spec=megatron_local_block_spec(config, vp_stage) if stock else llama_block_spec(config, vp_stage),
        vocab_size=padded_vocab_size(vocab_size, args.make_vocab_size_divisible_by),
        max_sequence_length=args.max_position_embeddings,
        pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
        post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
        share_embeddings_and_output_weights=args.tie_embeddings,
        position_embedding_type="rope" if stock else "none",  # ours: RoPE lives in RotaryCoreAttention
        rotary_percent=args.rotary_percent,
        rotary_base=int(args.rotary_base),
        vp_stage=vp_stage,
    )
    model.true_vocab_size = vocab_size
    if model.pre_process and config.embedding_multiplier != 1.0:
        model.embedding.register_forward_hook(_scale_output(config.embedding_multiplier))
    return model


def build_model(config, args, vocab_size: int, parametrization, device: torch.device) -> list:
    """All chunks of this rank, initialised from the seed and wrapped in megatron's DDP."""
    vp = args.virtual_pipeline_model_parallel_size
    chunks = []
    for index in range(vp or 1):
        model = build_gpt_chunk(config, args, vocab_size, index if vp else None)
        model.to(device)
        initialize_parameters(model, args.seed, parametrization.sample)
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True,
            overlap_grad_reduce=args.overlap_grad_reduce,
            overlap_param_gather=args.overlap_param_gather,
            use_distributed_optimizer=args.use_distributed_optimizer,
        )
        # Only the first chunk buckets; later chunks' grads are ready later (Megatron-LM does the same).
        chunks.append(DistributedDataParallel(config=config, ddp_config=ddp_config, module=model,
                                              disable_bucketing=index > 0))
    return chunks


def count_parameters(chunks) -> int:
    """Parameters on this rank (shared embedding counted once per stage that holds it)."""
    return sum(p.numel() for chunk in chunks for p in chunk.parameters())
