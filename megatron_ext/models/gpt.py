"""Build this rank's model chunks: megatron-core GPTModel with the LLaMA layer spec."""

from __future__ import annotations

import torch
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.models.gpt import GPTModel

from megatron_ext.models.init import initialize_parameters
from megatron_ext.models.spec import llama_block_spec, megatron_local_block_spec


def _scale_output(scale: float):
    def hook(module, inputs, output):
        return output * scale
    return hook


def _scale_logits(scale: float):
    """μP's output multiplier on the output layer's logits, in fp32 as the cross entropy takes them: in the
    model, so every consumer of its logits (loss, evaluation, generation) sees the same ones."""
    def hook(module, inputs, output):
        logits, bias = output  # megatron's ColumnParallelLinear returns (output, bias)
        return logits.float() * scale, bias
    return hook


def build_gpt_chunk(config, identity, layer_spec: str, vp_stage: int | None) -> GPTModel:
    """One virtual-pipeline chunk (or the whole stage when vp_stage is None), unwrapped."""
    stock = layer_spec == "megatron-local"
    model = GPTModel(
        config=config,
        transformer_layer_spec=megatron_local_block_spec(config, vp_stage) if stock else llama_block_spec(config, vp_stage),
        vocab_size=identity.padded_vocab_size,
        max_sequence_length=identity.max_position_embeddings,
        pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
        post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
        share_embeddings_and_output_weights=identity.tie_embeddings,
        position_embedding_type="rope" if stock else "none",  # ours: RoPE lives in RotaryCoreAttention
        rotary_percent=identity.rotary_percent,
        rotary_base=int(identity.rotary_base),
        vp_stage=vp_stage,
    )
    model.true_vocab_size = identity.vocab_size
    if model.pre_process and config.embedding_multiplier != 1.0:
        model.embedding.register_forward_hook(_scale_output(config.embedding_multiplier))
    if model.post_process and config.logits_multiplier != 1.0:
        model.output_layer.register_forward_hook(_scale_logits(config.logits_multiplier))
    return model


def build_model(config, run, parametrization, device: torch.device) -> list:
    """All chunks of this rank (RunConfig `run`: its model, layout and seed), initialised from the seed and
    wrapped in megatron's DDP."""
    parallel = run.parallel
    vp = parallel.virtual_pipeline_model_parallel_size
    chunks = []
    for index in range(vp or 1):
        model = build_gpt_chunk(config, run.model, run.compute.layer_spec, index if vp else None)
        model.to(device)
        initialize_parameters(model, run.training.seed, parametrization.sample)
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True,
            overlap_grad_reduce=parallel.overlap_grad_reduce,
            overlap_param_gather=parallel.overlap_param_gather,
            use_distributed_optimizer=parallel.use_distributed_optimizer,
        )
        # Only the first chunk buckets; later chunks' grads are ready later (Megatron-LM does the same).
        chunks.append(DistributedDataParallel(config=config, ddp_config=ddp_config, module=model,
                                              disable_bucketing=index > 0))
    return chunks


def count_parameters(chunks) -> int:
    """Parameters on this rank (shared embedding counted once per stage that holds it)."""
    return sum(p.numel() for chunk in chunks for p in chunk.parameters())
