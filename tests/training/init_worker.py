"""torchrun worker for test_init_is_layout_independent: builds the model at the layout given by the
flags and saves, per rank, every parameter shard under its global name with how it is split."""

import sys

import torch

from megatron_ext.arguments import parse_config
from megatron_ext.platform import init_distributed


def main(out_prefix: str, argv: list[str]) -> None:
    config = parse_config(argv)
    platform = init_distributed(config.parallel.device)
    from megatron.core import parallel_state

    from megatron_ext.models.init import global_param_name
    from megatron_ext.training.build import build_trainable
    from megatron_ext.training.parallel import initialize_parallel

    initialize_parallel(config.parallel, config.training.seed)
    model = build_trainable(config.with_vocab(config.data.vocab_size), platform.device).model
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    shards = {}
    for chunk in model:
        for name, param in chunk.module.named_parameters():
            split = bool(getattr(param, "tensor_model_parallel", False))
            shards[global_param_name(chunk.module, name)] = {
                "data": param.detach().clone(), "tp_rank": tp_rank,
                "partition_dim": getattr(param, "partition_dim", -1) if split else -1}
    torch.save(shards, f"{out_prefix}.{platform.rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
