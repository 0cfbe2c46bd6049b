"""torchrun worker for test_mup_in_model: the real μP model, optimizer and scheduler at the layout
given by the flags, trained for --train-iters steps with the project's `train_step`.

Writes `<out_prefix>.<rank>.json`: for every parameter this rank holds, its initial shard's
sum / sum of squares / element count (the test adds shards up to full tensors, as
tests/training/init_worker.py does) and, before every step and after the last one, the `lr` and
`weight_decay` of the optimizer group that holds it. What is recorded is read back from the
megatron optimizer itself, not recomputed, so the test compares the rule with what Adam used.
"""

import json
import sys

from megatron_ext.arguments import parse_args
from megatron_ext.arguments.configs import RunConfig
from megatron_ext.platform import init_distributed


def group_of_each_param(optimizer, params) -> dict:
    """id(param) -> the optimizer param_group holding it. Matched by identity: the plain (not
    distributed) fp32 optimizer steps the model's own parameters, so a group's `lr` is exactly
    what that parameter's update uses. Also counts how many groups hold each parameter."""
    wanted = {id(p) for p in params}
    groups, counts = {}, {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) in wanted:
                groups[id(p)] = group
                counts[id(p)] = counts.get(id(p), 0) + 1
    return groups, counts


def main(out_prefix: str, argv: list[str]) -> None:
    args = parse_args(argv)
    platform = init_distributed(args.device)
    from megatron.core import parallel_state

    from megatron_ext.data.build import build_datasets
    from megatron_ext.data.loader import micro_batches
    from megatron_ext.models.init import global_param_name
    from megatron_ext.training.build import build_trainable
    from megatron_ext.training.loop import train_step
    from megatron_ext.training.parallel import data_parallel_rank_and_size, initialize_parallel

    assert not args.use_distributed_optimizer, "groups of the distributed optimizer hold shard copies"
    # Same build order as megatron_ext/training/pretrain.py.
    initialize_parallel(args, args.seed)  # the flags carry ParallelConfig's fields
    built = build_trainable(RunConfig.from_flags(args).with_vocab(args.vocab_size), platform.device)
    model, optimizer, scheduler = built.model, built.optimizer, built.scheduler

    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    records, params = [], []
    for chunk in model:
        for name, param in chunk.module.named_parameters():
            records.append({
                "name": name, "global_name": global_param_name(chunk.module, name),
                "split": bool(getattr(param, "tensor_model_parallel", False)), "tp_rank": tp_rank,
                "sum": param.double().sum().item(), "sq": param.double().square().sum().item(),
                "numel": param.numel(), "lr": [], "weight_decay": [],
            })
            params.append(param)
    groups, counts = group_of_each_param(optimizer, params)
    for record, param in zip(records, params):
        record["num_groups"] = counts.get(id(param), 0)

    def snapshot():
        for record, param in zip(records, params):
            group = groups.get(id(param))
            record["lr"].append(group["lr"] if group else None)
            record["weight_decay"].append(group["weight_decay"] if group else None)

    train_ds, _ = build_datasets(args, args, args, None, args.vocab_size)  # data, training, logging fields
    dp_rank, dp_size = data_parallel_rank_and_size()
    iterators = [micro_batches(train_ds, 0, args.micro_batch_size, dp_rank, dp_size) for _ in model]
    for chunk in model:
        chunk.train()
    losses = []
    for _ in range(args.train_iters):
        snapshot()  # the values the coming optimizer.step() will use
        loss, _, _ = train_step(model, optimizer, scheduler, iterators, args)
        losses.append(loss)
    snapshot()
    with open(f"{out_prefix}.{platform.rank}.json", "w") as f:
        json.dump({"params": records, "losses": losses}, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
