"""Convert a checkpoint of pretrain_llama.py (any tensor/pipeline layout) into a Hugging Face checkpoint.

    python tools/convert_to_hf.py --load checkpoints/amber --out hf/amber [--dtype bf16] [--overwrite]
    python tools/convert_to_hf.py --load checkpoints/amberchat --out hf/amberchat [--chat-format amberchat]

Writes sharded safetensors with model.safetensors.index.json, config.json, generation_config.json and
the tokenizer, with the run's --special-tokens at the ids it trained them at. A fine-tuned chat model
(--chat-format, by default the one the run recorded) also gets tokenizer_config.json's chat_template, which
renders conversations to exactly the ids it was trained on, and generation_config.json's eos_token_id set
to the format's end of reply, so generate() stops where a reply ends.

LLaMA-architecture models (RMSNorm) load with transformers' AutoModelForCausalLM.from_pretrained(OUT);
a μP model is exported with its multipliers folded into the weights so that stock LLaMA code computes the
same logits. LayerNorm models (Crystal) are written
in CrystalCoder's published layout (--model-format crystalcoder; its remote modeling code reads them),
with the configuration/modeling files config.json's auto_map names when the checkpoint carries them
(an import from a directory that had them), else a warning to add them. DCLM-architecture models (gain-only
LayerNorm, full-width query/key norm) are written in open_lm's layout as TRI-ML/DCLM-1B publishes it.
Reads and writes one layer at a time, so memory stays near one layer.
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings


FORMATS = ("llama", "crystalcoder", "openlm")  # megatron_ext.checkpoint.convert.FORMATS, without its import
DTYPES = ("fp32", "bf16", "fp16")


def shard_size(text: str) -> int:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMG]?)B?", text.strip().upper())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 5GB or 500MB")
    return int(float(match.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[match.group(2)])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load", required=True, help="checkpoint directory (as given to pretrain_llama.py --save)")
    parser.add_argument("--iteration", type=int, default=None, help="iteration to export (default: the latest)")
    parser.add_argument("--out", "--save", dest="out", required=True, help="Hugging Face directory to create")
    parser.add_argument("--dtype", choices=DTYPES, default=None,
                        help="precision of the exported weights (default: as stored in the checkpoint)")
    parser.add_argument("--model-format", choices=FORMATS, default=None,
                        help="output layout (default: llama for RMSNorm models, crystalcoder for LayerNorm with bias, "
                             "openlm for a gain-only LayerNorm or full-width query/key norm model)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--vocab-size", type=int, default=None,
                        help="true vocabulary size, if the run's tokenizer is not available to tell it")
    parser.add_argument("--max-shard-size", type=shard_size, default="5GB",
                        help="largest safetensors shard (default 5GB; shards hold whole layers)")
    parser.add_argument("--chat-format", default=None,
                        help="chat template and end of reply to export: crystalchat, amberchat, dclm-it, mamba-gpt, "
                             "chatml, hf, or none (default: the --chat-format the run recorded; none without one)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)  # megatron-core's apex/TE notices, DCP's no-dist note
    from megatron_ext.checkpoint.convert import DTYPES as TORCH_DTYPES, megatron_to_hf

    path = megatron_to_hf(args.load, args.out, iteration=args.iteration,
                          dtype=TORCH_DTYPES[args.dtype] if args.dtype else None, model_format=args.model_format,
                          overwrite=args.overwrite, vocab_size=args.vocab_size, max_shard_bytes=args.max_shard_size,
                          progress=not args.no_progress, chat_format=args.chat_format)
    print(f" > wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
