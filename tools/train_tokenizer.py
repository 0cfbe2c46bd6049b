"""Train a BPE SentencePiece tokenizer on JSONL documents.

Example (the bundled corpus):
    python tools/train_tokenizer.py --input data/corpus/english.jsonl data/corpus/code.jsonl \
        --model-prefix build/tokenizer/corpus32k --vocab-size 32000
then pass --tokenizer-type SentencePieceTokenizer --tokenizer-model build/tokenizer/corpus32k.model
"""

from __future__ import annotations

import argparse
import sys
import time

from megatron_ext.data.tokenizers import build_tokenizer, train_sentencepiece


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", nargs="+", required=True, help="JSONL files, one doc a line")
    parser.add_argument("--model-prefix", required=True,
                        help="writes PREFIX.model and PREFIX.vocab")
    parser.add_argument("--vocab-size", type=int, required=True)
    parser.add_argument("--json-key", default="text", help="JSON key holding the text")
    parser.add_argument("--workers", type=int, default=None,
                        help="trainer threads (default: all CPUs)")
    parser.add_argument("--max-sentences", type=int, default=0,
                        help="sample at most this many ~2 KB chunks (0: use everything)")
    args = parser.parse_args(argv)

    t0 = time.time()
    try:
        model = train_sentencepiece(args.input, args.model_prefix, args.vocab_size,
                                    json_key=args.json_key, num_threads=args.workers,
                                    max_sentences=args.max_sentences)
    except (FileNotFoundError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    tok = build_tokenizer("SentencePieceTokenizer", model)
    print(f"wrote {model} (vocab {tok.vocab_size}, eod={tok.eod}, pad={tok.pad}, "
          f"bos={tok.bos}) in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
