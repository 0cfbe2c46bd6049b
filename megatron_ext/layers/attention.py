"""Core attention with rotary embeddings: RoPE through the project's kernel, then causal SDPA.

The model is built with position_embedding_type='none' so megatron-core's SelfAttention hands the
un-rotated q/k ([seq, batch, heads, head_dim]) to this module, which owns RoPE (full or partial,
half-split or interleaved, any base) and the attention kernel. No O(seq^2) mask is materialised, except
for packed fine-tuning rows on SDPA (a block-diagonal causal mask; flash-attn's varlen kernel needs none).
Attention dropout (--attention-dropout, config.attention_dropout) is applied by the kernel itself (SDPA's
and flash-attn's dropout_p) in training mode, under megatron's model-parallel RNG as megatron-core's own
core attention does, so each tensor-parallel rank drops different heads' probabilities.
"""

import contextlib
import math

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.transformer.module import MegatronModule

from megatron_ext import kernels

try:  # optional backend, used only on CUDA when installed
    from flash_attn import flash_attn_func, flash_attn_varlen_func
except ImportError:  # pragma: no cover - depends on the environment
    flash_attn_func = flash_attn_varlen_func = None


def rotary_inv_freq(head_dim: int, rotary_percent: float, base: float) -> torch.Tensor:
    rotary_dim = int(head_dim * rotary_percent)
    if rotary_dim % 2 or rotary_dim == 0:
        raise ValueError(f"rotary dims {head_dim} x {rotary_percent} = {rotary_dim} must be a positive even number")
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim
    return (1.0 / base**exponents).float()


class QueryKeyProbe(torch.nn.Module):
    """Identity on the rotated query and key: a forward-hook point for tools that measure the attention
    logits (the μP coordinate check), which no attention kernel here materialises."""

    def forward(self, query, key):
        return query, key


class RotaryCoreAttention(MegatronModule):
    def __init__(self, config, layer_number, attn_mask_type, attention_type,
                 attention_dropout=None, softmax_scale=None, cp_comm_type=None, pg_collection=None):
        super().__init__(config=config)
        head_dim = config.kv_channels
        self.softmax_scale = config.softmax_scale or 1.0 / math.sqrt(head_dim)
        self.attention_dropout = attention_dropout  # None: config.attention_dropout (read at each forward)
        inv_freq = rotary_inv_freq(head_dim, config.rotary_percent, config.rotary_base)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.query_key_probe = QueryKeyProbe()

    def rotary_angles(self, seq_len: int, offset: int = 0) -> torch.Tensor:
        positions = torch.arange(offset, offset + seq_len, device=self.inv_freq.device, dtype=torch.float32)
        return torch.outer(positions, self.inv_freq)

    def forward(self, query, key, value, attention_mask=None, attn_mask_type=None,
                attention_bias=None, packed_seq_params=None, **kwargs):
        if packed_seq_params is not None:
            return self._packed_forward(query, key, value, packed_seq_params.cu_seqlens_q,
                                        packed_seq_params.max_seqlen_q)
        seq_len, batch = query.shape[:2]
        if key.shape[0] != seq_len:  # generation through megatron-core's KV cache (megatron_ext/inference)
            return self._forward_cached(query, key, value)
        query, key = kernels.apply_rotary(query, key, self.rotary_angles(seq_len),
                                          interleaved=self.config.rotary_interleaved,
                                          impl=self.config.kernel_impl)
        query, key = self.query_key_probe(query, key)
        dropout_p = self._dropout_p()
        with self._dropout_rng(dropout_p):
            if self._use_flash(query):
                out = flash_attn_func(*(t.transpose(0, 1) for t in (query, key, value)), dropout_p=dropout_p,
                                      causal=True, softmax_scale=self.softmax_scale)
                return out.transpose(0, 1).reshape(seq_len, batch, -1)
            q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, h, s, d]
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.softmax_scale,
                                                 dropout_p=dropout_p, enable_gqa=q.shape[1] != k.shape[1])
        return out.permute(2, 0, 1, 3).reshape(seq_len, batch, -1)

    def _forward_cached(self, query, key, value):
        """Generation (megatron_ext/inference/generate.py) with megatron-core's static KV cache: SelfAttention
        hands over the newest q_len queries and the keys/values of the whole sequence so far, cached as they
        left the projection (un-rotated: RoPE lives here). The queries sit at positions kv_len - q_len ..
        kv_len - 1, so they are rotated from that offset, every key from 0, and each query sees the keys up to
        its own position (the causal mask aligned at the end, not the start as SDPA's is_causal would).
        Inference only: no dropout, no gradient; flash-attn is not used on this path."""
        (q_len, batch), kv_len = query.shape[:2], key.shape[0]
        offset = kv_len - q_len
        rotate = dict(interleaved=self.config.rotary_interleaved, impl=self.config.kernel_impl)
        query, _ = kernels.apply_rotary(query, query, self.rotary_angles(q_len, offset), **rotate)
        key, _ = kernels.apply_rotary(key, key, self.rotary_angles(kv_len), **rotate)
        visible = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril(diagonal=offset)
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, h, s, d]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=visible, scale=self.softmax_scale,
                                             enable_gqa=q.shape[1] != k.shape[1])
        return out.permute(2, 0, 1, 3).reshape(q_len, batch, -1)

    def _packed_forward(self, query, key, value, cu_seqlens, max_seqlen: int):
        """Packed rows (training/step.py packed_seq_params): segments start at cu_seqlens, counted over the
        batch's tokens flattened row by row. Each segment is rotated from position 0 and attends only
        within itself, so a packed conversation computes what it would alone."""
        seq_len, batch = query.shape[:2]
        total = seq_len * batch
        token = torch.arange(total, device=query.device)
        cu_seqlens = cu_seqlens.to(device=query.device, dtype=torch.long)
        segment = torch.searchsorted(cu_seqlens[1:], token, right=True)
        positions = (token - cu_seqlens[segment]).float()
        flat = [t.transpose(0, 1).reshape(total, 1, *t.shape[2:]) for t in (query, key, value)]  # [b*s, 1, h, d]
        q, k = kernels.apply_rotary(flat[0], flat[1], torch.outer(positions, self.inv_freq),
                                    interleaved=self.config.rotary_interleaved, impl=self.config.kernel_impl)
        q, k = (t.reshape(batch, seq_len, *t.shape[2:]).transpose(0, 1) for t in (q, k))
        q, k = self.query_key_probe(q, k)
        dropout_p = self._dropout_p()
        with self._dropout_rng(dropout_p):
            if self._use_flash(q):
                out = flash_attn_varlen_func(
                    q.transpose(0, 1).reshape(total, *q.shape[2:]), k.transpose(0, 1).reshape(total, *k.shape[2:]),
                    flat[2].squeeze(1), cu_seqlens.to(torch.int32), cu_seqlens.to(torch.int32), max_seqlen,
                    max_seqlen, dropout_p=dropout_p, softmax_scale=self.softmax_scale, causal=True)
                return out.reshape(batch, seq_len, -1).transpose(0, 1)
            rows = segment.view(batch, seq_len)
            allowed = (rows[:, :, None] == rows[:, None, :]) & torch.ones(
                seq_len, seq_len, dtype=torch.bool, device=q.device).tril()
            q, k, v = (t.permute(1, 2, 0, 3) for t in (q, k, value))  # [b, h, s, d]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None], scale=self.softmax_scale,
                                                 dropout_p=dropout_p, enable_gqa=q.shape[1] != k.shape[1])
        return out.permute(2, 0, 1, 3).reshape(seq_len, batch, -1)

    def _dropout_p(self) -> float:
        if not self.training:
            return 0.0
        p = self.attention_dropout if self.attention_dropout is not None else self.config.attention_dropout
        return float(p or 0.0)

    def _dropout_rng(self, dropout_p: float):
        """megatron-core's DotProductAttention forks the model-parallel RNG for attention dropout (unless
        sequence-parallel); the same here, when megatron's RNG tracker has been seeded."""
        tracker = tensor_parallel.get_cuda_rng_tracker()
        if dropout_p == 0.0 or self.config.sequence_parallel or not tracker.is_initialized():
            return contextlib.nullcontext()
        return tracker.fork()

    def _use_flash(self, query) -> bool:
        backend = self.config.attention_kernel
        # Start-up validation (arguments/validate.py) refuses these; this guards direct use of the module.
        if backend == "flash" and (flash_attn_func is None or not query.is_cuda
                                   or query.dtype not in (torch.bfloat16, torch.float16)):
            raise RuntimeError("--attention-backend flash needs flash-attn installed, a CUDA device and "
                               "bf16/fp16 activations; or use --attention-backend sdpa")
        return backend in ("flash", "auto") and flash_attn_func is not None and query.is_cuda \
            and query.dtype in (torch.bfloat16, torch.float16)
