"""Fused Triton kernels (with pure-torch references) for LLaMA-style training.

Every op takes ``impl``: "triton", "torch" or None (None = Triton for CUDA
tensors, the torch reference otherwise). All ops are differentiable.
"""
from .layer_norm import layer_norm, layer_norm_ref
from .rms_norm import rms_norm, rms_norm_ref
from .rotary import apply_rotary, apply_rotary_ref
from .swiglu import swiglu, swiglu_ref

__all__ = [
    "rms_norm",
    "layer_norm",
    "swiglu",
    "apply_rotary",
    "rms_norm_ref",
    "layer_norm_ref",
    "swiglu_ref",
    "apply_rotary_ref",
]
