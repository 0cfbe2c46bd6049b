"""torchrun worker for the conversion tests: for each job, build the Megatron model at a TP/PP layout
with the flags recorded in a checkpoint's args, load the checkpoint, run a forward on fixed tokens and
save the full-vocabulary logits (μP multiplier applied, gathered across TP, padding dropped).

    torchrun --nproc-per-node 4 conversion_logits_worker.py JOBS.json
JOBS.json: [{"ckpt": DIR, "tp": 2, "pp": 1, "sp": false, "tokens": [[...]], "out": FILE.pt}, ...]; with more
processes than TP x PP the rest are data-parallel replicas computing the same thing.
"""

import json
import sys
import warnings

import torch


def model_argv(ckpt: str, tp: int, pp: int, world_size: int, sp: bool = False) -> list[str]:
    """pretrain_llama.py flags that build the model recorded in checkpoint CKPT (its model identity)."""
    return [str(a) for a in ["--load", ckpt, "--mock-data", "--device", "cpu", "--train-iters", 1,
                             "--micro-batch-size", 1, "--global-batch-size", world_size // (tp * pp),
                             "--tensor-model-parallel-size", tp, "--pipeline-model-parallel-size", pp]
            + (["--sequence-parallel"] if sp else [])]


def run_job(job: dict, world_size: int) -> None:
    from megatron.core import dist_checkpointing, parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.tensor_parallel.mappings import gather_from_tensor_model_parallel_region

    from megatron_ext.arguments import parse_config
    from megatron_ext.checkpoint.convert import read_common
    from megatron_ext.models.config import transformer_config
    from megatron_ext.models.gpt import build_gpt_chunk
    from megatron_ext.models.parametrization import build_parametrization
    from megatron_ext.training.parallel import initialize_parallel
    from megatron_ext.training.step import language_model_logits

    _, directory, _ = read_common(job["ckpt"], None)
    run = parse_config(model_argv(job["ckpt"], job["tp"], job["pp"], world_size, job.get("sp", False)),
                       world_size=world_size)
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    initialize_parallel(run.parallel, run.training.seed)
    run = run.with_vocab(run.data.vocab_size)
    identity = run.model
    config = transformer_config(run, on_cpu=True, mup_multipliers=build_parametrization(identity).multipliers)
    model = build_gpt_chunk(config, identity, run.compute.layer_spec, None)
    model.eval()
    loaded = dist_checkpointing.load({"model0": model.sharded_state_dict()}, directory)
    model.load_state_dict(loaded["model0"], strict=True)

    tokens = torch.tensor(job["tokens"], dtype=torch.long)
    batch = {"tokens": tokens, "position_ids": torch.arange(tokens.shape[1]).expand_as(tokens)}

    def forward_step(data_iterator, chunk):
        data = next(data_iterator)
        output = chunk(data["tokens"], data["position_ids"], None)

        def collect(logits):
            full = gather_from_tensor_model_parallel_region(language_model_logits(logits, config, identity.vocab_size))
            return full.sum() * 0.0, {"logits": full[..., :identity.vocab_size].detach()}
        return output, collect

    with torch.no_grad():
        results = get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=iter([batch]), model=model, num_microbatches=1,
            seq_length=tokens.shape[1], micro_batch_size=tokens.shape[0], forward_only=True)
    if torch.distributed.get_rank() == world_size - 1:  # last stage, last TP and DP rank
        torch.save(results[0]["logits"], job["out"])
    torch.distributed.barrier()


def main(jobs_file: str) -> None:
    warnings.filterwarnings("ignore")
    from megatron_ext.platform import init_distributed

    platform = init_distributed("cpu")
    with open(jobs_file) as f:
        jobs = json.load(f)
    try:
        for job in jobs:
            run_job(job, platform.world_size)
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
