"""RMSNorm / LayerNorm module used at every norm position of the layer spec.

megatron-core's torch norm refuses sequence parallelism; this one marks its weight (and bias)
`sequence_parallel` so megatron's finalize_model_grads all-reduces their gradients across the
tensor-parallel ranks, each of which saw only its slice of the sequence.
"""

import torch

from megatron_ext import kernels


def apex_norm_functions():
    """apex's fused (rms_norm_affine, layer_norm_affine); optional, used with --norm-impl apex."""
    try:
        from apex.normalization.fused_layer_norm import fused_layer_norm_affine, fused_rms_norm_affine
    except ImportError as exc:
        raise RuntimeError("--norm-impl apex needs NVIDIA apex built with its CUDA extensions "
                           "(github.com/NVIDIA/apex; the PyPI package 'apex' is unrelated); "
                           "or use --norm-impl kernels") from exc
    return fused_rms_norm_affine, fused_layer_norm_affine


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
        self.apex = apex_norm_functions() if config.norm_impl == "apex" else None
        if self.apex and not self.rms and self.bias is None:
            # apex's fused_layer_norm_affine has no bias-free form (it calls bias.contiguous() and its
            # custom op declares bias a Tensor): feed it a constant zero bias, which adds nothing and
            # gets no gradient. Not persistent, so checkpoints hold exactly the parameters.
            self.register_buffer("zero_bias", torch.zeros(hidden_size, dtype=config.params_dtype),
                                 persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.apex:
            rms_fn, layer_fn = self.apex
            shape = self.weight.shape
            if self.rms:
                return rms_fn(x, self.weight, shape, self.eps)
            bias = self.bias if self.bias is not None else self.zero_bias
            return layer_fn(x, self.weight, bias, shape, self.eps)
        impl = self.config.kernel_impl
        if self.rms:
            return kernels.rms_norm(x, self.weight, self.eps, impl=impl)
        return kernels.layer_norm(x, self.weight, self.bias, self.eps, impl=impl)
