"""Benchmark the checkpoint converters: time and peak memory of tools/convert_from_hf.py and
tools/convert_to_hf.py on a randomly initialised LLaMA, next to the model's size.

The random Hugging Face checkpoint is itself written a layer at a time (so making it costs no
memory), then each tool runs in its own process. Reported per direction:

  * wall time and throughput (GB of weights per second),
  * peak RSS of the tool process (its VmHWM) and its peak anonymous memory (RSS minus mapped file
    pages, which the kernel can drop), both sampled from /proc,
  * the same for a process that only imports the converter (the floor: torch, megatron-core,
    transformers), so peak - floor is what converting costs,

next to the model size and its largest group (the embedding or one layer). Streaming works when
peak - floor is near a few groups, not near the model.

    python benchmarks/convert.py                 # ~1.2B parameters (llama-1b preset), bf16
    python benchmarks/convert.py --small         # a few MB: a quick check that it all runs
    python benchmarks/convert.py --dtype fp32 --keep /tmp/bench   # keep the files
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from megatron_ext.checkpoint.hf_files import SafetensorsStreamWriter, plan_shards  # noqa: E402

SHAPES = {  # LlamaConfig fields
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=24, num_attention_heads=16,
               num_key_value_heads=16, vocab_size=32000),
    "small": dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=1000),
}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def layer_shapes(c: dict) -> list[dict]:
    """HF tensor shapes group by group: embedding, layers, final norm + lm_head."""
    h, f, heads, kv = c["hidden_size"], c["intermediate_size"], c["num_attention_heads"], c["num_key_value_heads"]
    d = h // heads
    groups = [{"model.embed_tokens.weight": (c["vocab_size"], h)}]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        groups.append({p + "input_layernorm.weight": (h,), p + "self_attn.q_proj.weight": (heads * d, h),
                       p + "self_attn.k_proj.weight": (kv * d, h), p + "self_attn.v_proj.weight": (kv * d, h),
                       p + "self_attn.o_proj.weight": (h, heads * d), p + "post_attention_layernorm.weight": (h,),
                       p + "mlp.gate_proj.weight": (f, h), p + "mlp.up_proj.weight": (f, h),
                       p + "mlp.down_proj.weight": (h, f)})
    groups.append({"model.norm.weight": (h,), "lm_head.weight": (c["vocab_size"], h)})
    return groups


def write_random_hf(directory: str, config: dict, dtype: torch.dtype) -> tuple[int, int, int]:
    """A random LlamaForCausalLM checkpoint, streamed; returns (parameters, bytes, largest group bytes)."""
    from transformers import LlamaConfig

    groups = layer_shapes(config)
    entries = [(n, s, dtype) for g in groups for n, s in g.items()]
    writer = SafetensorsStreamWriter(directory, plan_shards(entries, [len(g) for g in groups], 2 * 2**30))
    generator = torch.Generator().manual_seed(0)
    itemsize = torch.empty((), dtype=dtype).element_size()
    params = largest = 0
    for group in groups:
        size = 0
        for name, shape in group.items():
            tensor = (torch.ones(shape) if "norm" in name else torch.randn(shape, generator=generator) * 0.02)
            writer.write(name, tensor.to(dtype))
            params += tensor.numel()
            size += tensor.numel() * itemsize
        largest = max(largest, size)
    writer.close()
    LlamaConfig(**config, max_position_embeddings=2048, dtype=str(dtype).split(".")[1],
                architectures=["LlamaForCausalLM"]).save_pretrained(directory)
    return params, params * itemsize, largest


def _sample(pid: int, peak: dict, done: threading.Event) -> None:
    """Track the child's VmHWM (its own high-water mark: unlike wait4's ru_maxrss it does not inherit
    the RSS of the process that forked it) and its peak anonymous RSS."""
    while not done.is_set():
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    if key in ("VmHWM", "RssAnon"):
                        peak[key] = max(peak.get(key, 0), int(value.split()[0]) * 1024)
        except (OSError, ValueError):
            return
        time.sleep(0.01)


def measure(cmd: list[str]) -> dict:
    """Run cmd; wall seconds, peak RSS and peak anonymous RSS (bytes)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    peak, done = {}, threading.Event()
    sampler = threading.Thread(target=_sample, args=(proc.pid, peak, done), daemon=True)
    sampler.start()
    output = proc.stdout.read()  # returns at the child's exit; /proc/PID stays readable until reaped
    done.set()
    sampler.join()
    proc.wait()
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{output[-4000:]}")
    return {"seconds": seconds, "peak_rss": peak.get("VmHWM", 0), "peak_anon": peak.get("RssAnon", 0)}


def gb(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="a tiny model instead of ~1.2B parameters")
    parser.add_argument("--dtype", choices=DTYPES, default="bf16")
    parser.add_argument("--keep", default=None, help="work in this directory and keep the files")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    config = SHAPES["small" if args.small else "1b"]
    dtype = DTYPES[args.dtype]
    work = args.keep or tempfile.mkdtemp(prefix="bench_convert_")
    hf, mg, back = (os.path.join(work, n) for n in ("hf", "megatron", "hf_back"))
    for path in (hf, mg, back):
        shutil.rmtree(path, ignore_errors=True)
    os.makedirs(hf)
    try:
        print(f"writing a random {args.dtype} LLaMA ({config['num_hidden_layers']} layers, hidden "
              f"{config['hidden_size']}) to {hf} ...", flush=True)
        params, size, largest = write_random_hf(hf, config, dtype)
        py = sys.executable
        floor = measure([py, "-c", "import megatron_ext.checkpoint.convert, transformers, megatron.core"])
        runs = {
            "HF -> Megatron": measure([py, "tools/convert_from_hf.py", "--hf", hf, "--save", mg, "--no-progress"]),
            "Megatron -> HF": measure([py, "tools/convert_to_hf.py", "--load", mg, "--out", back, "--no-progress"]),
        }
        print(f"\nmodel: {params / 1e9:.2f}B parameters, {gb(size)} in {args.dtype}; largest group "
              f"(embedding or layer) {gb(largest)}")
        print(f"import floor (torch + megatron-core + transformers): peak RSS {gb(floor['peak_rss'])}, "
              f"anonymous {gb(floor['peak_anon'])}\n")
        print(f"{'direction':<16}{'time':>9}{'GB/s':>8}{'peak RSS':>12}{'peak anon':>12}{'anon - floor':>14}"
              f"{'x model':>9}")
        for name, r in runs.items():
            extra = r["peak_anon"] - floor["peak_anon"]
            print(f"{name:<16}{r['seconds']:>8.1f}s{size / r['seconds'] / 1e9:>8.2f}{gb(r['peak_rss']):>12}"
                  f"{gb(r['peak_anon']):>12}{gb(extra):>14}{extra / size:>9.2f}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"parameters": params, "bytes": size, "largest_group": largest, "floor": floor,
                           "runs": runs}, f, indent=2)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
