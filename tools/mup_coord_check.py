"""μP coordinate check of the project's model: does activation size stay flat as width grows?

Trains a few steps of the real model (megatron-core GPTModel, our builders and train_step) at
several widths under standard parametrization (SP) and μP, records the mean |activation| of the
embedding, every transformer layer's output, every linear layer's output (QKV, attention output
projection, MLP fc1 and fc2), the attention logits, the final norm and the logits at every step,
and writes coord.json, coord.csv and coord.png to --out. Prints the fitted log-log slope of
activation size against width per module (~0 or below under μP, clearly positive under SP) and the
modules whose activation grows with width; exits with status 1 when μP has any.

    python tools/mup_coord_check.py --out coord_out
    python tools/mup_coord_check.py --vary head-dim --parametrizations mup --out /tmp/coord
    python tools/mup_coord_check.py --preset tiny-crystal --parametrizations mup --out /tmp/crystal

--vary heads (the default) widens the model through the number of heads, --vary head-dim through
the head dim, which is the only way to see whether the attention scale is right (μP: 1/head_dim).
--vary depth is the coordinate check over depth: width fixed at --base-width, --depths layers, μP
without depth scaling ("mup") against depth-μP ("depth-mup", --mup-base-num-layers --base-depth);
it exits 1 when depth-μP has a module that grows with depth.

    python tools/mup_coord_check.py --vary depth --out /tmp/depth
--preset tiny-crystal checks μP with Crystal's multipliers and init (embeddings x14.6, logits
x2.22/m, sigma_base 0.073, 1/head_dim), LayerNorm, biases and tied embeddings.

Single CPU process (or --device cuda); the default sweep takes under a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings


def parse(argv=None):
    from megatron_ext.training.coord_check import Setup

    d = Setup()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--widths", default=",".join(map(str, d.widths)), help="comma-separated hidden sizes")
    p.add_argument("--parametrizations", default=None,
                   help="comma-separated: sp, mup (default), or with --vary depth: mup, depth-mup (default)")
    p.add_argument("--preset", choices=["tiny", "tiny-crystal", "tiny-dclm"], default=d.preset,
                   help="model (tiny-crystal: μP only, with Crystal's multipliers; tiny-dclm: DCLM's gain-only "
                        "LayerNorm and full-width query/key norm)")
    p.add_argument("--vary", choices=["heads", "head-dim", "depth"], default=d.vary.replace("_", "-"),
                   help="grow width through the number of heads (head dim fixed) or the head dim (heads fixed), "
                        "or grow depth at the base width")
    p.add_argument("--depths", default=",".join(map(str, d.depths)), help="--vary depth: comma-separated layer counts")
    p.add_argument("--base-depth", type=int, default=d.base_depth, help="--vary depth: depth-μP's base number of layers")
    p.add_argument("--base-width", type=int, default=d.base_width, help="μP base hidden size")
    p.add_argument("--num-layers", type=int, default=d.num_layers)
    p.add_argument("--head-dim", type=int, default=d.head_dim, help="--vary heads: heads = width / head_dim")
    p.add_argument("--num-heads", type=int, default=d.num_heads, help="--vary head-dim: head_dim = width / heads")
    p.add_argument("--ffn-ratio", type=float, default=d.ffn_ratio)
    p.add_argument("--seq-length", type=int, default=d.seq_length)
    p.add_argument("--micro-batch-size", type=int, default=d.micro_batch_size)
    p.add_argument("--num-microbatches", type=int, default=d.num_microbatches)
    p.add_argument("--vocab-size", type=int, default=d.vocab_size)
    p.add_argument("--steps", type=int, default=d.steps, help="recorded forward passes (updates = steps - 1 seen)")
    p.add_argument("--lr", type=float, default=d.lr, help="Adam LR (μP: the base-width LR)")
    p.add_argument("--init-std", type=float, default=None,
                   help=f"SP init std = μP sigma_base (default: {d.init_std}; with tiny-crystal its 0.073)")
    p.add_argument("--adam-eps", type=float, default=d.adam_eps)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    opts = parse(argv)
    warnings.filterwarnings("ignore", module=r"megatron\.core.*")
    logging.getLogger("megatron.core").setLevel(logging.ERROR)
    from mup.coord_check import growing_modules, module_slopes, write_outputs

    from megatron_ext.platform import init_distributed
    from megatron_ext.training.coord_check import Setup, run

    init_std = opts.init_std if opts.init_std is not None else None if opts.preset == "tiny-crystal" else Setup.init_std
    setup = Setup(widths=tuple(int(w) for w in opts.widths.split(",")), base_width=opts.base_width,
                  vary=opts.vary.replace("-", "_"), head_dim=opts.head_dim, num_heads=opts.num_heads,
                  preset=opts.preset, num_layers=opts.num_layers, ffn_ratio=opts.ffn_ratio,
                  seq_length=opts.seq_length, micro_batch_size=opts.micro_batch_size,
                  num_microbatches=opts.num_microbatches, vocab_size=opts.vocab_size, steps=opts.steps,
                  lr=opts.lr, init_std=init_std, adam_eps=opts.adam_eps, seed=opts.seed,
                  depths=tuple(int(x) for x in opts.depths.split(",")), base_depth=opts.base_depth)
    by_depth = setup.vary == "depth"
    params = opts.parametrizations or ("mup,depth-mup" if by_depth else "sp,mup")
    platform = init_distributed(opts.device)
    if by_depth:
        print(f"coordinate check over depth ({setup.preset}): depths {list(setup.depths)} at width {setup.base_width} "
              f"(head_dim {setup.head_dim}), {setup.steps} steps at lr {setup.lr}, depth-μP base depth "
              f"{setup.base_depth}", flush=True)
    else:
        shape = f"head_dim {setup.head_dim}" if setup.vary == "heads" else f"{setup.num_heads} heads"
        print(f"coordinate check ({setup.preset}): widths {list(setup.widths)} through {setup.vary} ({shape}), "
              f"{setup.num_layers} layers, {setup.steps} steps at lr {setup.lr}, μP base width {setup.base_width}",
              flush=True)
    results = run(setup, tuple(params.split(",")), platform.device, progress=lambda line: print(line, flush=True))
    paths = write_outputs(results, opts.out, axis="depth" if by_depth else "width")

    window = max(1, setup.steps // 2)  # the verdict's: slopes of the activations averaged over the last half
    per_module, growing = module_slopes(results, window=window), growing_modules(results, window=window)
    slopes = {p: sum(s.values()) / len(s) for p, s in per_module.items()}
    modules = sorted(next(iter(per_module.values())))
    axis = "depth" if by_depth else "width"
    print(f"\nlog-log slope of mean |activation| (over the last {window} steps) vs {axis} (0 = {axis}-independent):")
    print(f"  {'module':<48}" + "".join(f"{p:>9}" for p in per_module))
    for module in modules:
        print(f"  {module:<48}" + "".join(f"{per_module[p].get(module, float('nan')):9.3f}" for p in per_module))
    print(f"  {'mean':<48}" + "".join(f"{slopes[p]:9.3f}" for p in per_module))
    for param, modules_growing in growing.items():
        verdict = ", ".join(sorted(modules_growing)) if modules_growing else "none"
        print(f"{param}: activations growing with {axis}: {verdict}")
    print("wrote " + ", ".join(v for k, v in paths.items() if k != "png_skipped"), flush=True)
    if growing.get("depth-mup" if by_depth else "mup"):
        sys.exit(1)
    return slopes


if __name__ == "__main__":
    main()
