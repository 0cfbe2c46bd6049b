"""The megatron-core TransformerConfig: the model from its ModelIdentity, the run (parallel layout,
precision, recomputation, kernels) from the parsed flags."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from megatron.core.transformer.transformer_config import TransformerConfig


@dataclass
class LlamaConfig(TransformerConfig):
    """TransformerConfig plus what this project's own layers read."""

    kernel_impl: str | None = None          # None: Triton on CUDA, torch reference on CPU
    attention_kernel: str = "auto"          # auto | flash | sdpa
    norm_impl: str = "kernels"              # kernels (megatron_ext.kernels) | apex
    rotary_percent: float = 1.0
    rotary_base: float = 10000.0
    layernorm_bias: bool = True             # LayerNorm only; RMSNorm has no bias
    embedding_multiplier: float = 1.0       # μP: scales the embedding output
    logits_multiplier: float = 1.0          # μP: alpha_out / m, applied before the cross entropy


def params_dtype(args) -> torch.dtype:
    return torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32


def transformer_config(args, on_cpu: bool, mup_multipliers: dict | None = None, identity=None) -> LlamaConfig:
    """identity: the ModelIdentity (default args.model_identity; the vocabulary plays no part here)."""
    identity = identity or args.model_identity
    dtype = params_dtype(args)
    mup_multipliers = mup_multipliers or {}
    return LlamaConfig(
        num_layers=identity.num_layers,
        hidden_size=identity.hidden_size,
        ffn_hidden_size=identity.ffn_hidden_size,
        num_attention_heads=identity.num_attention_heads,
        num_query_groups=identity.num_query_groups,
        kv_channels=identity.kv_channels,
        normalization=identity.normalization,
        layernorm_epsilon=identity.norm_epsilon,
        add_bias_linear=identity.add_bias_linear,
        add_qkv_bias=identity.add_qkv_bias,
        gated_linear_unit=True,
        activation_func=F.silu,
        hidden_dropout=args.hidden_dropout,
        attention_dropout=args.attention_dropout,
        init_method_std=identity.init_method_std,
        # megatron initialises (and only then tags tensor-parallel attributes on the weights);
        # models/init.py then overwrites every weight from the seed alone.
        perform_initialization=True,
        use_cpu_initialization=on_cpu,
        tensor_model_parallel_size=args.tensor_model_parallel_size,
        pipeline_model_parallel_size=args.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=args.virtual_pipeline_model_parallel_size,
        sequence_parallel=args.sequence_parallel,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=args.bf16,
        fp16=args.fp16,
        recompute_granularity=args.recompute_granularity,
        recompute_method=args.recompute_method if args.recompute_granularity == "full" else None,
        recompute_num_layers=args.recompute_num_layers if args.recompute_granularity == "full" else None,
        # Fusions that need apex/TE or CUDA-only kernels stay off; ours come from megatron_ext.kernels.
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        rotary_interleaved=identity.rotary_interleaved,
        softmax_scale=mup_multipliers.get("softmax_scale"),
        kernel_impl=None if args.kernels == "auto" else args.kernels,
        attention_kernel=args.attention_backend,
        norm_impl=args.norm_impl,
        rotary_percent=identity.rotary_percent,
        rotary_base=identity.rotary_base,
        embedding_multiplier=mup_multipliers.get("embedding", 1.0),
        logits_multiplier=mup_multipliers.get("logits", 1.0),
        # Frees a stage's output once sent. gloo sends asynchronously from the tensor's storage, so
        # freeing it early corrupts later micro-batches on CPU; NCCL's stream ordering makes it safe.
        deallocate_pipeline_outputs=not on_cpu,
        # As Megatron-LM: interleaved pipelining overlaps p2p with compute and sends unbatched. Batched
        # sends to one peer that is both previous and next stage (PP=2) can pair up crosswise.
        overlap_p2p_comm=args.virtual_pipeline_model_parallel_size is not None,
        batch_p2p_comm=args.virtual_pipeline_model_parallel_size is None,
    )
