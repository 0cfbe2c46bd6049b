"""Training throughput of the project's spec with Triton kernels, with torch-reference kernels, and of
megatron-core's stock local layer spec, in one run on one GPU (bf16, mock data).

    python benchmarks/train_throughput.py                      # llama-1b, seq 2048, on a CUDA device
    python benchmarks/train_throughput.py --smoke              # tiny model on CPU: checks the plumbing only

Prints tokens/s, TFLOP/s and MFU per variant (median over the timed iterations, after warm-up) and the
ratio against the stock spec. Goal: --kernels triton at 1.15x the stock spec or better.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {
    "llama spec, --kernels triton": ["--kernels", "triton"],
    "llama spec, --kernels torch": ["--kernels", "torch"],
    "megatron-core stock local spec": ["--layer-spec", "megatron-local"],
}


def run_variant(extra: list[str], common: list[str], warmup: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "log.jsonl"
        cmd = [sys.executable, str(REPO / "pretrain_llama.py"), *common, *extra, "--log-json", str(log)]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0:
            return {"error": proc.stdout[-2000:] + proc.stderr[-2000:]}
        records = [json.loads(line) for line in log.read_text().splitlines()]
    timed = [r for r in records if "tokens-per-second" in r and r["iteration"] > warmup]
    fields = (("tokens/s", "tokens-per-second"), ("TFLOP/s", "tflops-per-device"), ("MFU %", "mfu-percent"))
    return {key: statistics.median(r[field] for r in timed) if field in timed[0] else float("nan")
            for key, field in fields}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="llama-1b")
    parser.add_argument("--seq-length", type=int, default=2048)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU, 3 iterations")
    args = parser.parse_args()

    if args.smoke:
        common = ["--model-preset", "tiny", "--device", "cpu", "--train-iters", "3", "--micro-batch-size", "2"]
        args.warmup = 1
        os.environ["TRITON_INTERPRET"] = "1"
    else:
        common = ["--model-preset", args.preset, "--device", "cuda", "--bf16", "--seq-length", str(args.seq_length),
                  "--max-position-embeddings", str(args.seq_length), "--micro-batch-size", str(args.micro_batch_size),
                  "--train-iters", str(args.iters)]
    common += ["--mock-data", "--log-interval", "1", "--lr", "1e-4"]

    results = {name: run_variant(extra, common, args.warmup) for name, extra in VARIANTS.items()}
    baseline = results["megatron-core stock local spec"].get("tokens/s")
    print(f"{'variant':34s} {'tokens/s':>12s} {'TFLOP/s':>9s} {'MFU %':>7s} {'vs stock':>9s}")
    for name, result in results.items():
        if "error" in result:
            print(f"{name:34s} failed:\n{result['error']}")
            continue
        ratio = f"{result['tokens/s'] / baseline:.3f}x" if baseline else "n/a"
        print(f"{name:34s} {result['tokens/s']:12.1f} {result['TFLOP/s']:9.2f} {result['MFU %']:7.2f} {ratio:>9s}")


if __name__ == "__main__":
    main()
