"""Query/key norms, in megatron-core's q_layernorm/k_layernorm slots (which receive [s, b, heads, head_dim]).

Two kinds (ModelIdentity.qk_norm):
  * "head" (Megatron-LM's --qk-layernorm): one norm of head_dim channels shared by every head. Each TP rank
    sees only its heads, so the gain's gradient is summed across TP; megatron-core's finalize_model_grads does
    that for parameters named q_layernorm/k_layernorm when config.qk_layernorm is set.
  * "full" (open_lm, DCLM-1B): one LayerNorm over the whole projection, heads x head_dim wide, taken before
    the head split (open_lm/model.py applies q_norm/k_norm to the [b, s, n_heads * head_dim] projection). The
    gain is as wide as the projection and split across TP ranks like the heads are; the mean and variance are
    taken over the full width, so each rank all-reduces its partial sums across the TP group. The all-reduce
    is differentiable (_SumAcrossRanks: its backward all-reduces the gradient too), because every rank's output
    depends on every rank's input through the statistics. Under sequence parallelism the attention input has
    been gathered already, so nothing differs.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state
from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes
from megatron.core.transformer.utils import ensure_metadata_has_dp_cp_group, make_sharded_tensors_for_checkpoint

from megatron_ext import kernels


class _SumAcrossRanks(torch.autograd.Function):
    """Sum over the group, forward and backward: each rank's input feeds every rank's output, so the gradient
    of a rank's input is the sum of all ranks' output gradients. (torch.distributed.nn's all_reduce does the
    same but is deprecated.)"""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        x = x.clone()
        torch.distributed.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        torch.distributed.all_reduce(grad, group=ctx.group)
        return grad, None


class _FullWidthNorm(torch.nn.Module):
    """LayerNorm (or RMSNorm) over all heads of this projection; subclasses say how many heads that is."""

    @staticmethod
    def total_heads(config) -> int:
        raise NotImplementedError

    def __init__(self, config, hidden_size: int, eps: float = 1e-5):
        super().__init__()
        tp = parallel_state.get_tensor_model_parallel_world_size()
        self.config, self.eps, self.head_dim = config, eps, hidden_size
        self.width = self.total_heads(config) * hidden_size  # the full projection, all ranks together
        self.rms = config.normalization == "RMSNorm"
        self.weight = torch.nn.Parameter(torch.ones(self.width // tp, dtype=config.params_dtype))
        set_tensor_model_parallel_attributes(self.weight, is_parallel=True, dim=0, stride=1)
        self.bias = None
        if not self.rms and config.layernorm_bias:
            self.bias = torch.nn.Parameter(torch.zeros(self.width // tp, dtype=config.params_dtype))
            set_tensor_model_parallel_attributes(self.bias, is_parallel=True, dim=0, stride=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape  # [s, b, heads on this rank, head_dim]
        flat = x.reshape(*shape[:-2], -1)
        group = parallel_state.get_tensor_model_parallel_group()
        if torch.distributed.get_world_size(group) == 1:  # the whole width is here: the fused kernels
            if self.rms:
                return kernels.rms_norm(flat, self.weight, self.eps, impl=self.config.kernel_impl).view(shape)
            return kernels.layer_norm(flat, self.weight, self.bias, self.eps, impl=self.config.kernel_impl).view(shape)
        return self._across_ranks(flat, group).view(shape)

    def _across_ranks(self, flat: torch.Tensor, group) -> torch.Tensor:
        x = flat.float()
        if self.rms:
            centred = x
        else:  # two passes (mean, then the centred squares), as a single-rank LayerNorm computes them
            mean = _SumAcrossRanks.apply(x.sum(-1, keepdim=True), group) / self.width
            centred = x - mean
        variance = _SumAcrossRanks.apply(centred.pow(2).sum(-1, keepdim=True), group) / self.width
        y = centred * torch.rsqrt(variance + self.eps) * self.weight.float()
        if self.bias is not None:
            y = y + self.bias.float()
        return y.to(flat.dtype)

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata=None):
        """Split along dim 0 across TP, like the heads (megatron-core's default would call it replicated)."""
        metadata = ensure_metadata_has_dp_cp_group(metadata)
        state = self.state_dict(prefix="", keep_vars=True)
        return make_sharded_tensors_for_checkpoint(state, prefix, {name: 0 for name in state}, sharded_offsets,
                                                   tp_group=parallel_state.get_tensor_model_parallel_group(),
                                                   dp_cp_group=metadata["dp_cp_group"])


class FullWidthQueryNorm(_FullWidthNorm):
    @staticmethod
    def total_heads(config) -> int:
        return config.num_attention_heads


class FullWidthKeyNorm(_FullWidthNorm):
    @staticmethod
    def total_heads(config) -> int:
        return config.num_query_groups
