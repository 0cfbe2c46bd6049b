"""Tokenize preference pairs (prompt, chosen, rejected) into the indexed files DPO trains on.

Example (PKU-SafeRLHF rendered in AmberChat's format):
    python tools/preprocess_preference.py --input data/pku_saferlhf_train.jsonl --layout pku-saferlhf \
        --chat-format amberchat --tokenizer-type HuggingFaceTokenizer --tokenizer-model /models/AmberChat \
        --seq-length 2048 --output-prefix build/data/saferlhf --also-sft
writes build/data/saferlhf_preference.{bin,idx} (+ _loss_mask, .json); train with
    --data-path build/data/saferlhf_preference --dpo
and, with --also-sft, build/data/saferlhf_conversation* (the chosen conversations) for the SFT stage.

Layouts: prompt (prompt or messages, chosen, rejected), conversations (chosen / rejected as whole
conversations sharing all but the last reply), pku-saferlhf (pairs with differing safety labels, the safe
reply chosen); auto recognises each row. Bad rows (not JSON, missing chosen or rejected, chosen identical
to rejected, a prompt too long for --seq-length, ...) are skipped and reported by line number; --strict
stops at the first. Nothing that exists is overwritten.
"""

from __future__ import annotations

import argparse
import sys

from megatron_ext.data.tokenizers import TOKENIZER_TYPES
from megatron_ext.preference.data import DROP, LAYOUTS, TRUNCATE
from megatron_ext.preference.preprocess import (PreferencePreprocessError, format_report,
                                                preprocess_preference)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    g = parser.add_argument_group("input data")
    g.add_argument("--input", required=True, help=".jsonl, .jsonl.gz or .parquet, one pair a row")
    g.add_argument("--layout", default="auto", choices=LAYOUTS)
    g.add_argument("--strict", action="store_true", help="stop at the first bad row")
    g = parser.add_argument_group("rendering")
    g.add_argument("--chat-format", required=True,
                   help="crystalchat, amberchat, dclm-it, mamba-gpt, chatml or hf (megatron_ext/data/chat_formats.py)")
    g.add_argument("--tokenizer-dir", default=None,
                   help="for --chat-format hf: the HF tokenizer directory whose chat_template renders "
                        "(default: --tokenizer-model)")
    g.add_argument("--seq-length", type=int, required=True,
                   help="the training run's --seq-length: a pair's two sequences share one row of it")
    g.add_argument("--overlong", choices=(TRUNCATE, DROP), default=TRUNCATE,
                   help="a pair longer than a row: cut its replies' tails, longer first (default), or leave it out")
    g = parser.add_argument_group("tokenizer")
    g.add_argument("--tokenizer-type", required=True, choices=TOKENIZER_TYPES)
    g.add_argument("--tokenizer-model", default=None)
    g.add_argument("--vocab-size", type=int, default=None, help="NullTokenizer only")
    g.add_argument("--special-tokens", default=None,
                   help="extra special tokens ('crystal' or a comma-separated list); the chat format's own "
                        "are added when the tokenizer lacks them")
    g.add_argument("--vocab-pad-to", type=int, default=None)
    g = parser.add_argument_group("output data")
    g.add_argument("--output-prefix", required=True, help="writes PREFIX_preference.{bin,idx,json} (+ _loss_mask)")
    g.add_argument("--also-sft", action="store_true",
                   help="also write PREFIX_conversation* (the chosen conversations) for an SFT stage")
    args = parser.parse_args(argv)

    try:
        prefix, stats = preprocess_preference(
            args.input, args.output_prefix, args.chat_format, args.tokenizer_type, args.tokenizer_model,
            args.seq_length, layout=args.layout, overlong=args.overlong, special_tokens=args.special_tokens,
            vocab_pad_to=args.vocab_pad_to, vocab_size=args.vocab_size, strict=args.strict, sft=args.also_sft,
            tokenizer_dir=args.tokenizer_dir)
    except (PreferencePreprocessError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report = format_report(args.input, stats)
    print(report.split("\n", 1)[0])
    if "\n" in report:
        print(report.split("\n", 1)[1], file=sys.stderr)
    print(f"  --data-path {prefix}")
    if args.also_sft:
        print(f"  SFT stage: --data-path {args.output_prefix}_conversation")
    return 0


if __name__ == "__main__":
    sys.exit(main())
