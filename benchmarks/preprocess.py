"""Preprocessing throughput against its limit, the SentencePiece encode rate.

    python benchmarks/preprocess.py --tokenizer-model M.model [--input DOCS.jsonl] \
        [--repeat 20] [--workers 1 2]

Measures, in the same run and on the same documents: (1) the raw encode rate
of one process calling sentencepiece on in-memory strings (no JSON, no I/O,
no output) -- the ceiling per worker; (2) tools/preprocess_data.py's path at
each worker count.  Reports tokens/s per worker and its share of the
ceiling (goal: >= 80%).  Without --tokenizer-model a small model is trained
on the bundled corpus first.  On a shared machine, workers beyond the free
cores lower the per-worker figure: that is contention, not overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_ext.data.preprocess import preprocess_jsonl  # noqa: E402
from megatron_ext.data.tokenizers import build_tokenizer, train_sentencepiece  # noqa: E402

CORPUS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "corpus")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", nargs="+", default=[os.path.join(CORPUS, n)
                                                  for n in ("english.jsonl", "code.jsonl")])
    p.add_argument("--tokenizer-model", default=None)
    p.add_argument("--repeat", type=int, default=10, help="repeat the input to lengthen the run")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = args.tokenizer_model or train_sentencepiece(args.input, os.path.join(tmp, "tok"), 8000)
        lines = []
        for path in args.input:
            with open(path, "rb") as f:
                lines += [line for line in f if line.strip()]
        src = os.path.join(tmp, "bench.jsonl")
        with open(src, "wb") as f:
            for _ in range(args.repeat):
                f.writelines(lines)
        texts = [json.loads(line)["text"] for line in lines] * args.repeat

        tok = build_tokenizer("SentencePieceTokenizer", model)
        t0 = time.perf_counter()
        n_tokens = sum(len(tok.tokenize(t)) for t in texts)
        ceiling = n_tokens / (time.perf_counter() - t0)
        print(f"{len(texts)} documents, {os.path.getsize(src) / 1e6:.1f} MB, {n_tokens:,} tokens")
        print(f"sentencepiece encode (1 process, in memory): {ceiling:,.0f} tokens/s  <- limit per worker")
        for w in args.workers:
            _, stats = preprocess_jsonl(src, os.path.join(tmp, f"out{w}"), tokenizer_model=model,
                                        append_eod=True, workers=w, progress=False)
            rate = stats.tokens / stats.seconds
            print(f"preprocess workers={w}: {rate:,.0f} tokens/s total, {rate / w:,.0f} per worker "
                  f"= {rate / w / ceiling:.0%} of the limit (goal >= 80%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
