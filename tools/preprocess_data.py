"""Tokenize documents (.jsonl, .jsonl.gz or .parquet) into Megatron indexed datasets (.bin/.idx).

Flags follow Megatron-LM's tools/preprocess_data.py.  Example:
    python tools/preprocess_data.py --input data/corpus/english.jsonl \
        --output-prefix build/data/english --json-keys text \
        --tokenizer-type SentencePieceTokenizer --tokenizer-model build/tokenizer/corpus32k.model \
        --append-eod --workers 2
writes build/data/english_text_document.{bin,idx}; train with
    --data-path build/data/english_text_document

Inputs are streamed (larger-than-memory files are fine) and the output is
identical whatever --workers.  Bad records (invalid JSON, missing key, empty
text) are skipped and reported with their line numbers; --strict stops at the
first.  For Crystal-style data add --special-tokens crystal (special tokens
written in the text become single ids; vocabulary padded to 32032).
"""

from __future__ import annotations

import argparse
import sys

from megatron_ext.data.preprocess import (PreprocessError, format_problems,
                                          preprocess_jsonl)
from megatron_ext.data.tokenizers import TOKENIZER_TYPES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    g = parser.add_argument_group("input data")
    g.add_argument("--input", required=True,
                   help=".jsonl or .jsonl.gz (one JSON document a line) or .parquet (one a row)")
    g.add_argument("--strict", action="store_true",
                   help="stop at the first bad record instead of skipping and reporting it")
    g.add_argument("--json-keys", nargs="+", default=["text"],
                   help="keys to extract; one output dataset per key (default: text)")
    g = parser.add_argument_group("tokenizer")
    g.add_argument("--tokenizer-type", required=True, choices=TOKENIZER_TYPES)
    g.add_argument("--tokenizer-model", default=None,
                   help="SentencePiece .model file, or Hugging Face tokenizer directory")
    g.add_argument("--vocab-size", type=int, default=None, help="NullTokenizer only")
    g.add_argument("--special-tokens", default=None,
                   help="'crystal' (LLM360 Crystal's 22 tokens after the base vocabulary) or a "
                        "comma-separated list; such tokens in the text are encoded as one id")
    g.add_argument("--vocab-pad-to", type=int, default=None,
                   help="vocabulary size after padding (default with --special-tokens: next "
                        "multiple of 32)")
    g.add_argument("--append-eod", action="store_true", help="append EOD after each document")
    g = parser.add_argument_group("output data")
    g.add_argument("--output-prefix", required=True,
                   help="writes PREFIX_{key}_document.bin/.idx")
    g.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    g = parser.add_argument_group("runtime")
    g.add_argument("--workers", type=int, default=1, help="tokenizer processes")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    try:
        prefixes, stats = preprocess_jsonl(
            args.input, args.output_prefix, args.json_keys, args.tokenizer_type,
            args.tokenizer_model, args.vocab_size, append_eod=args.append_eod,
            workers=args.workers, overwrite=args.overwrite, progress=not args.no_progress,
            strict=args.strict, special_tokens=args.special_tokens, vocab_pad_to=args.vocab_pad_to)
    except (PreprocessError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rate = stats.tokens / max(stats.seconds, 1e-9)
    print(f"{stats.documents} documents, {stats.tokens} tokens in {stats.seconds:.1f}s "
          f"({rate:,.0f} tokens/s); skipped {stats.skipped_empty} empty documents, "
          f"{stats.bad} bad records")
    report = format_problems(args.input, stats)
    if report:
        print(report, file=sys.stderr)
    for key, prefix in prefixes.items():
        print(f"  {key}: --data-path {prefix}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
