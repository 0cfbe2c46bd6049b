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
    qk_norm: str | None = None              # None | "head" | "full": layers/qk_norm.py
    embedding_multiplier: float = 1.0       # μP: scales the embedding output
    logits_multiplier: float = 1.0          # μP: alpha_out / m, applied to the output layer's logits
    residual_branch_multiplier: float = 1.0  # depth-μP: 1/sqrt(L / L_base) on attention and MLP outputs


def params_dtype(compute) -> torch.dtype:
    return torch.bfloat16 if compute.bf16 else torch.float16 if compute.fp16 else torch.float32


def transformer_config(run, on_cpu: bool, mup_multipliers: dict | None = None) -> LlamaConfig:
    """From a RunConfig: its model identity, parallel layout and compute settings."""
    identity, parallel, compute = run.model, run.parallel, run.compute
    dtype = params_dtype(compute)
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
        hidden_dropout=compute.hidden_dropout,
        attention_dropout=compute.attention_dropout,
        init_method_std=identity.init_method_std,
        # megatron initialises (and only then tags tensor-parallel attributes on the weights);
        # models/init.py then overwrites every weight from the seed alone.
        perform_initialization=True,
        use_cpu_initialization=on_cpu,
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=parallel.virtual_pipeline_model_parallel_size,
        sequence_parallel=parallel.sequence_parallel,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=compute.bf16,
        fp16=compute.fp16,
        # Fine-tuning rows train different numbers of tokens: the loss is the mean over the global batch's
        # trained tokens (the schedule sums, finalize_model_grads divides by the all-reduced count), so it
        # does not depend on micro-batch size, DP or PP. Pretraining rows are full, where the two agree.
        calculate_per_token_loss=bool(run.data and run.data.conversation_data),
        recompute_granularity=compute.recompute_granularity,
        recompute_method=compute.recompute_method if compute.recompute_granularity == "full" else None,
        recompute_num_layers=compute.recompute_num_layers if compute.recompute_granularity == "full" else None,
        # Fusions that need apex/TE or CUDA-only kernels stay off; ours come from megatron_ext.kernels.
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        rotary_interleaved=identity.rotary_interleaved,
        layernorm_bias=identity.layernorm_bias,
        qk_norm=identity.qk_norm,
        # megatron-core sums the per-head norm's gain gradients across TP when this is set; the full-width
        # norm's gains are split across TP like the heads, so they must not be summed.
        qk_layernorm=identity.qk_norm == "head",
        softmax_scale=mup_multipliers.get("softmax_scale"),
        kernel_impl=None if compute.kernels == "auto" else compute.kernels,
        attention_kernel=compute.attention_backend,
        norm_impl=compute.norm_impl,
        rotary_percent=identity.rotary_percent,
        rotary_base=identity.rotary_base,
        embedding_multiplier=mup_multipliers.get("embedding", 1.0),
        logits_multiplier=mup_multipliers.get("logits", 1.0),
        residual_branch_multiplier=mup_multipliers.get("residual_branch", 1.0),
        # Frees a stage's output once sent. gloo sends asynchronously from the tensor's storage, so
        # freeing it early corrupts later micro-batches on CPU; NCCL's stream ordering makes it safe.
        deallocate_pipeline_outputs=not on_cpu,
        # As Megatron-LM: interleaved pipelining overlaps p2p with compute and sends unbatched. Batched
        # sends to one peer that is both previous and next stage (PP=2) can pair up crosswise.
        overlap_p2p_comm=parallel.virtual_pipeline_model_parallel_size is not None,
        batch_p2p_comm=parallel.virtual_pipeline_model_parallel_size is None,
    )
