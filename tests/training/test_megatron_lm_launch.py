"""A Megatron-LM LLaMA launch (the flags of examples/llama/train_llama3_8b_h100_fp8.sh that
docs/megatron-lm-flags.md marks supported or mapped, scaled down) runs unchanged: 2 iterations on 2 CPU
processes (TP2, sequence parallel, distributed optimizer), then the same command again resumes from
--load and says what it loaded."""

import re

from launch import run_pretrain
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from megatron_ext.arguments import parse_args


def megatron_lm_launch(tmp_path):
    return [
        # MODEL_ARGS
        "--use-mcore-models", "--num-layers", 2, "--hidden-size", 64, "--ffn-hidden-size", 128,
        "--num-attention-heads", 4, "--group-query-attention", "--num-query-groups", 2, "--kv-channels", 16,
        "--seq-length", 32, "--max-position-embeddings", 32, "--position-embedding-type", "rope",
        "--no-position-embedding", "--rotary-base", 1000000, "--rotary-percent", 1.0,
        "--attention-dropout", 0.1, "--hidden-dropout", 0.1, "--swiglu", "--init-method-std", 0.0134,
        "--normalization", "RMSNorm", "--norm-epsilon", 1e-5, "--transformer-impl", "local",
        "--untie-embeddings-and-output-weights", "--disable-bias-linear",
        # TRAINING_ARGS
        "--micro-batch-size", 1, "--global-batch-size", 4, "--train-samples", 8, "--lr-warmup-samples", 4,
        "--lr", 0.00015, "--min-lr", 0.00001, "--lr-decay-style", "cosine", "--clip-grad", 1.0,
        "--weight-decay", 0.1, "--adam-beta1", 0.9, "--adam-beta2", 0.95, "--bf16", "--recompute-activations",
        "--exit-duration-in-mins", 235,
        # MODEL_PARALLEL_ARGS, DDP_ARGS
        "--tensor-model-parallel-size", 2, "--sequence-parallel",
        "--use-distributed-optimizer", "--overlap-grad-reduce", "--overlap-param-gather",
        # DATA_ARGS (the script's MOCK branch)
        "--mock-data", "--tokenizer-type", "NullTokenizer", "--vocab-size", 500,
        "--data-cache-path", tmp_path / "cache", "--split", "99,1,0", "--num-workers", 1,
        # EVAL_AND_LOGGING_ARGS
        "--log-interval", 1, "--eval-iters", 1, "--eval-interval", 2, "--save-interval", 1000, "--log-throughput",
        "--timing-log-level", 0, "--ckpt-format", "torch_dist", "--distributed-timeout-minutes", 60,
        "--save", tmp_path / "ckpt", "--load", tmp_path / "ckpt", "--tensorboard-dir", tmp_path / "tb",
        # this project: CPU
        "--device", "cpu",
    ]


def test_megatron_lm_llama_launch_parses_trains_and_resumes(tmp_path):
    argv = [str(a) for a in megatron_lm_launch(tmp_path)]
    args = parse_args(argv, world_size=2)
    assert (args.train_iters, args.lr_warmup_samples, args.recompute_granularity) == (2, 4, "selective")

    first = run_pretrain(argv, nproc=2).stdout
    assert "no checkpoint in --load" in first
    assert re.search(r" iteration +2/ +2 \|.* lm loss: \S+ \|", first), first[-3000:]
    assert " final validation loss at iteration 2 |" in first
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    for tag in ("lm loss", "lm loss validation", "batch-size", "loss-scale", "learning-rate", "mem-max-rss-bytes"):
        assert tag in events.Tags()["scalars"], tag

    again = run_pretrain(argv, nproc=2).stdout  # Megatron-LM's --save X --load X: the second launch resumes
    loaded = [line for line in again.splitlines() if "loaded checkpoint" in line]
    assert len(loaded) == 1, again[-3000:]  # one line, from rank 0 only
    assert loaded[0].startswith(f" > loaded checkpoint {tmp_path / 'ckpt'}") and "(iteration 2)" in loaded[0]
    assert "weights, optimizer and LR schedule, RNG, data position (8 consumed samples)" in loaded[0]
    assert " final validation loss at iteration 2 |" in again  # nothing left to train: still validated
