"""Acceptance of the model identity: each tiny preset (LLaMA and CrystalCoder layouts, μP with bases that are
not the defaults, a LLaMA-layout μP model whose export folds multipliers and interleaved RoPE into the weights)
trains and saves, exports to HF, imports back and reloads to train again; the identity is equal field by field
at every step, and the re-imported weights equal the trained ones. (Full-size presets are checked at the
config level in test_model_identity.py: their weights do not fit a CI machine.)"""

import dataclasses
import json

import pytest
import torch
from launch import stored_tensors, start_pretrain, wait_all

from megatron_ext.arguments import parse_args
from megatron_ext.checkpoint import hf_crystalcoder, hf_llama
from megatron_ext.checkpoint.convert import hf_to_megatron, megatron_to_hf, read_common
from megatron_ext.checkpoint.hf_arch import restore_identity
from megatron_ext.models.identity import ModelIdentity

RUN = ["--mock-data", "--device", "cpu", "--micro-batch-size", 1, "--global-batch-size", 2, "--lr", "1e-3",
       "--log-interval", 1, "--seed", 3]
BASES = ["--mup-base-ffn-hidden-size", 88, "--mup-base-num-attention-heads", 2, "--mup-base-init-std", 0.05,
         "--mup-embeddings-scale", 3.5, "--mup-output-alpha", 0.7, "--make-vocab-size-divisible-by", 64]
CASES = {
    "tiny": ["--model-preset", "tiny"],
    "tiny-gqa": ["--model-preset", "tiny-gqa"],
    "tiny-crystal+bases": ["--model-preset", "tiny-crystal"] + BASES,
    "tiny+mup-folded": ["--model-preset", "tiny", "--use-mup", "--mup-base-hidden-size", 32, "--mup-scale-qk-dot-by-d",
                        "--rotary-interleaved", "--tie-embeddings-and-output-weights"] + BASES,
}


def checkpoint_identity(root) -> ModelIdentity:
    return ModelIdentity.from_checkpoint(read_common(str(root), None)[2])


def model_weights(iteration_dir) -> dict:
    return {k: v for k, v in stored_tensors(iteration_dir).items() if not k.startswith(("optimizer", "rng"))}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("identity")
    procs = {name: start_pretrain(flags + RUN + ["--train-iters", 1, "--save", root / name / "trained"])
             for name, flags in CASES.items()}
    wait_all(procs)
    return root


def test_identity_is_kept_through_checkpoint_hf_and_reload(trained):
    reloads = {}
    for name, flags in CASES.items():
        expected = parse_args([str(a) for a in flags + RUN + ["--train-iters", 1]], world_size=1).model_identity
        expected = expected.replace(vocab_size=512)  # mock data: the preset's --vocab-size
        steps = {"trained": checkpoint_identity(trained / name / "trained")}
        hf = megatron_to_hf(str(trained / name / "trained"), str(trained / name / "hf"), dtype=torch.float32,
                            progress=False)
        config = json.loads((trained / name / "hf" / "config.json").read_text())
        fmt = hf_crystalcoder if expected.layer_norm else hf_llama
        steps["hf config.json"] = restore_identity(fmt.identity_from_config(config), config, fmt.EXPRESSED)
        hf_to_megatron(hf, str(trained / name / "imported"), progress=False)
        steps["imported"] = checkpoint_identity(trained / name / "imported")
        for step, identity in steps.items():
            assert dataclasses.asdict(identity) == dataclasses.asdict(expected), f"{name}: {step}"
        # The import undoes what the export folded in: the same weights (fp32 rounding of the μP folds).
        before = model_weights(trained / name / "trained" / "iter_0000001")
        after = model_weights(trained / name / "imported" / "iter_0000000")
        assert sorted(before) == sorted(after), name
        for key, tensor in before.items():
            assert torch.allclose(tensor, after[key], rtol=1e-6, atol=1e-7), f"{name}: {key}"
        reloads[name] = start_pretrain(["--load", trained / name / "imported", "--save", trained / name / "again",
                                        "--train-iters", 2] + RUN)
    wait_all(reloads)
    for name, flags in CASES.items():
        expected = checkpoint_identity(trained / name / "trained")
        assert dataclasses.asdict(checkpoint_identity(trained / name / "again")) == dataclasses.asdict(expected), name
