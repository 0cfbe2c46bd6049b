"""torchrun worker for test_kernels_in_model: the same model trained with several kernel / recompute
variants side by side in one process, through the project's builders and `train_step`.

argv: OUT_PREFIX SPEC_JSON. SPEC_JSON holds a list of cases, each
    {"name": str, "argv": [pretrain flags], "variants": {variant name: [extra flags]}}.
A case's variants share its parallel layout; cases may differ in layout (the parallel state is torn
down and rebuilt between them), so one launch covers several layouts.

Writes `<OUT_PREFIX>.<rank>.pt`: {case: {variant: {"losses", "grad_norms", "grads", "calls", "param_dtypes"}}}
where
  grads: "<global param name>@tp<rank>" -> this rank's main_grad (fp32) as the optimizer of the
         first step sees it (after the schedule's finalize_model_grads, before clipping);
  calls: "<op>:<impl>" -> how often the layers called megatron_ext.kernels.<op> with that impl;
  param_dtypes: the dtypes of the model's parameters (["torch.bfloat16"] under --bf16).
"""

import collections
import json
import sys

import torch

from megatron_ext import kernels
from megatron_ext.arguments import parse_config
from megatron_ext.platform import init_distributed

OPS = ("rms_norm", "layer_norm", "swiglu", "apply_rotary")
CALLS = collections.Counter()
CURRENT = {"variant": None}


def count_kernel_calls() -> None:
    """Wrap the ops the layers call (as `kernels.<op>`) to count calls per variant and impl."""
    for op in OPS:
        fn = getattr(kernels, op)

        def counted(*a, _fn=fn, _op=op, **kw):
            CALLS[(CURRENT["variant"], f"{_op}:{kw.get('impl')}")] += 1
            return _fn(*a, **kw)

        setattr(kernels, op, counted)


def build_variant(config, platform):
    from megatron_ext.data.build import build_datasets
    from megatron_ext.data.loader import micro_batches
    from megatron_ext.training.build import build_trainable
    from megatron_ext.training.parallel import data_parallel_rank_and_size

    config = config.with_vocab(config.data.vocab_size)
    built = build_trainable(config, platform.device)
    model, optimizer, scheduler = built.model, built.optimizer, built.scheduler
    train_ds, _ = build_datasets(config.data, config.training, config.logging, None, config.model.vocab_size)
    dp_rank, dp_size = data_parallel_rank_and_size()
    iterators = [micro_batches(train_ds, 0, config.training.micro_batch_size, dp_rank, dp_size) for _ in model]
    for chunk in model:
        chunk.train()
    return model, optimizer, scheduler, iterators


def grads_of(model) -> dict:
    from megatron.core import parallel_state

    from megatron_ext.models.init import global_param_name

    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    grads = {}
    for chunk in model:
        for name, param in chunk.module.named_parameters():
            key = f"{global_param_name(chunk.module, name)}@tp{tp_rank}"
            assert key not in grads, f"two parameters named {key}"
            grads[key] = param.main_grad.detach().float().clone()
    return grads


def run_case(case: dict, platform) -> dict:
    from megatron.core import parallel_state

    from megatron_ext.training.loop import train_step
    from megatron_ext.training.parallel import initialize_parallel

    variants = {name: parse_config(case["argv"] + extra) for name, extra in case["variants"].items()}
    first = next(iter(variants.values()))
    initialize_parallel(first.parallel, first.training.seed)
    built = {name: build_variant(config, platform) for name, config in variants.items()}
    results = {name: {"losses": [], "grad_norms": [], "grads": None} for name in variants}

    for name, (model, optimizer, _, _) in built.items():
        step = optimizer.step

        def snapshot_then_step(_step=step, _name=name, _model=model):
            if results[_name]["grads"] is None:  # the first step: every variant has the same weights
                results[_name]["grads"] = grads_of(_model)
            return _step()

        optimizer.step = snapshot_then_step

    for _ in range(first.training.train_iters):
        for name, (model, optimizer, scheduler, iterators) in built.items():
            CURRENT["variant"] = (case["name"], name)
            loss, grad_norm, _ = train_step(model, optimizer, scheduler, iterators, variants[name].training)
            results[name]["losses"].append(loss)
            results[name]["grad_norms"].append(float(grad_norm))
    for name, (model, _, _, _) in built.items():
        results[name]["calls"] = {call: n for (variant, call), n in CALLS.items() if variant == (case["name"], name)}
        results[name]["param_dtypes"] = sorted({str(p.dtype) for chunk in model for p in chunk.module.parameters()})
    parallel_state.destroy_model_parallel()
    return results


def main(out_prefix: str, spec: str) -> None:
    cases = json.loads(spec)
    platform = init_distributed(parse_config(cases[0]["argv"]).parallel.device)
    count_kernel_calls()
    out = {case["name"]: run_case(case, platform) for case in cases}
    torch.save(out, f"{out_prefix}.{platform.rank}.pt")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
