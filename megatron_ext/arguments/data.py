"""Data and tokenizer flags."""

import argparse


class _DataMixAction(argparse.Action):
    """--data-mix FILE also fills --data-path with the mix's weights and prefixes,
    so everything that checks or logs --data-path (validation included) sees the
    data; build.py reads the mix again for its per-source FIM rates."""

    def __call__(self, parser, namespace, value, option_string=None):
        from megatron_ext.data.datamix import DataMixError, load_data_mix

        if getattr(namespace, "data_path", None) and not getattr(namespace, "data_mix", None):
            parser.error("--data-mix and --data-path are alternatives: give one")
        try:
            mix = load_data_mix(value)
        except DataMixError as err:
            parser.error(str(err))
        namespace.data_mix = value
        namespace.data_path = mix.data_path()


def add_data_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("data")
    g.add_argument("--data-path", nargs="*", default=None,
                   help="prefix, or weights and prefixes: 0.3 a_text_document 0.7 b_text_document")
    g.add_argument("--data-mix", default=None, action=_DataMixAction, metavar="FILE",
                   help="JSON datamix (data/mixes/*.json): sources with prefixes, weights or token "
                        "counts, and per-source FIM rates; alternative to --data-path. Relative "
                        "prefixes are joined to $DATA_ROOT")
    g.add_argument("--fim-split", choices=["token", "char"], default="char",
                   help="FIM cut points: between characters (decode, split, re-encode; as "
                        "StarCoder/Crystal) or between tokens")
    g.add_argument("--split", default="969,30,1", help="train,valid,test proportions")
    g.add_argument("--data-cache-path", default=None,
                   help="directory for megatron's dataset index caches (default: next to the data)")
    g.add_argument("--mock-data", action="store_true", help="random tokens, no files (benchmarks)")
    g.add_argument("--tokenizer-type", default="SentencePieceTokenizer",
                   choices=["SentencePieceTokenizer", "HuggingFaceTokenizer", "NullTokenizer", "Llama2Tokenizer"],
                   help="Llama2Tokenizer (Megatron-LM's name) is SentencePieceTokenizer on the same "
                        "tokenizer.model; NullTokenizer needs --vocab-size")
    g.add_argument("--tokenizer-model", default=None,
                   help="sentencepiece .model file, or a HuggingFace tokenizer directory")
    g.add_argument("--special-tokens", default=None,
                   help="add special tokens after the base vocabulary: 'crystal' (LLM360 Crystal's "
                        "22, ids 32000-32021 on LLaMA's tokenizer) or a comma-separated list")
    g.add_argument("--vocab-pad-to", type=int, default=None,
                   help="pad the tokenizer's vocabulary to this many ids (default with "
                        "--special-tokens: the next multiple of 32, e.g. 32032 for Crystal)")
    g.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    g = parser.add_argument_group("fine-tuning data (prefixes written by tools/preprocess_sft.py in --data-path)")
    g.add_argument("--sft-packing", choices=["pack", "pad"], default="pack",
                   help="pack several conversations into each --seq-length row (attention and positions restart "
                        "at each), or pad: one conversation per row")
    g.add_argument("--sft-overlong", choices=["truncate", "drop"], default="truncate",
                   help="a conversation longer than --seq-length + 1 tokens is cut to that, or left out "
                        "(the count is reported at start-up)")
    g.add_argument("--chat-format", default=None,
                   help="the chat format the conversation data was rendered with (tools/preprocess_sft.py "
                        "--chat-format): recorded in the checkpoint, the default of tools/convert_to_hf.py and "
                        "tools/generate.py (default: the data's own record)")
