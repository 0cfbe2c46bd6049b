"""RMSNorm / LayerNorm module used at every norm position of the layer spec.

megatron-core's torch norm refuses sequence parallelism; this one marks its weight (and bias)
`sequence_parallel` so megatron's finalize_model_grads all-reduces their gradients across the
tensor-parallel ranks, each of which saw only its slice of the sequence.
"""

import torch

from megatron_ext import kernels


class Norm(torch.nn.Module):
    def __init__(self, config, hidden_size: int, eps: float = 1e-5):
        super().__init__()
        self.config = config
        self.eps = eps
        self.rms = config.normalization == "RMSNorm"
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        self.bias = None
        if not self.rms and config.layernorm_bias:
            self.bias = torch.nn.Parameter(torch.zeros(hidden_size, dtype=config.params_dtype))
        for param in (self.weight, self.bias):
            if param is not None:
                param.sequence_parallel = config.sequence_parallel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        impl = self.config.kernel_impl
        if self.rms:
            return kernels.rms_norm(x, self.weight, self.eps, impl=impl)
        return kernels.layer_norm(x, self.weight, self.bias, self.eps, impl=impl)
