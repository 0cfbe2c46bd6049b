"""Generate text from a pretrain_llama.py checkpoint at any tensor/pipeline layout (the checkpoint's own need
not match: it reshards on load), with a KV cache and batched prompts.

    torchrun --nproc-per-node 2 tools/generate.py --load ckpt --tensor-model-parallel-size 2 \\
        --prompt "Once upon a time" "def fibonacci(n):" --max-new-tokens 64 [--greedy]
    torchrun --nproc-per-node 1 tools/generate.py --load sft-ckpt --chat-format chatml \\
        --prompts-file chats.jsonl --temperature 0.7 --top-p 0.9 --seed 1 --output replies.jsonl

--prompts-file: one JSON object a line, {"prompt": "text"} or {"messages": [{"role": "user", "content": ...}]}.
Greedy unless --temperature, --top-k or --top-p is given. Generation of a prompt stops at EOS (unless
--ignore-eos), at the chat format's end-of-reply token, at a --stop string (cut from the text) or after
--max-new-tokens. Rank 0 prints each prompt's completion; --output writes JSONL records (text, tokens, each
token's log-probability, finish reason). With more processes than TP x PP the rest are data-parallel replicas
sharing the prompts. The same --seed samples the same text at any layout and batch size. docs/generation.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--load", required=True, help="checkpoint directory (a pretrain_llama.py --save)")
    parser.add_argument("--iteration", type=int, default=None, help="iteration to load (default: the latest)")
    parser.add_argument("--tensor-model-parallel-size", type=int, default=1)
    parser.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    parser.add_argument("--device", default="auto", help="cuda, cpu or auto (default: cuda when visible)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", nargs="+", help="one or more prompt texts")
    source.add_argument("--prompts-file", help="JSONL of {\"prompt\": text} or {\"messages\": [...]} lines")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--greedy", action="store_true", help="argmax decoding (the default)")
    parser.add_argument("--temperature", type=float, default=None, help="sample with this temperature")
    parser.add_argument("--top-p", type=float, default=None, help="sample from the top-p nucleus")
    parser.add_argument("--top-k", type=int, default=None, help="sample from the k most likely tokens")
    parser.add_argument("--seed", type=int, default=1234, help="sampling seed (default 1234)")
    parser.add_argument("--stop", nargs="+", default=[], metavar="STR", help="stop strings (cut from the output)")
    parser.add_argument("--ignore-eos", action="store_true", help="do not stop at the tokenizer's EOS")
    parser.add_argument("--chat-format", default=None,
                        help="render prompts with this chat format and stop at its end of reply (default: the "
                             "checkpoint's recorded --chat-format, if any; 'none' turns it off)")
    parser.add_argument("--add-bos", action="store_true", help="prepend BOS to plain-text prompts")
    parser.add_argument("--max-batch-size", type=int, default=16, help="prompts per forward batch")
    parser.add_argument("--output", default=None, help="write the generations here as JSONL")
    parser.add_argument("--tokenizer-type", default=None, help="override the checkpoint's tokenizer")
    parser.add_argument("--tokenizer-model", default=None, help="override the checkpoint's tokenizer")
    parser.add_argument("--no-verify-checkpoint", action="store_true", help="skip the checksum check at load")
    return parser


def sampling_from(args):
    from megatron_ext.inference.sampling import Sampling

    sampled = any(v is not None for v in (args.temperature, args.top_p, args.top_k))
    if sampled and args.greedy:
        raise SystemExit("error: --greedy cannot be combined with --temperature/--top-k/--top-p")
    if not sampled:
        return Sampling(greedy=True, seed=args.seed)
    try:
        return Sampling(greedy=False, temperature=1.0 if args.temperature is None else args.temperature,
                        top_k=args.top_k or 0, top_p=1.0 if args.top_p is None else args.top_p, seed=args.seed)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None


def chat_format_from(args, inference_model):
    name = args.chat_format or inference_model.saved_args.get("chat_format")
    if not name or name == "none":
        return None
    from megatron_ext.data.chat_formats import get_chat_format

    tokenizer_dir = inference_model.run.data.tokenizer_model
    return get_chat_format(name, tokenizer_dir if tokenizer_dir and os.path.isdir(tokenizer_dir) else None)


def extra_flags(args) -> list[str]:
    flags = []
    for name in ("tokenizer_type", "tokenizer_model"):
        if getattr(args, name):
            flags += [f"--{name.replace('_', '-')}", getattr(args, name)]
    return flags + (["--no-verify-checkpoint"] if args.no_verify_checkpoint else [])


def write_jsonl_atomic(path: str, records: list[dict]) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for flag, value in (("--max-new-tokens", args.max_new_tokens), ("--max-batch-size", args.max_batch_size)):
        if value < 1:
            raise SystemExit(f"error: {flag} must be at least 1, got {value}")
    sampling = sampling_from(args)
    prompts = args.prompt
    if args.prompts_file:
        from megatron_ext.inference.prompts import read_prompts_file
        try:
            prompts = read_prompts_file(args.prompts_file)
        except (OSError, ValueError) as exc:
            raise SystemExit(f"error: {exc}") from None
    warnings.filterwarnings("ignore", module=r"megatron\.core.*")
    warnings.filterwarnings("ignore", category=UserWarning)  # megatron-core's apex/TE notices
    warnings.filterwarnings("ignore", category=FutureWarning)  # dist_checkpointing's ShardedTensor notice
    logging.getLogger("megatron.core").setLevel(logging.ERROR)  # "Unknown MLP type" per layer, etc.
    import torch

    from megatron_ext.inference.generate import TextGenerator
    from megatron_ext.inference.load import load_inference_model
    from megatron_ext.inference.prompts import encode_prompts, stop_rule
    from megatron_ext.platform import init_distributed

    platform = init_distributed(args.device)
    try:
        model = load_inference_model(args.load, args.tensor_model_parallel_size, args.pipeline_model_parallel_size,
                                     platform.device.type, extra_flags(args), args.iteration)
        try:  # chat formats raise ValueError subclasses naming the problem (unknown name, missing tokens)
            chat = chat_format_from(args, model)
            encoded = encode_prompts(prompts, model.tokenizer, chat, args.add_bos)
            stop = stop_rule(model.tokenizer, args.stop, chat, args.ignore_eos)
        except ValueError as exc:
            raise SystemExit(f"error: {exc}") from None
        if platform.rank == 0:
            print(f" > loaded {model.path} (iteration {model.iteration}) at TP{args.tensor_model_parallel_size} x "
                  f"PP{args.pipeline_model_parallel_size}; {'greedy' if sampling.greedy else 'sampling'}"
                  + (f", chat format {chat.name}" if chat else ""), file=sys.stderr, flush=True)
        results = TextGenerator(model).generate(encoded, args.max_new_tokens, sampling, stop, args.max_batch_size)
        if platform.rank == 0:
            for prompt, result in zip(prompts, results):
                shown = prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False)
                print(f"----- prompt {result.index} -----\n{shown}\n----- completion {result.index} "
                      f"({result.finish_reason}) -----\n{result.text}", flush=True)
            if args.output:
                write_jsonl_atomic(args.output, [dict(r.as_record(), prompt=p) for p, r in zip(prompts, results)])
        torch.distributed.barrier()
    finally:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
