"""torchrun worker: the full-width query/key norm (layers/qk_norm.py) on this rank's heads, at the TP size
given, for fixed inputs; saves the output, the input gradient and the gain gradient of this rank's slice.

    torchrun --nproc-per-node TP qk_norm_worker.py OUT_PREFIX
Inputs (seeded, the same on every rank): x [seq 6, batch 2, heads 4, head_dim 8], gain [32], dy like x."""

import sys
from types import SimpleNamespace

import torch
from megatron.core import parallel_state

from megatron_ext.layers.qk_norm import FullWidthQueryNorm
from megatron_ext.platform import init_distributed

HEADS, HEAD_DIM = 4, 8


def inputs():
    generator = torch.Generator().manual_seed(11)
    x = torch.randn(6, 2, HEADS, HEAD_DIM, generator=generator) * 3 + 1  # an offset, so the mean matters
    gain = 1 + 0.3 * torch.randn(HEADS * HEAD_DIM, generator=generator)
    dy = torch.randn(6, 2, HEADS, HEAD_DIM, generator=generator)
    return x, gain, dy


def main(out_prefix: str) -> None:
    platform = init_distributed("cpu")
    tp = torch.distributed.get_world_size()
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp)
    rank = parallel_state.get_tensor_model_parallel_rank()
    config = SimpleNamespace(num_attention_heads=HEADS, num_query_groups=HEADS, normalization="LayerNorm",
                             layernorm_bias=False, params_dtype=torch.float32, kernel_impl="torch")
    norm = FullWidthQueryNorm(config, HEAD_DIM, eps=1e-5)
    x, gain, dy = inputs()
    local = slice(rank * HEADS // tp, (rank + 1) * HEADS // tp)
    with torch.no_grad():
        norm.weight.copy_(gain.view(HEADS, HEAD_DIM)[local].reshape(-1))
    x_local = x[:, :, local].clone().requires_grad_(True)
    y = norm(x_local)
    y.backward(dy[:, :, local])
    torch.save({"y": y.detach(), "dx": x_local.grad, "dgain": norm.weight.grad}, f"{out_prefix}.{platform.rank}.pt")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
