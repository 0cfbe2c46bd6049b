"""megatron-core modules that route the norm, rotary attention and SwiGLU through `megatron_ext.kernels`."""

from megatron_ext.layers.attention import RotaryCoreAttention
from megatron_ext.layers.mlp import SwiGLUMLP
from megatron_ext.layers.norms import Norm

__all__ = ["Norm", "RotaryCoreAttention", "SwiGLUMLP"]
