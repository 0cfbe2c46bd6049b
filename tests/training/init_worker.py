"""torchrun worker for test_init_is_layout_independent: builds the model at the layout given by the
flags and writes, per rank, the sum of every parameter shard under its global name."""

import json
import sys

from megatron_ext.arguments import parse_args
from megatron_ext.platform import init_distributed


def main(out_prefix: str, argv: list[str]) -> None:
    args = parse_args(argv)
    platform = init_distributed(args.device)
    from megatron.core import parallel_state

    from megatron_ext.models.config import transformer_config
    from megatron_ext.models.gpt import build_model
    from megatron_ext.models.init import global_param_name
    from megatron_ext.models.parametrization import build_parametrization
    from megatron_ext.training.parallel import initialize_parallel

    initialize_parallel(args)
    parametrization = build_parametrization(args)
    config = transformer_config(args, on_cpu=True, mup_multipliers=parametrization.multipliers)
    model = build_model(config, args, args.vocab_size, parametrization, platform.device)
    shards = {}
    for chunk in model:
        for name, param in chunk.module.named_parameters():
            split = getattr(param, "tensor_model_parallel", False)
            key = global_param_name(chunk.module, name)
            shards[key] = {"sum": param.double().sum().item(), "sq": param.double().square().sum().item(),
                           "split": split, "tp_rank": parallel_state.get_tensor_model_parallel_rank()}
    with open(f"{out_prefix}.{platform.rank}.json", "w") as f:
        json.dump(shards, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
