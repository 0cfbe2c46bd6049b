"""A checkpoint's model, built for inference at any tensor/pipeline layout.

The model comes from the project's build path, not a copy of it: the checkpoint's recorded model identity
and tokenizer become flags (arguments.parse_config with --load, as a resumed run gets them), megatron-core's
GPTModel is built by models/gpt.py's build_gpt_chunk with the run's TransformerConfig, and the weights load
through dist_checkpointing, which reshards whatever layout the checkpoint was saved at. No DDP wrapper, no
optimizer: inference needs neither (a 7B model's gradient buffers alone would double its memory). The load
keeps checkpoint/dist.py's checks: the same shape comparison with the model identity and the same checksum
verification, with the same messages.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass
class InferenceModel:
    run: object          # RunConfig (arguments/configs.py), vocabulary set from the tokenizer
    config: object       # megatron-core TransformerConfig
    model: object        # this rank's pipeline stage: an unwrapped GPTModel in eval mode
    tokenizer: object    # megatron_ext.data.tokenizers tokenizer
    iteration: int       # the checkpoint iteration loaded
    saved_args: dict     # the flags the checkpoint recorded (its chat format, tokenizer path, ...)
    path: str            # the iteration directory loaded

    @property
    def vocab_size(self) -> int:
        """Ids the tokenizer can produce: the model's rows past it are padding, never sampled."""
        return self.run.model.vocab_size


def inference_argv(load: str, tp: int, pp: int, world_size: int, device: str, saved_args: dict,
                   extra_flags: list[str] = ()) -> list[str]:
    """pretrain_llama.py flags that describe the model of checkpoint LOAD at TP x PP (the rest of the world
    is data-parallel replicas). --mock-data stands in for a data set; the checkpoint's tokenizer flags are
    given as defaults by load_inference_model; EXTRA_FLAGS (pretrain_llama.py flags: another
    tokenizer, --no-verify-checkpoint) come last and win. Precision follows the checkpoint's (its weights' dtype)."""
    if world_size % (tp * pp):
        raise SystemExit(f"error: {world_size} processes cannot hold TP{tp} x PP{pp}: launch a multiple of {tp * pp} "
                         "processes (torchrun --nproc-per-node)")
    precision = ["--bf16"] if saved_args.get("bf16") else ["--fp16"] if saved_args.get("fp16") else []
    # The layer spec names the modules, hence the tensor names: a megatron-local checkpoint needs its own.
    if saved_args.get("layer_spec") not in (None, "llama"):
        precision += ["--layer-spec", saved_args["layer_spec"]]
    return [str(a) for a in ["--load", load, "--mock-data", "--device", device, "--train-iters", 1,
                             "--micro-batch-size", 1, "--global-batch-size", world_size // (tp * pp),
                             "--tensor-model-parallel-size", tp, "--pipeline-model-parallel-size", pp,
                             *precision, *extra_flags]]


def checkpoint_record(load: str, iteration: int | None = None) -> tuple[int, dict]:
    """(iteration, the flags it recorded), with checkpoint/dist.py's messages for a missing or damaged one."""
    from megatron_ext.checkpoint.dist import read_checkpoint_args
    from megatron_ext.checkpoint.paths import has_checkpoint

    if not os.path.isdir(load) or not has_checkpoint(load):
        raise SystemExit(f"error: --load {load} holds no checkpoint (no latest_checkpointed_iteration.txt): pass "
                         "the --save directory of a pretrain_llama.py run or of tools/convert_from_hf.py")
    iteration, common = read_checkpoint_args(load, iteration)
    return iteration, common.get("args") or {}


def load_inference_model(load: str, tp: int = 1, pp: int = 1, device: str = "auto",
                         extra_flags: list[str] = (), iteration: int | None = None) -> InferenceModel:
    """Parallel state for TP x PP, this rank's stage of LOAD's model, its weights and its tokenizer. Needs
    torch.distributed started (platform.init_distributed)."""
    from megatron.core import parallel_state

    from megatron_ext.arguments import parse_config
    from megatron_ext.arguments.from_checkpoint import checkpoint_tokenizer_flags
    from megatron_ext.data.build import build_vocab
    from megatron_ext.data.tokenizers import NullTokenizer
    from megatron_ext.models.config import transformer_config
    from megatron_ext.models.gpt import build_gpt_chunk
    from megatron_ext.models.parametrization import build_parametrization
    from megatron_ext.platform import resolve_device
    from megatron_ext.training.parallel import initialize_parallel

    world_size = torch.distributed.get_world_size()
    iteration, saved = checkpoint_record(load, iteration)
    argv = inference_argv(load, tp, pp, world_size, resolve_device(device), saved, extra_flags)
    # --mock-data would skip the checkpoint's tokenizer: give it as defaults (explicit flags still win).
    run = parse_config(argv, world_size=world_size, defaults=checkpoint_tokenizer_flags(load))
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    initialize_parallel(run.parallel, run.training.seed)
    tokenizer, vocab_size = build_vocab(run.data)
    if tokenizer is None:  # trained on mock data with no tokenizer: prompts are token ids ("5 17 3")
        tokenizer = NullTokenizer(vocab_size)
    run = run.with_vocab(vocab_size)
    config = transformer_config(run, on_cpu=run.parallel.device == "cpu",
                                mup_multipliers=build_parametrization(run.model).multipliers)
    model = build_gpt_chunk(config, run.model, run.compute.layer_spec, None)
    model.to(torch.device("cuda", torch.cuda.current_device()) if run.parallel.device == "cuda" else "cpu")
    path = load_weights(load, iteration, model, run)
    model.eval()
    return InferenceModel(run, config, model, tokenizer, iteration, saved, path)


def load_weights(load: str, iteration: int, model, run) -> str:
    """The model's tensors from LOAD's checkpoint ITERATION, resharded to this layout; returns its directory."""
    from megatron_ext.checkpoint.dist import load_model_weights

    return load_model_weights(load, iteration, [model], run)[1]
