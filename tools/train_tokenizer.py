"""Train a tokenizer on JSONL documents: a BPE SentencePiece model (default), or a GPT-NeoX-style byte-level
BPE saved as a Hugging Face tokenizer.json (--type bpe).

Examples (the bundled corpus):
    python tools/train_tokenizer.py --input data/corpus/english.jsonl data/corpus/code.jsonl \
        --model-prefix build/tokenizer/corpus32k --vocab-size 32000
then pass --tokenizer-type SentencePieceTokenizer --tokenizer-model build/tokenizer/corpus32k.model;
    python tools/train_tokenizer.py --type bpe --input data/corpus/english.jsonl data/corpus/code.jsonl \
        --output-dir build/tokenizer/neox500 --vocab-size 500
then pass --tokenizer-type HuggingFaceTokenizer --tokenizer-model build/tokenizer/neox500.

--type bpe builds what DCLM ships (GPT-NeoX-20B's tokenizer, in miniature): NFC normalisation, byte-level
pre-tokenisation without a prefix space, byte-level BPE over the 256-byte alphabet, <|endoftext|> (id 0, the
end-of-document token) and <|padding|> (id 1) as special tokens, saved as a bare tokenizer.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from megatron_ext.data.tokenizers import build_tokenizer, train_sentencepiece

NEOX_SPECIAL_TOKENS = ("<|endoftext|>", "<|padding|>")  # GPT-NeoX-20B's ids 0 and 1


def _texts(paths, json_key):
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    doc = json.loads(line)
                    if json_key not in doc:
                        raise KeyError(f"{path}:{lineno}: no key {json_key!r} (has {sorted(doc)})")
                    yield doc[json_key]


def train_neox_bpe(paths, output_dir: str, vocab_size: int, json_key: str = "text") -> str:
    """A byte-level BPE in GPT-NeoX-20B's form, written to OUTPUT_DIR/tokenizer.json; returns that path."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"input {path} not found")
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(NEOX_SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_texts(paths, json_key), trainer)
    os.makedirs(output_dir, exist_ok=True)
    out = os.path.join(output_dir, "tokenizer.json")
    tok.save(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--type", choices=["sentencepiece", "bpe"], default="sentencepiece",
                        help="sentencepiece: PREFIX.model; bpe: GPT-NeoX-style DIR/tokenizer.json")
    parser.add_argument("--input", nargs="+", required=True, help="JSONL files, one doc a line")
    parser.add_argument("--model-prefix", help="sentencepiece: writes PREFIX.model and PREFIX.vocab")
    parser.add_argument("--output-dir", help="bpe: writes DIR/tokenizer.json")
    parser.add_argument("--vocab-size", type=int, required=True)
    parser.add_argument("--json-key", default="text", help="JSON key holding the text")
    parser.add_argument("--workers", type=int, default=None,
                        help="sentencepiece trainer threads (default: all CPUs)")
    parser.add_argument("--max-sentences", type=int, default=0,
                        help="sentencepiece: sample at most this many ~2 KB chunks (0: use everything)")
    args = parser.parse_args(argv)
    if args.type == "sentencepiece" and not args.model_prefix:
        parser.error("--type sentencepiece needs --model-prefix")
    if args.type == "bpe" and not args.output_dir:
        parser.error("--type bpe needs --output-dir")

    t0 = time.time()
    try:
        if args.type == "bpe":
            written = train_neox_bpe(args.input, args.output_dir, args.vocab_size, json_key=args.json_key)
            tok = build_tokenizer("HuggingFaceTokenizer", args.output_dir)
        else:
            written = train_sentencepiece(args.input, args.model_prefix, args.vocab_size,
                                          json_key=args.json_key, num_threads=args.workers,
                                          max_sentences=args.max_sentences)
            tok = build_tokenizer("SentencePieceTokenizer", written)
    except (FileNotFoundError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {written} (vocab {tok.vocab_size}, eod={tok.eod}, pad={tok.pad}, "
          f"bos={tok.bos}) in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
