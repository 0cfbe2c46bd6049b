"""Model FLOPs per iteration and device peaks, for TFLOP/s and MFU.

Counted per token, forward pass, matrix multiplies only (2 FLOPs per multiply-add):
  attention projections  2 * H * (q_heads + 2 * kv_heads) * d  +  2 * q_heads * d * H
  attention scores/values  2 * 2 * s * q_heads * d          (full s x s, as PaLM and Megatron-LM count)
  SwiGLU MLP             2 * 3 * H * F
  output layer           2 * H * V
per layer for the first three, once for the last; training = 3 x forward (backward is 2x forward).
Activation recomputation is not counted: this is model FLOPs utilisation (MFU), not hardware FLOPs.
"""

from __future__ import annotations

import torch

# Dense (no sparsity) bf16/fp16 tensor-core peaks per device, TFLOP/s.
PEAK_TFLOPS_BF16 = {"H100": 989.4, "H200": 989.4, "H800": 989.4, "A100": 312.0, "A800": 312.0}


def training_flops_per_iteration(identity, seq_length: int, global_batch_size: int) -> float:
    h, s, layers = identity.hidden_size, seq_length, identity.num_layers
    hq, hk, d, f = identity.num_attention_heads, identity.num_query_groups, identity.kv_channels, identity.ffn_hidden_size
    per_layer = 2 * h * (hq + 2 * hk) * d + 2 * hq * d * h + 4 * s * hq * d + 6 * h * f
    per_token = layers * per_layer + 2 * h * identity.vocab_size
    return 3.0 * per_token * global_batch_size * s


def peak_tflops(given: float | None, compute, device: torch.device) -> float | None:
    """--peak-tflops (given) wins; otherwise the known bf16/fp16 peak of this GPU, or None (unknown)."""
    if given:
        return given
    if device.type != "cuda" or not (compute.bf16 or compute.fp16):
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_TFLOPS_BF16.items() if key in name), None)
