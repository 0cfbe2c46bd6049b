"""The layer specification: megatron-core's TransformerLayer with this project's norm, rotary
attention and SwiGLU MLP. Swap a part by naming another class here, not by forking the model."""

from megatron.core.tensor_parallel import ColumnParallelLinear
from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.mlp import MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import (TransformerBlock, TransformerBlockSubmodules,
                                                         get_num_layers_to_build)
from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules

from megatron_ext.layers import Norm, RotaryCoreAttention, SwiGLUMLP
from megatron_ext.layers.branch_scale import BranchScaledRowParallelLinear
from megatron_ext.layers.qk_norm import FullWidthKeyNorm, FullWidthQueryNorm

# ModelIdentity.qk_norm -> the (query, key) norm modules megatron-core's attention applies after the head split.
QK_NORMS = {None: (IdentityOp, IdentityOp), "head": (Norm, Norm), "full": (FullWidthQueryNorm, FullWidthKeyNorm)}


def llama_layer_spec(norm=Norm, core_attention=RotaryCoreAttention, mlp=SwiGLUMLP, qk_norm=None) -> ModuleSpec:
    q_norm, k_norm = QK_NORMS[qk_norm]
    return ModuleSpec(
        module=TransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=norm,
            self_attention=ModuleSpec(
                module=SelfAttention,
                params={"attn_mask_type": AttnMaskType.causal},
                submodules=SelfAttentionSubmodules(
                    linear_qkv=ColumnParallelLinear,
                    core_attention=core_attention,
                    linear_proj=BranchScaledRowParallelLinear,  # depth-μP's branch multiplier (x1 without)
                    q_layernorm=q_norm,
                    k_layernorm=k_norm,
                ),
            ),
            self_attn_bda=get_bias_dropout_add,
            pre_mlp_layernorm=norm,
            mlp=ModuleSpec(module=mlp, submodules=MLPSubmodules(linear_fc1=ColumnParallelLinear,
                                                                 linear_fc2=BranchScaledRowParallelLinear)),
            mlp_bda=get_bias_dropout_add,
        ),
    )


def llama_block_spec(config, vp_stage=None, layer_spec: ModuleSpec | None = None, norm=Norm) -> ModuleSpec:
    """This pipeline stage's layers plus the final norm (ours, so sequence parallelism works)."""
    layer_spec = layer_spec or llama_layer_spec(norm=norm, qk_norm=getattr(config, "qk_norm", None))
    num_layers = get_num_layers_to_build(config, vp_stage=vp_stage)
    return ModuleSpec(module=TransformerBlock,
                      submodules=TransformerBlockSubmodules(layer_specs=[layer_spec] * num_layers, layer_norm=norm))


def megatron_local_block_spec(config, vp_stage=None) -> ModuleSpec:
    """megatron-core's stock local spec (its own norm, unfused attention with a mask, RoPE outside the
    core attention): the baseline benchmarks/train_throughput.py compares against."""
    layer_spec = get_gpt_layer_local_spec(normalization=config.normalization)
    num_layers = get_num_layers_to_build(config, vp_stage=vp_stage)
    return ModuleSpec(module=TransformerBlock,
                      submodules=TransformerBlockSubmodules(layer_specs=[layer_spec] * num_layers,
                                                            layer_norm=layer_spec.submodules.input_layernorm))
