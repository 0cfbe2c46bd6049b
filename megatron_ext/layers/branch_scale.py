"""Depth-μP's residual-branch multiplier on the two projections that write into the residual stream.

A transformer layer adds two branches to the residual stream: attention (ending in linear_proj) and
the MLP (ending in linear_fc2). Depth-μP multiplies each branch by 1/sqrt(L / L_base)
(`LlamaConfig.residual_branch_multiplier`, from the μP rules), so that the L layers' updates sum to a
depth-independent change of the residual stream. Scaling the projection's output (and its bias,
which megatron-core hands separately to the bias-dropout-add) is the same as scaling the branch, and
leaves the parameter names, shapes and sharding of RowParallelLinear unchanged. At 1.0 (no depth-μP)
the output is returned untouched.
"""

from megatron.core.tensor_parallel import RowParallelLinear


class BranchScaledRowParallelLinear(RowParallelLinear):
    def forward(self, input_):
        output, bias = super().forward(input_)
        scale = getattr(self.config, "residual_branch_multiplier", 1.0)
        if scale != 1.0:
            output = output * scale
            bias = None if bias is None else bias * scale
        return output, bias
