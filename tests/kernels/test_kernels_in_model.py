"""A tiny model built with --kernels triton (interpreted on CPU) trains like the torch-reference model:
same loss and gradient norm at every iteration, tensor-parallel and sequence-parallel."""

import pytest
from launch import TINY_ARGS, read_log, run_pretrain

ITERS = 2
# Small enough for the Triton interpreter: 2 layers, 16 tokens, 2 micro-batches per step.
SMALL = ["--num-layers", 2, "--seq-length", 16, "--global-batch-size", 2]


def run(tmp_path, kernels: str, layout: list, preset: str):
    log = tmp_path / f"{kernels}.jsonl"
    env = {"TRITON_INTERPRET": "1"} if kernels == "triton" else {}
    run_pretrain(TINY_ARGS + ["--model-preset", preset, "--train-iters", ITERS, "--kernels", kernels,
                              "--log-json", log] + SMALL + layout, nproc=2, env=env)
    return read_log(log), read_log(log, "grad-norm")


@pytest.mark.parametrize("preset,layout", [
    ("tiny-gqa", ["--tensor-model-parallel-size", 2]),  # RMSNorm, half-split RoPE, GQA
    ("tiny-crystal", ["--tensor-model-parallel-size", 2, "--sequence-parallel"]),  # LayerNorm+bias, GPT-J RoPE
], ids=["llama-gqa-tp2", "crystal-tp2-sequence-parallel"])
def test_triton_model_matches_torch_model(preset, layout, tmp_path):
    triton_loss, triton_grad = run(tmp_path, "triton", layout, preset)
    torch_loss, torch_grad = run(tmp_path, "torch", layout, preset)
    assert sorted(triton_loss) == list(range(1, ITERS + 1))
    for it in torch_loss:
        assert triton_loss[it] == pytest.approx(torch_loss[it], rel=1e-5), f"loss at iteration {it}"
        assert triton_grad[it] == pytest.approx(torch_grad[it], rel=1e-4), f"grad norm at iteration {it}"
