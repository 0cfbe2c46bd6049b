"""The project's layer spec (own norm, rotary attention and SwiGLU modules) computes what megatron-core's
stock local spec computes: the same fp32 loss at every iteration, LLaMA-GQA and Crystal shapes
(partial interleaved RoPE, LayerNorm with bias, biases, tied embeddings, μP multipliers)."""

import pytest
from launch import TINY_ARGS, read_log, run_pretrain


@pytest.mark.parametrize("preset", ["tiny-gqa", "tiny-crystal"])
def test_llama_spec_matches_megatron_local_spec(preset, tmp_path):
    losses = {}
    for spec in ("llama", "megatron-local"):
        log = tmp_path / f"{spec}.jsonl"
        run_pretrain(TINY_ARGS + ["--model-preset", preset, "--train-iters", 3, "--layer-spec", spec,
                                  "--log-json", log])
        losses[spec] = read_log(log)
    assert sorted(losses["llama"]) == [1, 2, 3]
    for it, reference in losses["megatron-local"].items():
        assert losses["llama"][it] == pytest.approx(reference, rel=1e-5), f"iteration {it}"
