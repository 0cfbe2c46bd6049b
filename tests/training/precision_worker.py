"""torchrun worker for test_half_precision_tracks_fp32: builds the model, optimizer and data through the
project's builders (what pretrain_llama.py trains), runs one training step, and records the dtypes that
matter for "--bf16 / --fp16 really train in half precision":

  params:      {dtype name: count} of the model chunks' parameters (what the forward computes with);
  activations: {dtype name: count} of every transformer layer's output during the step's forward;
  main_params: {dtype name: count} of the optimizer's parameters (fp32 main copies under mixed precision).

argv: OUT_PREFIX PRETRAIN_FLAGS...; writes OUT_PREFIX.<rank>.json.
"""

import collections
import json
import sys

import torch

from megatron_ext.arguments import parse_config
from megatron_ext.platform import init_distributed


def main(out_prefix: str, argv: list[str]) -> None:
    config = parse_config(argv)
    platform = init_distributed(config.parallel.device)
    from megatron.core.transformer.transformer_layer import TransformerLayer

    from megatron_ext.data.build import build_datasets
    from megatron_ext.data.loader import micro_batches
    from megatron_ext.training.build import build_trainable
    from megatron_ext.training.loop import train_step
    from megatron_ext.training.parallel import data_parallel_rank_and_size, initialize_parallel

    initialize_parallel(config.parallel, config.training.seed)
    config = config.with_vocab(config.data.vocab_size)
    built = build_trainable(config, platform.device)
    model, optimizer, scheduler = built.model, built.optimizer, built.scheduler
    params = collections.Counter(str(p.dtype) for chunk in model for p in chunk.module.parameters())
    activations = collections.Counter()

    def record(module, inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        activations[str(hidden.dtype)] += 1

    for chunk in model:
        for module in chunk.module.modules():
            if isinstance(module, TransformerLayer):
                module.register_forward_hook(record)
    train_ds, _ = build_datasets(config.data, config.training, config.logging, None, config.model.vocab_size)
    dp_rank, dp_size = data_parallel_rank_and_size()
    iterators = [micro_batches(train_ds, 0, config.training.micro_batch_size, dp_rank, dp_size) for _ in model]
    for chunk in model:
        chunk.train()
    train_step(model, optimizer, scheduler, iterators, config.training)
    main_params = collections.Counter(str(p.dtype) for group in optimizer.param_groups for p in group["params"])
    with open(f"{out_prefix}.{platform.rank}.json", "w") as f:
        json.dump({"params": params, "activations": activations, "main_params": main_params}, f)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
