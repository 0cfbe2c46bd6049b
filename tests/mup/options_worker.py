"""Subprocess of test_mup_options.py: builds the real model (our builders, megatron's optimizer and scheduler)
for each case of flags and reports what the μP options did to it.

    python tests/mup/options_worker.py OUT_JSON CASES_JSON

CASES_JSON maps a case name to pretrain_llama.py flags. For each case it writes: the residual-branch
multiplier the layers read, layer 0's query / key / value (megatron-core's own split of linear_qkv's output,
SelfAttention.get_query_key_value_tensors, on a random input) as mean |x|, the output layer's and the
embedding's mean |weight|, each parameter's optimizer group (lr, weight_decay, eps, after the scheduler set
them), and the ratio of linear_proj's output to x W^T (the branch multiplier as the forward applies it).
Built in this process (megatron's CPU redirection stays on for the life of a process, not in pytest's).
"""

import json
import sys

import torch


def main(out_path: str, cases_json: str) -> None:
    from megatron_ext.arguments import parse_args
    from megatron_ext.arguments.configs import RunConfig
    from megatron_ext.platform import init_distributed
    from megatron_ext.training.build import build_trainable
    from megatron_ext.training.coord_check import _ensure_parallel_state

    device = init_distributed("cpu").device
    report = {}
    for name, argv in json.loads(cases_json).items():
        args = parse_args([str(a) for a in argv], world_size=1)
        _ensure_parallel_state(args)
        built = build_trainable(RunConfig.from_flags(args).with_vocab(args.vocab_size), device)
        chunk = built.model[0]
        model = chunk.module
        layer = model.decoder.layers[0]
        gen = torch.Generator().manual_seed(0)
        hidden = torch.randn(5, 2, args.model_identity.hidden_size, generator=gen)
        with torch.no_grad():
            query, key, value = layer.self_attention.get_query_key_value_tensors(hidden)[:3]
            proj = layer.self_attention.linear_proj
            heads_in = torch.randn(5, 2, proj.weight.shape[1], generator=gen)
            out, _ = proj(heads_in)
            plain = heads_in @ proj.weight.t()
        names = {id(p): n.removeprefix("module.") for n, p in chunk.named_parameters()}
        groups = {}
        for group in built.optimizer.param_groups:
            for p in group["params"]:
                groups[names[id(p)]] = {"lr": group["lr"], "weight_decay": group["weight_decay"], "eps": group["eps"]}
        report[name] = {
            "residual_branch_multiplier": built.config.residual_branch_multiplier,
            "query": query.abs().mean().item(), "key": key.abs().mean().item(), "value": value.abs().mean().item(),
            "output_layer": model.output_layer.weight.abs().mean().item(),
            "embedding": model.embedding.word_embeddings.weight.abs().mean().item(),
            "proj_out_over_plain": (out.norm() / plain.norm()).item(),
            "groups": groups,
        }
        print(f"{name}: done", flush=True)
    with open(out_path, "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
