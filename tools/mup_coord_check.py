"""μP coordinate check of the project's model: does activation size stay flat as width grows?

Trains a few steps of the real model (megatron-core GPTModel, our builders and train_step) at
several widths under standard parametrization (SP) and μP, records the mean |activation| of the
embedding, every transformer layer, the final norm and the logits at every step, and writes
coord.json, coord.csv and coord.png to --out. Prints the fitted log-log growth slope of activation
size against width: ~0 under μP, clearly positive under SP.

    python tools/mup_coord_check.py --out coord_out
    python tools/mup_coord_check.py --widths 64,128,256 --steps 6 --lr 3e-2 --out /tmp/coord

Single CPU process (or --device cuda); the 1024-wide model takes a minute or so on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import logging
import warnings


def parse(argv=None):
    from megatron_ext.training.coord_check import Setup

    d = Setup()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--widths", default=",".join(map(str, d.widths)), help="comma-separated hidden sizes")
    p.add_argument("--parametrizations", default="sp,mup", help="comma-separated: sp, mup")
    p.add_argument("--base-width", type=int, default=d.base_width, help="μP base hidden size")
    p.add_argument("--num-layers", type=int, default=d.num_layers)
    p.add_argument("--head-dim", type=int, default=d.head_dim, help="fixed; heads = width / head_dim")
    p.add_argument("--ffn-ratio", type=float, default=d.ffn_ratio)
    p.add_argument("--seq-length", type=int, default=d.seq_length)
    p.add_argument("--micro-batch-size", type=int, default=d.micro_batch_size)
    p.add_argument("--num-microbatches", type=int, default=d.num_microbatches)
    p.add_argument("--vocab-size", type=int, default=d.vocab_size)
    p.add_argument("--steps", type=int, default=d.steps, help="recorded forward passes (updates = steps - 1 seen)")
    p.add_argument("--lr", type=float, default=d.lr, help="Adam LR (μP: the base-width LR)")
    p.add_argument("--init-std", type=float, default=d.init_std, help="SP init std = μP sigma_base")
    p.add_argument("--adam-eps", type=float, default=d.adam_eps)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    opts = parse(argv)
    warnings.filterwarnings("ignore", module=r"megatron\.core.*")
    logging.getLogger("megatron.core").setLevel(logging.ERROR)
    from mup.coord_check import growth_slope, module_slopes, write_outputs

    from megatron_ext.platform import init_distributed
    from megatron_ext.training.coord_check import Setup, run

    setup = Setup(widths=tuple(int(w) for w in opts.widths.split(",")), base_width=opts.base_width,
                  num_layers=opts.num_layers, head_dim=opts.head_dim, ffn_ratio=opts.ffn_ratio,
                  seq_length=opts.seq_length, micro_batch_size=opts.micro_batch_size,
                  num_microbatches=opts.num_microbatches, vocab_size=opts.vocab_size, steps=opts.steps,
                  lr=opts.lr, init_std=opts.init_std, adam_eps=opts.adam_eps, seed=opts.seed)
    platform = init_distributed(opts.device)
    print(f"coordinate check: widths {list(setup.widths)}, {setup.num_layers} layers, head_dim {setup.head_dim}, "
          f"{setup.steps} steps at lr {setup.lr}, μP base width {setup.base_width}", flush=True)
    results = run(setup, tuple(opts.parametrizations.split(",")), platform.device,
                  progress=lambda line: print(line, flush=True))
    paths = write_outputs(results, opts.out)

    slopes, per_module = growth_slope(results), module_slopes(results)
    modules = sorted(next(iter(per_module.values())))
    print("\nlog-log slope of mean |activation| vs width at the last step (0 = width-independent):")
    print(f"  {'module':<26}" + "".join(f"{p:>9}" for p in per_module))
    for module in modules:
        print(f"  {module:<26}" + "".join(f"{per_module[p].get(module, float('nan')):9.3f}" for p in per_module))
    print(f"  {'mean':<26}" + "".join(f"{slopes[p]:9.3f}" for p in per_module))
    print("wrote " + ", ".join(v for k, v in paths.items() if k != "png_skipped"), flush=True)
    return slopes


if __name__ == "__main__":
    main()
