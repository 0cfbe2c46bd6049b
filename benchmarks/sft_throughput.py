"""Fine-tuning throughput against pretraining, for the same model and layout, in one run (issue 12's goal:
SFT with packing within 10% of pretraining tokens/s), and the packing efficiency of the conversation sets.

    python benchmarks/sft_throughput.py                     # tiny-demo, seq 256, one CPU process
    python benchmarks/sft_throughput.py --tp 2              # the same at TP2 on two CPU processes
    python benchmarks/sft_throughput.py --device cuda --preset llama-1b --seq-length 2048 --bf16

Prepares in a temporary directory: a 490-piece SentencePiece tokenizer on the bundled corpus, the bundled
English text (tools/preprocess_data.py) and the bundled conversations data/sft/smoke_conversations.jsonl
rendered in --chat-format (tools/preprocess_sft.py). Then trains the same model from scratch with
pretrain_llama.py on the text (pretraining, the baseline), on the conversations packed (--sft-packing pack) and
padded (--sft-packing pad), in turns (--repeats times each, so a change in the machine's load hits all three),
and reports medians over the timed iterations (after --warmup) of:

- positions/s: the logged tokens-per-second, global batch x seq length / step time (every position computed);
- real tokens/s: positions/s x (1 - padding-fraction), the positions that hold a token of the data;
- trained tokens/s: the loss-bearing tokens (the replies and their end token; every token for pretraining);

with each variant's ratio to pretraining. Packing efficiency (real tokens / capacity, as the start-up summary
prints it) comes from the same packing plan the trainer uses (data/packing.py) on the bundled set and on the
arithmetic set the SFT acceptance test writes (tests/examples/test_sft_recipes.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def tool(*args: str, env: dict) -> None:
    subprocess.run([sys.executable, *args], cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)


def prepare(tmp: Path, chat_format: str, env: dict) -> dict:
    tok = tmp / "tok" / "smoke"
    tool("tools/train_tokenizer.py", "--input", "data/corpus/english.jsonl", "data/corpus/code.jsonl",
         "--model-prefix", str(tok), "--vocab-size", "490", "--workers", "2", "--max-sentences", "2000", env=env)
    flags = ["--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", f"{tok}.model"]
    tool("tools/preprocess_data.py", "--input", "data/corpus/english.jsonl", "--output-prefix", str(tmp / "english"),
         *flags, "--append-eod", "--workers", "1", "--no-progress", env=env)
    sys.path.insert(0, str(REPO / "tests"))
    from examples.test_sft_recipes import arithmetic_conversations  # the acceptance test's own set

    arithmetic_conversations(tmp / "arithmetic.jsonl")
    prefixes = {}
    for name, source in (("bundled", REPO / "data" / "sft" / "smoke_conversations.jsonl"),
                         ("test", tmp / "arithmetic.jsonl")):
        tool("tools/preprocess_sft.py", "--input", str(source), "--chat-format", chat_format, *flags,
             "--output-prefix", str(tmp / name), "--workers", "1", "--no-progress", env=env)
        prefixes[name] = str(tmp / f"{name}_conversation")
    info = json.loads(Path(prefixes["bundled"] + ".json").read_text())
    return {"flags": flags + (["--special-tokens", ",".join(info["special_tokens"])] if info["special_tokens"] else []),
            "text": str(tmp / "english_text_document"), **prefixes}


def packing_efficiency(prefix: str, seq_length: int) -> dict:
    """Real tokens / capacity of one epoch, packed and padded, as the trainer plans it."""
    import numpy as np
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megatron_ext.data.packing import PackingStats, plan_rows

    dataset = IndexedDataset(prefix)  # kept alive while its memory-mapped lengths are read
    lengths = np.array(dataset.sequence_lengths, dtype=np.int64)
    result = {"conversations": len(lengths), "mean tokens": float(lengths.mean())}
    for mode in ("pack", "pad"):
        stats = PackingStats()
        plan_rows(np.random.default_rng(0).permutation(len(lengths)), lengths, seq_length, mode, "truncate", stats)
        result[mode] = stats.efficiency
        result[f"{mode} rows"] = stats.rows
    return result


def run_variant(data: list[str], common: list[str], nproc: int, warmup: int, env: dict, tmp: Path) -> dict:
    log = tmp / "log.jsonl"
    log.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--master-addr=127.0.0.1",
           f"--master-port={_free_port()}", str(REPO / "pretrain_llama.py"), *common, *data, "--log-json", str(log)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    timed = [r for r in map(json.loads, log.read_text().splitlines())
             if "tokens-per-second" in r and r["iteration"] > warmup]
    rows = []
    for r in timed:
        padding = r.get("padding-fraction", 0.0)
        trained = r.get("trained-tokens-per-second", r["tokens-per-second"])
        rows.append((r["tokens-per-second"], r["tokens-per-second"] * (1.0 - padding), trained, padding))
    return {"positions/s": [x[0] for x in rows], "real tokens/s": [x[1] for x in rows],
            "trained tokens/s": [x[2] for x in rows], "padding": [x[3] for x in rows]}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny-demo")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel size (= processes)")
    parser.add_argument("--seq-length", type=int, default=256)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--global-batch-size", type=int, default=8)
    parser.add_argument("--iters", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--chat-format", default="mamba-gpt")
    args = parser.parse_args()

    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = prepare(tmp, args.chat_format, env)
        common = ["--model-preset", args.preset, "--device", args.device, "--seq-length", str(args.seq_length),
                  "--max-position-embeddings", str(max(args.seq_length, 128)),
                  "--tensor-model-parallel-size", str(args.tp), "--micro-batch-size", str(args.micro_batch_size),
                  "--global-batch-size", str(args.global_batch_size), "--train-iters", str(args.iters),
                  "--lr", "1e-3", "--lr-decay-style", "constant", "--log-interval", "1", "--split", "100,0,0",
                  "--seed", "1234",
                  "--data-cache-path", str(tmp / "cache"), *data["flags"]] + (["--bf16"] if args.bf16 else [])
        variants = {"pretraining (plain text)": ["--data-path", data["text"]],
                    "SFT, packed": ["--data-path", data["bundled"], "--sft-packing", "pack"],
                    "SFT, padded": ["--data-path", data["bundled"], "--sft-packing", "pad"]}
        results = {name: {} for name in variants}
        for _ in range(args.repeats):
            for name, flags in variants.items():
                for key, values in run_variant(flags, common, args.tp, args.warmup, env, tmp).items():
                    results[name].setdefault(key, []).extend(values)
        efficiency = {name: packing_efficiency(data[name], args.seq_length) for name in ("bundled", "test")}

    print(f"model {args.preset}, seq {args.seq_length}, micro-batch {args.micro_batch_size}, global batch "
          f"{args.global_batch_size}, TP{args.tp} on {args.device}; {args.repeats} x {args.iters - args.warmup} timed "
          f"iterations per variant (medians); chat format {args.chat_format}")
    base = statistics.median(results["pretraining (plain text)"]["positions/s"])
    print(f"{'variant':26s} {'positions/s':>12s} {'real tok/s':>11s} {'trained tok/s':>14s} {'padding':>8s} "
          f"{'real vs pretraining':>20s}")
    for name, r in results.items():
        med = {k: statistics.median(v) for k, v in r.items()}
        print(f"{name:26s} {med['positions/s']:12.1f} {med['real tokens/s']:11.1f} {med['trained tokens/s']:14.1f} "
              f"{med['padding']:8.3f} {med['real tokens/s'] / base:19.3f}x")
    for name, e in efficiency.items():
        label = "data/sft/smoke_conversations.jsonl" if name == "bundled" else "the SFT acceptance test's set"
        print(f"packing efficiency, {label} ({e['conversations']} conversations, mean {e['mean tokens']:.1f} tokens) "
              f"at seq {args.seq_length}: pack {e['pack']:.1%} ({e['pack rows']} rows), "
              f"pad {e['pad']:.1%} ({e['pad rows']} rows)")
    if not math.isfinite(base):
        raise SystemExit("no timed pretraining iteration")


if __name__ == "__main__":
    main()
