"""Render conversations through a chat format into the fine-tuning files (token ids + loss mask).

Example (AmberChat's data, FastChat's ShareGPT layout):
    python tools/preprocess_sft.py --input sharegpt.json wizardlm.jsonl --output-prefix build/sft/amberchat \
        --chat-format amberchat --tokenizer-type SentencePieceTokenizer --tokenizer-model tokenizer.model \
        --workers 4
writes build/sft/amberchat_conversation.{bin,idx}, build/sft/amberchat_conversation_loss_mask.{bin,idx} and
build/sft/amberchat_conversation.json; train with --data-path build/sft/amberchat_conversation (and the
--special-tokens the .json and this summary name, if any).

Records: {"messages": [...]}, ShareGPT {"conversations": [{"from", "value"}]}, Alpaca {"instruction",
"input", "output"} or {"prompt", "response"}, found per line (--input-format auto) or forced. Chat formats:
crystalchat, amberchat, dclm-it, mamba-gpt, chatml, hf (the tokenizer directory's chat_template); see
docs/chat_formats.md. Tokens the format needs that the tokenizer lacks are added after its vocabulary (as
--special-tokens does) and recorded. Bad records (not JSON, no assistant turn, roles out of order, unknown
role, empty content) are skipped, counted by reason and reported by line; --strict stops at the first.
Existing outputs are never replaced without --overwrite.
"""

from __future__ import annotations

import argparse
import sys

from megatron_ext.data.chat_formats import CHAT_FORMATS
from megatron_ext.data.conversations import INPUT_FORMATS
from megatron_ext.data.preprocess import PreprocessError
from megatron_ext.data.sft_preprocess import format_summary, preprocess_sft
from megatron_ext.data.tokenizers import TOKENIZER_TYPES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("input data")
    g.add_argument("--input", nargs="+", required=True,
                   help=".jsonl/.jsonl.gz (a record a line), .json (JSON array or lines) or .parquet; several "
                        "files are concatenated in order")
    g.add_argument("--input-format", choices=INPUT_FORMATS, default="auto",
                   help="record layout (default: detected per record from its keys)")
    g.add_argument("--strict", action="store_true", help="stop at the first bad record instead of skipping it")
    g = p.add_argument_group("chat format")
    g.add_argument("--chat-format", required=True, choices=CHAT_FORMATS)
    g.add_argument("--train-on-prompt", action="store_true",
                   help="train on every token (default: the assistant replies and their end-of-reply token)")
    g = p.add_argument_group("tokenizer (as tools/preprocess_data.py)")
    g.add_argument("--tokenizer-type", required=True, choices=TOKENIZER_TYPES)
    g.add_argument("--tokenizer-model", default=None,
                   help="SentencePiece .model file, or Hugging Face tokenizer directory")
    g.add_argument("--vocab-size", type=int, default=None, help="NullTokenizer only")
    g.add_argument("--special-tokens", default=None,
                   help="'crystal' or a comma-separated list, added after the base vocabulary; the format's own "
                        "missing tokens are added after these")
    g.add_argument("--vocab-pad-to", type=int, default=None,
                   help="vocabulary size after padding (default with special tokens: next multiple of 32)")
    g = p.add_argument_group("output data")
    g.add_argument("--output-prefix", required=True, help="writes PREFIX_conversation{.bin,.idx,.json} and "
                                                          "PREFIX_conversation_loss_mask{.bin,.idx}")
    g.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    g = p.add_argument_group("runtime")
    g.add_argument("--workers", type=int, default=1, help="rendering processes")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        prefix, stats, meta = preprocess_sft(
            args.input, args.output_prefix, args.chat_format, tokenizer_type=args.tokenizer_type,
            tokenizer_model=args.tokenizer_model, vocab_size=args.vocab_size, special_tokens=args.special_tokens,
            vocab_pad_to=args.vocab_pad_to, input_format=args.input_format, train_on_prompt=args.train_on_prompt,
            workers=args.workers, overwrite=args.overwrite, strict=args.strict, progress=not args.no_progress)
    except (PreprocessError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_summary(stats, prefix, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
