"""Fine-tuning through pretrain_llama.py: the loss (mean over the global batch's trained tokens) is the same
at every layout and micro-batch size, on conversations blended with plain text; --pretrained-checkpoint
starts a run at another layout, at iteration 0, growing the vocabulary for added tokens (bf16)."""

import json

import pytest
import torch
from launch import read_log, start_pretrain, stored_tensors, wait_all
from sft_files import random_conversations, write_conversations, write_text

VOCAB = 256  # NullTokenizer --vocab-size 255: ids 0..254 plus its EOD
GROWN = 300
COMMON = ["--model-preset", "tiny", "--device", "cpu", "--tokenizer-type", "NullTokenizer", "--seq-length", "64",
          "--global-batch-size", "8", "--lr", "2e-2", "--lr-decay-style", "constant", "--log-interval", "1",
          "--split", "100,0,0", "--seed", "7"]
LAYOUTS = {  # name: (processes, flags); micro-batch sizes 1, 2 and 4 among them
    "single": (1, ["--micro-batch-size", "1"]),
    "tp2": (2, ["--micro-batch-size", "4", "--tensor-model-parallel-size", "2"]),
    "pp2": (2, ["--micro-batch-size", "2", "--pipeline-model-parallel-size", "2"]),
    "dp2": (2, ["--micro-batch-size", "4", "--use-distributed-optimizer"]),
    "tp2pp2": (4, ["--micro-batch-size", "1", "--tensor-model-parallel-size", "2",
                   "--pipeline-model-parallel-size", "2", "--sequence-parallel"]),
}
ITERS = 3


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft_layouts")
    convs = write_conversations(str(root / "convs"), random_conversations(120, VOCAB - 1, seed=1, max_len=50), VOCAB)
    text = write_text(str(root / "text"), 30, VOCAB - 1, seed=2)
    data = ["--data-path", "0.7", convs, "0.3", text, "--vocab-size", str(VOCAB - 1), "--train-iters", str(ITERS)]
    procs = {name: start_pretrain(COMMON + data + flags + ["--log-json", str(root / f"{name}.jsonl")]
                                  + (["--save", str(root / "tp2_ckpt")] if name == "tp2" else [])
                                  + (["--save", str(root / "dp2_ckpt"), "--save-interval", "2"] if name == "dp2" else []),
                                  nproc=n)
             for name, (n, flags) in LAYOUTS.items()}
    # Conversations with nothing to train (every mask 0): no loss, no NaN, and no optimizer step.
    silent = write_conversations(str(root / "silent"), [(ids, [0] * len(ids)) for ids, _ in
                                                        random_conversations(20, VOCAB - 1, seed=3)], VOCAB)
    procs["untrained"] = start_pretrain(COMMON + ["--data-path", silent, "--vocab-size", str(VOCAB - 1),
                                                  "--train-iters", "2", "--micro-batch-size", "2", "--save",
                                                  str(root / "untrained"), "--save-interval", "1", "--log-json",
                                                  str(root / "untrained.jsonl")])
    outputs = wait_all(procs)
    at2 = root / "dp2_ckpt" / "at2"  # the DP2 run's checkpoint at iteration 2, as its own --load directory
    at2.mkdir()
    (root / "dp2_ckpt" / "iter_0000002").rename(at2 / "iter_0000002")
    (at2 / "latest_checkpointed_iteration.txt").write_text("2")
    # Fine-tune the TP2 checkpoint at PP2 in bf16 with 44 more token ids, at LR 0 (so the saved weights are the
    # loaded ones): the converted rows must be the old rows, the mean of them, and zero padding.
    grown = start_pretrain(COMMON + ["--data-path", convs, "--vocab-size", str(GROWN - 1), "--train-iters", "1",
                                     "--lr", "0", "--bf16", "--micro-batch-size", "2", "--pipeline-model-parallel-size",
                                     "2", "--pretrained-checkpoint", str(root / "tp2_ckpt"), "--save",
                                     str(root / "grown"), "--log-json", str(root / "grown.jsonl")], nproc=2)
    # The DP2 run again from its iteration-2 checkpoint: --load resumes it (--pretrained-checkpoint is then ignored).
    resumed = start_pretrain(COMMON + data + LAYOUTS["dp2"][1] + [
        "--load", str(root / "dp2_ckpt" / "at2"), "--pretrained-checkpoint", str(root / "tp2_ckpt"),
        "--log-json", str(root / "resumed.jsonl")], nproc=2)
    outputs.update(wait_all({"grown": grown, "resumed": resumed}))
    return root, outputs


def test_sft_loss_is_equal_at_every_layout_and_micro_batch_size(runs):
    root, outputs = runs
    assert "conversations" in outputs["single"] and "packing efficiency" in outputs["single"]
    reference = read_log(root / "single.jsonl")
    assert sorted(reference) == list(range(1, ITERS + 1))
    for name in LAYOUTS:
        losses = read_log(root / f"{name}.jsonl")
        for iteration, loss in reference.items():
            assert losses[iteration] == pytest.approx(loss, rel=2e-5), (name, iteration)
    tokens = [json.loads(line) for line in (root / "single.jsonl").read_text().splitlines()]
    assert all(0 <= r["padding-fraction"] < 0.5 and r["trained-tokens-per-second"] > 0 for r in tokens if "lm loss" in r)


def test_pretrained_checkpoint_loads_at_another_layout_from_iteration_zero_and_grows_the_vocabulary(runs):
    root, outputs = runs
    assert "started from --pretrained-checkpoint" in outputs["grown"]
    assert f"vocabulary grown from {VOCAB} to {GROWN} ids" in outputs["grown"]
    assert sorted(read_log(root / "grown.jsonl")) == [1]  # iteration counting restarted
    assert (root / "grown" / "iter_0000001").is_dir()
    source = stored_tensors(root / "tp2_ckpt" / "iter_0000003")
    grown = stored_tensors(root / "grown" / "iter_0000001")
    vocabulary_tensors = [n for n in ("embedding.word_embeddings.weight", "output_layer.weight") if n in source]
    assert vocabulary_tensors
    for name in vocabulary_tensors:
        old, new = source[name].float(), grown[name].float()
        assert new.shape[0] == 384 and old.shape[0] == VOCAB
        torch.testing.assert_close(new[:VOCAB], old, rtol=1e-2, atol=1e-2)  # bf16 storage of the fp32 rows
        mean = old.mean(dim=0)
        for row in range(VOCAB, GROWN):
            torch.testing.assert_close(new[row], mean, rtol=1e-2, atol=1e-3)
        assert new[GROWN:].abs().max() == 0
    for name, tensor in source.items():  # every other weight loaded as it was saved
        if name.startswith(("decoder.", "embedding.", "output_layer")) and name not in vocabulary_tensors:
            torch.testing.assert_close(grown[name].float(), tensor.float(), rtol=1e-2, atol=1e-2)


def test_a_fine_tuning_run_resumes_exactly_from_its_own_checkpoint(runs):
    root, outputs = runs
    assert "loaded checkpoint" in outputs["resumed"] and "started from --pretrained-checkpoint" not in outputs["resumed"]
    resumed, uninterrupted = read_log(root / "resumed.jsonl"), read_log(root / "dp2.jsonl")
    assert sorted(resumed) == [3]
    assert resumed[3] == uninterrupted[3]  # same data position, optimizer, schedule: bit for bit


def test_a_batch_without_trained_tokens_logs_no_loss_and_takes_no_step(runs):
    root, outputs = runs
    records = [json.loads(line) for line in (root / "untrained.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [1, 2] and not any("lm loss" in r for r in records)
    lines = [line for line in outputs["untrained"].splitlines() if line.startswith(" iteration")]
    assert len(lines) == 2 and all("lm loss: n/a (no trained token)" in line and "nan" not in line.lower()
                                   for line in lines)
    first, second = (stored_tensors(root / "untrained" / f"iter_000000{i}") for i in (1, 2))
    weights = [name for name in first if name.startswith(("decoder.", "embedding."))]
    assert weights and all(torch.equal(first[name], second[name]) for name in weights)
