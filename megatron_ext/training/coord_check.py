"""Coordinate check of the project's real model: megatron-core GPTModel built by our builders,
trained by our `train_step`, at several widths, under SP and under μP.

`mup.coord_check` is model-agnostic (hooks, slopes, plots); this module supplies the model side:
flags for one width, the build (same order as training/pretrain.py), which modules to watch, and
a training step that goes through megatron's schedule and optimizer. Single process (TP1, PP1):
the activations it measures do not depend on the layout.

Width grows either through the number of heads (head dim fixed) or through the head dim (heads
fixed). Only the second shows whether the attention scale is right: μP's 1/head_dim keeps the
attention logits flat as q and k align during training, 1/sqrt(head_dim) lets them grow.

`vary="depth"` is the coordinate check over depth: width fixed at the μP base width (so width-μP is
the identity), the number of layers grows, under μP without depth scaling ("mup") and with depth-μP
("depth-mup": --mup-base-num-layers base_depth). The results are keyed by depth; the last layer's
modules are renamed `decoder.layers.last...` so they compare across depths.
"""

from __future__ import annotations

import gc
import re
from dataclasses import dataclass

import torch

from mup.coord_check import Results, output_tensor, record_coords

# Recorded, by module name in the unwrapped GPTModel: the residual stream after the embedding and after
# each layer, every linear layer's output, the attention logits (at the core attention's query/key probe),
# the final norm and the output layer.
_WATCHED = re.compile(r"^(embedding|decoder\.final_layernorm|output_layer"
                      r"|decoder\.layers\.\d+"
                      r"|decoder\.layers\.\d+\.self_attention\.(linear_qkv|linear_proj|core_attention\.query_key_probe)"
                      r"|decoder\.layers\.\d+\.mlp\.(linear_fc1|linear_fc2))$")
_PROBE = ".core_attention.query_key_probe"


@dataclass
class Setup:
    """What the sweep varies and what it keeps fixed."""

    widths: tuple = (64, 128, 256, 512, 1024)
    base_width: int = 64         # μP base hidden size
    vary: str = "heads"          # width through "heads" (head_dim fixed) or "head_dim" (num_heads fixed); "depth"
    head_dim: int = 16           # vary="heads": heads = width / head_dim
    num_heads: int = 4           # vary="head_dim": head_dim = width / num_heads
    preset: str = "tiny"         # "tiny-crystal": Crystal's μP multipliers, LayerNorm, biases, tied embeddings
    num_layers: int = 2
    depths: tuple = (2, 4, 8, 16)  # vary="depth": numbers of layers, at width base_width
    base_depth: int = 2            # vary="depth": depth-μP's --mup-base-num-layers
    ffn_ratio: float = 2.75      # LLaMA's 8/3 rounded as the tiny presets do (64 -> 176)
    # Few keys per query and few tokens per step: q and k then align within a few steps, as μP's
    # 1/head_dim assumes (with many, their random part dominates the logits for longer than a short run).
    seq_length: int = 16
    micro_batch_size: int = 4
    num_microbatches: int = 1
    vocab_size: int = 512
    steps: int = 8
    lr: float = 1e-2
    init_std: float | None = 0.02  # SP std and μP sigma_base; None: the preset's (tiny-crystal: 0.073)
    adam_eps: float = 1e-8
    seed: int = 1234


def heads_and_head_dim(setup: Setup, width: int) -> tuple[int, int]:
    if setup.vary in ("heads", "depth"):  # the depth sweep's width: base_width / head_dim heads
        heads, head_dim = width // setup.head_dim, setup.head_dim
    elif setup.vary == "head_dim":
        heads, head_dim = setup.num_heads, width // setup.num_heads
    else:
        raise SystemExit(f"unknown vary={setup.vary!r}: use heads or head_dim")
    if heads * head_dim != width:
        raise SystemExit(f"width {width} is not {heads} heads x head_dim {head_dim}")
    return heads, head_dim


def width_argv(setup: Setup, parametrization: str, width: int, num_layers: int | None = None) -> list[str]:
    """pretrain_llama.py flags for one model of the sweep (setup.preset, resized)."""
    heads, head_dim = heads_and_head_dim(setup, width)
    argv = ["--model-preset", setup.preset, "--device", "cpu", "--mock-data",
            "--num-layers", num_layers or setup.num_layers, "--hidden-size", width,
            "--ffn-hidden-size", int(round(setup.ffn_ratio * width)),
            "--num-attention-heads", heads, "--kv-channels", head_dim,
            "--seq-length", setup.seq_length, "--max-position-embeddings", setup.seq_length,
            "--vocab-size", setup.vocab_size, "--micro-batch-size", setup.micro_batch_size,
            "--global-batch-size", setup.micro_batch_size * setup.num_microbatches,
            "--train-iters", setup.steps, "--seed", setup.seed,
            # Constant LR, no decay, no clipping: nothing but the parametrization depends on width.
            "--lr", setup.lr, "--lr-decay-style", "constant", "--weight-decay", 0.0, "--clip-grad", 0.0,
            "--adam-eps", setup.adam_eps,
            # one init for SP across presets (tiny-dclm's open_lm init would not compare; μP sets its own)
            "--init-method", "normal"]
    if setup.init_std is not None:
        argv += ["--init-method-std", setup.init_std]
    if parametrization in ("mup", "depth-mup"):
        # μP scales attention scores by 1/head_dim (the tiny preset leaves that off).
        argv += ["--use-mup", "--mup-base-hidden-size", setup.base_width, "--mup-scale-qk-dot-by-d"]
        if setup.init_std is not None:
            argv += ["--mup-base-init-std", setup.init_std]
        if parametrization == "depth-mup":
            argv += ["--mup-base-num-layers", setup.base_depth]
    elif parametrization != "sp" or setup.preset == "tiny-crystal":
        raise SystemExit(f"parametrization {parametrization!r} with preset {setup.preset}: use sp or mup "
                         "(tiny-crystal is μP only)")
    return [str(a) for a in argv]


def depth_argv(setup: Setup, parametrization: str, depth: int) -> list[str]:
    """One model of the depth sweep: the base width, `depth` layers."""
    if parametrization not in ("mup", "depth-mup"):
        raise SystemExit(f"the depth sweep compares mup and depth-mup, not {parametrization!r}")
    return width_argv(setup, parametrization, setup.base_width, num_layers=depth)


def last_layer_renamed(coords: dict, num_layers: int) -> dict:
    """decoder.layers.<last>... -> decoder.layers.last...: the modules that compare across depths."""
    prefix = f"decoder.layers.{num_layers - 1}"
    return {("decoder.layers.last" + name[len(prefix):] if name == prefix or name.startswith(prefix + ".")
             else name): values for name, values in coords.items()}


def watched_module(name: str, module: torch.nn.Module) -> bool:
    return _WATCHED.match(name) is not None


def attention_logits(query: torch.Tensor, key: torch.Tensor, softmax_scale: float) -> torch.Tensor:
    """The pre-softmax scores softmax_scale x q.k of every query and the keys it sees (causal), from the
    rotated [seq, batch, heads, head_dim] query and [seq, batch, groups, head_dim] key."""
    q, k = (t.detach().float().permute(1, 2, 0, 3) for t in (query, key))  # [batch, heads, seq, head_dim]
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # GQA: a key head serves several query heads
    scores = softmax_scale * (q @ k.transpose(-1, -2))
    visible = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()
    return scores[..., visible]


def _activation(softmax_scales: dict):
    """Each watched module's output; the attention logits at the query/key probes."""
    def activation(name, output):
        if name in softmax_scales:
            return attention_logits(*output, softmax_scales[name])
        return output_tensor(name, output)
    return activation


def _display_name(name: str) -> str:
    """decoder.layers.0.self_attention.attention_logits, and "logits" for the output layer."""
    return "logits" if name == "output_layer" else name.replace(_PROBE, ".attention_logits")


def _ensure_parallel_state(args) -> None:
    """TP1/PP1 groups once per process; each width then only reseeds."""
    from megatron.core import parallel_state

    from megatron_ext.training.parallel import initialize_parallel, seed_everything

    if parallel_state.model_parallel_is_initialized():
        seed_everything(args.seed)
    else:
        initialize_parallel(args, args.seed)  # the flags carry ParallelConfig's fields


def _batch(args) -> list[dict]:
    """One global batch (a list of micro-batches), trained on at every step: the same tokens at every
    width, and at every step the same input, so what changes from step to step is the model alone."""
    from megatron_ext.data.loader import MockGPTDataset, micro_batches

    dataset = MockGPTDataset(args.global_batch_size, args.seq_length, args.vocab_size, args.seed)
    loader = micro_batches(dataset, 0, args.micro_batch_size, 0, 1)
    return [next(loader) for _ in range(args.num_microbatches)]


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
    chunks, optimizer, scheduler = built.model, built.optimizer, built.scheduler
    for chunk in chunks:
        chunk.train()

    def step(_model, batch):
        train_step(chunks, optimizer, scheduler, [iter(batch)], args)

    # Hooks go on the unwrapped GPTModel; they are added after build_model's embedding-multiplier
    # hook, so the embedding entry already includes the μP embedding multiplier.
    model = chunks[0].module
    softmax_scales = {name + ".query_key_probe": module.softmax_scale for name, module in model.named_modules()
                      if hasattr(module, "query_key_probe")}
    recorded = record_coords(model, [_batch(args)], step, args.train_iters, module_filter=watched_module,
                             activation=_activation(softmax_scales))
    # "logits" already carries μP's output multiplier: the model's own output-layer hook (models/gpt.py) runs
    # before the recording hook.
    coords = {_display_name(name): values for name, values in recorded.items()}
    del chunks, optimizer, scheduler, model
    gc.collect()
    return coords


def run(setup: Setup, parametrizations=("sp", "mup"), device: torch.device | None = None,
        progress=print) -> Results:
    """results[parametrization][width][module] = per-step mean |activation| (mup.coord_check); with
    vary="depth", results[parametrization][depth][module]."""
    device = device or torch.device("cpu")
    results: Results = {}
    if setup.vary == "depth":
        for param in parametrizations:
            for depth in setup.depths:
                coords = last_layer_renamed(measure(depth_argv(setup, param, depth), device), depth)
                results.setdefault(param, {})[depth] = coords
                if progress:
                    progress(f"  {param:>9} depth {depth:3d}: logits {coords['logits'][-1]:.4g}, "
                             f"last layer {coords['decoder.layers.last'][-1]:.4g}")
        return results
    for param in parametrizations:
        for width in setup.widths:
            results.setdefault(param, {})[width] = coords = measure(width_argv(setup, param, width), device)
            if progress:
                progress(f"  {param:>3} width {width:5d}: logits {coords['logits'][-1]:.4g}, "
                         f"last layer {coords[f'decoder.layers.{setup.num_layers - 1}'][-1]:.4g}")
    return results
