"""Convert a Hugging Face checkpoint (LLaMA, CrystalCoder or open_lm/DCLM) into a checkpoint pretrain_llama.py loads.

    python tools/convert_from_hf.py --hf path/to/hf_model --save checkpoints/amber [--overwrite]
    torchrun --nproc-per-node 8 pretrain_llama.py --load checkpoints/amber --save checkpoints/amber \
        --tensor-model-parallel-size 2 --pipeline-model-parallel-size 4 --data-path ... (no model flags needed)

Writes SAVE/iter_0000000/ (model weights only: no optimizer state; iteration 0), SAVE/tokenizer/ (the
tokenizer files), SAVE/hf_code/ (the source's remote code, configuration_*.py and modeling_*.py, if it
has any: a CrystalCoder export needs it) and SAVE/latest_checkpointed_iteration.txt. The model flags are recorded in the
checkpoint, and the weights load at any tensor/pipeline-parallel layout. Reads .safetensors or
weights-only .bin shards one tensor at a time, so memory stays near one layer.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings


FORMATS = ("llama", "crystalcoder", "openlm")  # megatron_ext.checkpoint.convert.FORMATS, without its import
DTYPES = ("fp32", "bf16", "fp16")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hf", required=True,
                        help="Hugging Face checkpoint directory (config.json, weights, tokenizer)")
    parser.add_argument("--save", required=True, help="checkpoint directory to create")
    parser.add_argument("--model-format", choices=FORMATS, default=None,
                        help="the checkpoint's architecture (default: from config.json's model_type)")
    parser.add_argument("--overwrite", action="store_true", help="replace --save if it exists")
    parser.add_argument("--make-vocab-size-divisible-by", type=int, default=None,
                        help="pad the vocabulary to this multiple, as pretrain_llama.py's flag (default: what an "
                             "export of this project recorded in config.json, else 128)")
    parser.add_argument("--dtype", choices=DTYPES, default=None,
                        help="store the weights in this precision (default: the Hugging Face checkpoint's)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)  # megatron-core's apex/TE notices, DCP's no-dist note
    from megatron_ext.checkpoint.convert import DTYPES as TORCH_DTYPES, hf_to_megatron

    path = hf_to_megatron(args.hf, args.save, model_format=args.model_format, overwrite=args.overwrite,
                          make_vocab_size_divisible_by=args.make_vocab_size_divisible_by,
                          dtype=TORCH_DTYPES[args.dtype] if args.dtype else None, progress=not args.no_progress)
    print(f" > wrote {path}; train on with: pretrain_llama.py --load {os.path.abspath(args.save)} ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
