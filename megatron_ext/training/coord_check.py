"""Coordinate check of the project's real model: megatron-core GPTModel built by our builders,
trained by our `train_step`, at several widths, under SP and under μP.

`mup.coord_check` is model-agnostic (hooks, slopes, plots); this module supplies the model side:
flags for one width, the build (same order as training/pretrain.py), which modules to watch, and
a training step that goes through megatron's schedule and optimizer. Single process (TP1, PP1):
the activations it measures do not depend on the layout.
"""

from __future__ import annotations

import gc
import re
from dataclasses import dataclass

import torch

from mup.coord_check import Results, record_coords

# Residual stream after the embedding and after each layer, the final norm, and the logits.
_WATCHED = re.compile(r"^(embedding|decoder\.layers\.\d+|decoder\.final_layernorm|output_layer)$")


@dataclass
class Setup:
    """What the sweep varies and what it keeps fixed. head_dim is fixed, so heads grow with width."""

    widths: tuple = (64, 128, 256, 512, 1024)
    base_width: int = 64         # μP base: at this width μP and SP are the same model
    num_layers: int = 2
    head_dim: int = 16
    ffn_ratio: float = 2.75      # LLaMA's 8/3 rounded as the tiny presets do (64 -> 176)
    seq_length: int = 64
    micro_batch_size: int = 4
    num_microbatches: int = 1
    vocab_size: int = 512
    steps: int = 4
    lr: float = 1e-2
    init_std: float = 0.02       # SP std and μP sigma_base
    adam_eps: float = 1e-8
    seed: int = 1234


def width_argv(setup: Setup, parametrization: str, width: int) -> list[str]:
    """pretrain_llama.py flags for one model of the sweep (LLaMA `tiny` preset, resized)."""
    if width % setup.head_dim:
        raise SystemExit(f"width {width} is not a multiple of head_dim {setup.head_dim}")
    argv = ["--model-preset", "tiny", "--device", "cpu", "--mock-data",
            "--num-layers", setup.num_layers, "--hidden-size", width,
            "--ffn-hidden-size", int(round(setup.ffn_ratio * width)),
            "--num-attention-heads", width // setup.head_dim, "--kv-channels", setup.head_dim,
            "--seq-length", setup.seq_length, "--max-position-embeddings", setup.seq_length,
            "--vocab-size", setup.vocab_size, "--micro-batch-size", setup.micro_batch_size,
            "--global-batch-size", setup.micro_batch_size * setup.num_microbatches,
            "--train-iters", setup.steps, "--seed", setup.seed, "--init-method-std", setup.init_std,
            # Constant LR, no decay, no clipping: nothing but the parametrization depends on width.
            "--lr", setup.lr, "--lr-decay-style", "constant", "--weight-decay", 0.0, "--clip-grad", 0.0,
            "--adam-eps", setup.adam_eps]
    if parametrization == "mup":
        argv += ["--use-mup", "--mup-base-hidden-size", setup.base_width, "--mup-base-init-std", setup.init_std]
    elif parametrization != "sp":
        raise SystemExit(f"unknown parametrization {parametrization!r}: use sp or mup")
    return [str(a) for a in argv]


def watched_module(name: str, module: torch.nn.Module) -> bool:
    return _WATCHED.match(name) is not None


def _ensure_parallel_state(args) -> None:
    """TP1/PP1 groups once per process; each width then only reseeds."""
    from megatron.core import parallel_state

    from megatron_ext.training.parallel import initialize_parallel, seed_everything

    if parallel_state.model_parallel_is_initialized():
        seed_everything(args.seed)
    else:
        initialize_parallel(args, args.seed)  # the flags carry ParallelConfig's fields


def _batches(args) -> list[list[dict]]:
    """One global batch per step, each a list of micro-batches: the same tokens at every width."""
    from megatron_ext.data.loader import MockGPTDataset, micro_batches

    dataset = MockGPTDataset(args.train_iters * args.global_batch_size, args.seq_length, args.vocab_size, args.seed)
    loader = micro_batches(dataset, 0, args.micro_batch_size, 0, 1)
    return [[next(loader) for _ in range(args.num_microbatches)] for _ in range(args.train_iters)]


def measure(argv: list[str], device: torch.device) -> dict:
    """Build the model that `argv` describes, train args.train_iters steps, and return
    {module: [mean |output| at step 0, 1, ...]} (step t: the forward before the t-th update)."""
    from megatron_ext.arguments import parse_args
    from megatron_ext.arguments.configs import RunConfig
    from megatron_ext.training.build import build_trainable
    from megatron_ext.training.loop import train_step

    args = parse_args(argv, world_size=1)
    _ensure_parallel_state(args)
    built = build_trainable(RunConfig.from_flags(args).with_vocab(args.vocab_size), device)
    chunks, optimizer, scheduler, config = built.model, built.optimizer, built.scheduler, built.config
    for chunk in chunks:
        chunk.train()

    def step(_model, batch):
        train_step(chunks, optimizer, scheduler, [iter(batch)], args)

    # Hooks go on the unwrapped GPTModel; they are added after build_model's embedding-multiplier
    # hook, so the embedding entry already includes the μP embedding multiplier.
    coords = record_coords(chunks[0].module, _batches(args), step, args.train_iters, module_filter=watched_module)
    # The μP logits multiplier is applied in the loss (training/step.py), after output_layer: scale
    # the output layer's numbers by it so "logits" is what the cross entropy sees.
    coords["logits"] = [v * config.logits_multiplier for v in coords.pop("output_layer")]
    del chunks, optimizer, scheduler
    gc.collect()
    return coords


def run(setup: Setup, parametrizations=("sp", "mup"), device: torch.device | None = None,
        progress=print) -> Results:
    """results[parametrization][width][module] = per-step mean |activation| (mup.coord_check)."""
    device = device or torch.device("cpu")
    results: Results = {}
    for param in parametrizations:
        for width in setup.widths:
            results.setdefault(param, {})[width] = coords = measure(width_argv(setup, param, width), device)
            if progress:
                progress(f"  {param:>3} width {width:5d}: logits {coords['logits'][-1]:.4g}, "
                         f"last layer {coords[f'decoder.layers.{setup.num_layers - 1}'][-1]:.4g}")
    return results
