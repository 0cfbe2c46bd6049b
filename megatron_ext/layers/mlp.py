"""SwiGLU MLP: megatron-core's MLP with the activation swapped for the project's kernel.

Subclassing keeps megatron's sharded_state_dict, which splits the fused [gate; up] fc1 weight so
checkpoints reshard across tensor-parallel sizes.
"""

from megatron.core.transformer.mlp import MLP

from megatron_ext import kernels


class SwiGLUMLP(MLP):
    def forward(self, hidden_states, per_token_scale=None, **kwargs):
        intermediate, bias = self.linear_fc1(hidden_states)
        if bias is not None:
            intermediate = intermediate + bias
        intermediate = kernels.swiglu(intermediate, impl=self.config.kernel_impl)
        return self.linear_fc2(intermediate)
