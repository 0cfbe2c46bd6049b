"""A weights-only load (a converted HF model, --finetune, --no-load-optim) keeps the loaded weights in
bf16 and fp16, not only in fp32: the optimizer's fp32 main copy must be refreshed from them, or the
first step writes the random initialisation back over the model.

Every training window is the same sequence and the learning rate is 0, so a correct run logs the same
loss at every iteration, and that loss is the source model's own (transformers' LlamaForCausalLM on
the same tokens)."""

import numpy as np
import pytest
import torch
from conversion_helpers import random_llama
from launch import read_losses, start_pretrain, wait_all

from megatron_ext.checkpoint.convert import hf_to_megatron

SEQ, ITERS = 32, 4
# What a half-precision forward may differ by from transformers' fp32 forward of the same weights; a
# freshly initialised model's loss on this sequence differs from the source model's by far more.
TOLERANCE = {"bf16": 0.05, "fp16": 0.01}
RUNS = {  # name -> (precision flag, other flags, processes)
    "bf16": ("--bf16", [], 1),
    "bf16-finetune": ("--bf16", ["--finetune"], 1),
    "bf16-no-load-optim": ("--bf16", ["--no-load-optim"], 1),
    "fp16": ("--fp16", ["--initial-loss-scale", 1], 1),
    # The GPU configuration: DP2, distributed optimizer (its own main-param shards), both overlaps.
    "bf16-dp2-distributed-optimizer": ("--bf16", ["--use-distributed-optimizer", "--overlap-grad-reduce",
                                                  "--overlap-param-gather", "--global-batch-size", 2], 2),
}


def periodic_dataset(prefix, period: list[int], repeats: int) -> None:
    """One document repeating `period` (SEQ tokens): every SEQ+1-token training window is the same."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    tokens = np.array(period * repeats + period[:1], dtype=np.uint16)
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
    builder.add_document(torch.from_numpy(tokens.astype(np.int64)), [len(tokens)])
    builder.finalize(f"{prefix}.idx")


def window_loss(model, period: list[int]) -> torch.Tensor:
    window = torch.tensor([period + period[:1]])
    return torch.nn.functional.cross_entropy(model(window[:, :-1]).logits[0].float(), window[0, 1:])


def fit_source_model(hf_dir, period: list[int]) -> float:
    """A few Adam steps on the sequence, so the source model's loss is far below a random model's
    ln(1000) = 6.9; returns its fp32 loss on the window, as transformers computes it."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(15):
        optimizer.zero_grad()
        window_loss(model, period).backward()
        optimizer.step()
    model.save_pretrained(hf_dir)
    with torch.no_grad():
        return window_loss(model.eval(), period).item()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights_only")
    period = [int(t) for t in np.random.default_rng(0).integers(3, 1000, SEQ)]
    random_llama(root / "hf", tied=False)
    expected = fit_source_model(root / "hf", period)
    assert expected < 4.0, expected  # distinguishable from a fresh initialisation
    hf_to_megatron(str(root / "hf"), str(root / "converted"), progress=False)
    periodic_dataset(root / "periodic", period, repeats=64)
    # No tokenizer flags: the converted checkpoint carries its tokenizer (as the converter's hint promises).
    common = ["--load", root / "converted", "--data-path", root / "periodic", "--split", "100,0,0",
              "--seq-length", SEQ, "--micro-batch-size", 1, "--global-batch-size", 1, "--train-iters", ITERS,
              "--lr", 0, "--min-lr", 0, "--lr-decay-style", "constant", "--device", "cpu", "--log-interval", 1]
    wait_all({name: start_pretrain(common + [precision, "--log-json", root / f"{name}.jsonl"] + flags, nproc=nproc)
              for name, (precision, flags, nproc) in RUNS.items()})
    losses = {name: read_losses(root / f"{name}.jsonl") for name in RUNS}
    return losses, expected


@pytest.mark.parametrize("name", list(RUNS))
def test_loaded_weights_survive_training_steps(runs, name):
    losses, expected = runs
    logged = losses[name]
    assert sorted(logged) == list(range(1, ITERS + 1))
    assert len(set(logged.values())) == 1, f"{name}: the loss changed with lr 0, the weights were replaced: {logged}"
    precision = name.split("-")[0]
    assert logged[1] == pytest.approx(expected, abs=TOLERANCE[precision]), (name, logged[1], expected)


def test_load_takes_the_tokenizer_from_the_checkpoint(tmp_path):
    """--load of a converted model needs no tokenizer flags; a moved checkpoint uses the tokenizer it
    carries; explicit tokenizer flags win."""
    from megatron_ext.arguments import parse_args

    random_llama(tmp_path / "hf", tied=False)
    hf_to_megatron(str(tmp_path / "hf"), str(tmp_path / "converted"), progress=False)
    run = ["--data-path", "corpus_text_document", "--train-iters", "1"]
    args = parse_args(["--load", str(tmp_path / "converted")] + run, world_size=1)
    assert (args.tokenizer_type, args.tokenizer_model) == ("HuggingFaceTokenizer", str(tmp_path / "converted" / "tokenizer"))
    (tmp_path / "converted").rename(tmp_path / "moved")
    args = parse_args(["--load", str(tmp_path / "moved")] + run, world_size=1)
    assert args.tokenizer_model == str(tmp_path / "moved" / "tokenizer")
    args = parse_args(["--load", str(tmp_path / "moved"), "--tokenizer-model", "other.model"] + run, world_size=1)
    assert (args.tokenizer_type, args.tokenizer_model) == ("SentencePieceTokenizer", "other.model")
