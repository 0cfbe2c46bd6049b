"""Data and tokenizer flags."""

import argparse


def add_data_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("data")
    g.add_argument("--data-path", nargs="*", default=None,
                   help="prefix, or weights and prefixes: 0.3 a_text_document 0.7 b_text_document")
    g.add_argument("--split", default="969,30,1", help="train,valid,test proportions")
    g.add_argument("--data-cache-path", default=None)
    g.add_argument("--mock-data", action="store_true", help="random tokens, no files (benchmarks)")
    g.add_argument("--tokenizer-type", default="SentencePieceTokenizer",
                   choices=["SentencePieceTokenizer", "HuggingFaceTokenizer", "NullTokenizer"])
    g.add_argument("--tokenizer-model", default=None)
    g.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
